"""One trial for real: `adaptune train` on a real Ray cluster, 2 DeepSpeed workers on CPU over gloo (the rest of
the suite trains with one: here is where data parallelism, ZeRO sharding and a lost worker among two are tested)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from adaptune.records import REPORTED_METRICS

from .support import Background, cluster_config, committed_state, run_cli, sweep_config, write_yaml
from .support.ray_nodes import alive_actors

pytestmark = pytest.mark.integration


def _train(tmp_path: Path, tiny_model: Path, zero_stage: int = 2, **sections):
    sweep = write_yaml(tmp_path / "sweep.yaml", sweep_config(tiny_model, **sections))
    cluster = write_yaml(
        tmp_path / "cluster.yaml",
        {**cluster_config(tmp_path / "runs", num_workers=2), "deepspeed": {"zero_stage": zero_stage}},
    )
    r = run_cli("train", str(sweep), "--cluster", str(cluster))
    assert r.returncode == 0, r.stderr[-4000:]
    adapter = Path(next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("adapter ")))
    state = json.loads((adapter.parent / "trainer_state.json").read_text())
    return r, adapter, state


def _reload_and_compare(tiny_model: Path, adapter: Path, quantization=None, atol=1e-4) -> float:
    """Load base + adapter with plain transformers/peft and compare with the in-training model's probe logits."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    kwargs = {"quantization_config": quantization, "device_map": {"": "cpu"}} if quantization else {}
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32, **kwargs)
    if quantization:
        from adaptune.worker.model import keep_4bit_weights_exact

        keep_4bit_weights_exact(base)  # the fp32 path training took, not bitsandbytes' bf16 CPU inference kernel
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    probe = load_file(str(adapter.parent / "probe.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits[:, -probe["logits"].shape[1] :]
    diff = (logits - probe["logits"]).abs().max().item()
    assert diff <= atol, f"reloaded adapter differs from the trained model by {diff}"
    return diff


def test_lora_trial_learns_and_its_adapter_reloads_with_plain_peft(ray_cluster, tiny_model, tmp_path):
    """On 2 workers with eva initialisation: peft gathers each layer's inputs from both ranks for the SVD, and
    both ranks must end with the same per-layer ranks (else DeepSpeed's gradient buckets would not match)."""
    r, adapter, state = _train(tmp_path, tiny_model, lora={"init": "eva"})
    history = state["history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    best = min(h["eval_loss"] for h in history)
    assert best < state["base_eval_loss"] - 0.2, (best, state["base_eval_loss"])
    assert set(history[-1]) == set(REPORTED_METRICS)  # what validate lets a search optimise
    for key in (
        "train_loss",
        "eval_loss",
        "perplexity",
        "tokens_per_s",
        "step_time_s",
        "peak_memory_mb",
        "trainable_params",
        "trainable_fraction",
    ):
        assert history[-1][key] > 0, key
    assert state["quantized_layers"] == 0 and state["restarts"] == []
    # The adapter alone: safetensors + config, a tiny fraction of the base weights.
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (adapter / "adapter_model.safetensors").stat().st_size < (
        tiny_model / "model.safetensors"
    ).stat().st_size / 10
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["rank_pattern"], config  # eva's ranks, redistributed across layers by explained variance
    _reload_and_compare(tiny_model, adapter)
    # The data was tokenized once into the sweep's storage, and the run says where and what.
    manifests = list((tmp_path / "runs" / "test" / "data").glob("*/manifest.json"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text())["digest"] in r.stdout
    assert "eval_loss" in r.stdout and "base model before training" in r.stdout


# Generated answers in the training module's trials: 4 validation prompts, short answers, one a generate call (so
# under ZeRO-3 the two ranks' answers end at different lengths, and synced_gpus must keep them stepping together).
ANSWERING = {"samples": 4, "max_new_tokens": 10, "batch_size": 1}
SCORES = ("exact_match", "token_f1", "rouge_l")


def _answers(adapter: Path, state: dict, r) -> list[dict]:
    """The kept evaluation's generated answers: scored at every evaluation, shown by `adaptune train`."""
    for h in state["history"]:
        assert all(0.0 <= h[k] <= 1.0 for k in SCORES) and h["generation_s"] > 0, h
    header = next(line for line in r.stdout.splitlines() if "eval_loss" in line and "step" in line)
    assert all(f" {k}" in header for k in SCORES), header  # the table's columns
    record = json.loads((adapter.parent / "answers.json").read_text())
    assert record["step"] == state["step"] and len(record["rows"]) == 4 and record["failures"] == []
    for row in record["rows"]:
        assert {"prompt", "reference", "answer", *SCORES} <= set(row) and isinstance(row["answer"], str)
    return record["rows"]


def test_qlora_trial_trains_on_a_4bit_base_with_gradient_checkpointing(ray_cluster, tiny_model, tmp_path):
    import torch
    from transformers import BitsAndBytesConfig

    r, adapter, state = _train(
        tmp_path,
        tiny_model,
        quantization={"mode": "4bit"},
        eval=ANSWERING,
        data={"group_by_length": True},
        train={"gradient_checkpointing": True},
    )
    assert state["quantized_layers"] == 14  # 7 linear layers x 2 blocks hold NF4 weights
    assert 0 < state["history"][-1]["pad_share"] < 0.05  # length-grouped batches (about 0.2 without)
    assert min(h["eval_loss"] for h in state["history"]) < state["base_eval_loss"] - 0.2
    _answers(adapter, state, r)
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    _reload_and_compare(tiny_model, adapter, quantization=nf4, atol=1e-3)


def test_zero3_trial_with_accumulation_gathers_a_full_adapter(ray_cluster, tiny_model, tmp_path):
    """Under ZeRO-3 each rank holds a shard of every LoRA weight; all ranks must gather it for saving, and take
    part in generating every answer: the answers are the ones plain peft generates with the saved adapter. It
    trains on packed rows (the packed loss is unit-tested against the unpacked one)."""
    r, adapter, state = _train(
        tmp_path,
        tiny_model,
        zero_stage=3,
        train={"gradient_accumulation_steps": 2, "micro_batch_size": 4},
        eval=ANSWERING,
        data={"packing": True, "max_seq_length": 512},
    )
    assert state["history"][-1]["pad_share"] < 0.2  # packed rows of whole examples
    rows = _answers(adapter, state, r)
    _same_answers_with_plain_peft(tiny_model, adapter, rows, max_new_tokens=ANSWERING["max_new_tokens"])
    assert min(h["eval_loss"] for h in state["history"]) < state["base_eval_loss"] - 0.2
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert len(weights) == 2 * 4 * 2  # lora_A and lora_B for 4 attention layers in 2 blocks
    assert all(w.numel() > 0 for w in weights.values())
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # trained, not the zero init
    _reload_and_compare(tiny_model, adapter)


def _same_answers_with_plain_peft(tiny_model: Path, adapter: Path, rows: list[dict], max_new_tokens: int) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptune.data import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    for row in rows:
        ids = tok(row["prompt"], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip() == row["answer"]


def _checkpoints(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs" / "test").glob("train-*/checkpoint_*") if p.is_dir())


def test_killed_worker_resumes_from_its_last_checkpoint_and_early_stopping_counts_on(ray_cluster, tiny_model, tmp_path):
    """Early stopping that no gain can satisfy (min_delta 10 nats) ends the trial 8 rounds after its first
    evaluation, at step 45 of 60, whether or not a worker was lost in between: the rounds before the loss count."""
    train = {"max_steps": 60, "eval_every": 5, "early_stopping": {"patience": 8, "min_delta": 10.0}}
    # PiSSA: a resumed worker decomposes the base again and continues from the adapter as trained, which the
    # checkpoint keeps beside the plain LoRA it saves for everyone else.
    sweep = write_yaml(tmp_path / "sweep.yaml", sweep_config(tiny_model, train=train, lora={"init": "pissa"}))
    cluster = write_yaml(tmp_path / "cluster.yaml", cluster_config(tmp_path / "runs", num_workers=2))
    run = Background("train", str(sweep), "--cluster", str(cluster), logs=tmp_path)
    # Killed before Ray Train has committed a checkpoint, the run would start over instead of resuming.
    run.wait_until(lambda: any(committed_state(d) for d in (tmp_path / "runs" / "test").glob("train-*")), timeout=600)
    pids = alive_actors("RayTrainWorker")
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGKILL)
    code, out, err = run.finish(900)
    assert code == 0, err[-4000:]
    adapter = Path(next(line.split()[-1] for line in out.splitlines() if line.startswith("adapter ")))
    final = _checkpoints(tmp_path)[-1]
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == 45 and state["converged"]["best_step"] == 5, state.get("converged")
    assert len(state["restarts"]) == 1 and 0 < state["restarts"][0] < 45, state["restarts"]
    assert f"resumed from step(s) {state['restarts'][0]}" in out
    # Every evaluation before the loss is kept, once: the resumed run continued, it did not start over.
    steps = [h["step"] for h in state["history"]]
    assert steps == list(range(5, 46, 5))
    assert "converged        eval_loss did not improve by more than 10 in 8 evaluation round(s) after step 5" in out
    best = min(state["history"], key=lambda h: h["eval_loss"])  # the adapter is the best evaluation's
    assert json.loads((adapter.parent / "trainer_state.json").read_text())["step"] == best["step"]
    assert (final / "trained_adapter.safetensors").is_file()
    _reload_and_compare(tiny_model, final / "adapter")  # the last checkpoint, trained after the resume


def test_a_trial_the_sweep_ended_stops_at_its_next_step_without_reporting(
    tmp_path, tiny_model, one_rank_group, monkeypatch
):
    """Tune ends a trial ASHA stopped without ending its Ray Train run, whose workers would train on to
    max_steps holding their CPUs or GPUs; the sweep's driver then writes the trial's stop file (see
    driver.sweep). The real worker loop (a DeepSpeed ZeRO-2 engine on one gloo rank): without the file it trains
    to its first evaluation and reports (outside Ray Train the report raises); with it, it stops after one step
    and reports nothing."""
    import torch

    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.data import open_split, prepare_dataset
    from adaptune.names import STOP_REQUEST, target_key
    from adaptune.preflight.architecture import target_modules_for
    from adaptune.records import PreparedRun
    from adaptune.worker.deepspeed_config import build_deepspeed_config
    from adaptune.worker.train_loop import Rank, build_engine, build_model, train

    from .support import sweep_config

    for name, value in {"DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)  # what Ray Train sets in a worker
    sweep = SweepConfig(**sweep_config(tiny_model, train={"max_steps": 30, "eval_every": 3}))
    cluster = ClusterProfile(trial={"num_workers": 1}, deepspeed={"zero_stage": 2})
    manifest = prepare_dataset(sweep.data, str(tiny_model), tmp_path)
    targets = target_modules_for(sweep.lora.target_modules, str(tiny_model), None)
    stop_file = tmp_path / "trial" / STOP_REQUEST
    spec = PreparedRun(manifest.path, manifest.pad_token_id, {target_key(sweep.lora.target_modules): targets}).spec(
        sweep, cluster, 0.0, stop_file=str(stop_file)
    )
    me = Rank(0, 1, torch.device("cpu"), False, manifest.pad_token_id)
    train_ds, val_ds = open_split(manifest.path, "train"), open_split(manifest.path, "validation")
    ds_config = build_deepspeed_config(sweep, cluster, 1)
    model = build_model(spec, me, ds_config, train_ds, {})
    engine = build_engine(spec, me, model, ds_config, {"step": 0}, {})

    def fresh_state() -> dict:
        return {"step": 0, "history": [], "base_eval_loss": 7.0}

    running = fresh_state()
    with pytest.raises(RuntimeError):  # ray.train.report outside a Ray Train worker: it reached its evaluation
        train(spec, me, engine, model, running, train_ds, val_ds)
    assert running["step"] == 3 and len(running["history"]) == 1

    stop_file.parent.mkdir()
    stop_file.touch()
    stopped = fresh_state()
    train(spec, me, engine, model, stopped, train_ds, val_ds)
    assert stopped == fresh_state()  # stopped at its first step: nothing reported, nothing recorded
    engine.destroy()
