"""The training methods a sweep searches over, for real: the LoRA initialisations and DoRA as one grid sweep of
1-worker ZeRO-2 trials (the impossible combinations skipped with the reason), and rsLoRA, LoRA+, the 8-bit
optimizer, gradient checkpointing and DoRA in 2-worker trials under ZeRO-3, and QLoRA with gradient checkpointing
under ZeRO-3 (peft computes LoftQ on CUDA only: refused on CPU workers, run by the GPU check). Every adapter is
reloaded with plain peft on the unchanged base (the trial's probe logits) and merged with the logits check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support import cluster_config, run_cli, sweep_config, write_yaml

pytestmark = pytest.mark.integration


def _probe_diff(tiny_model: Path, adapter: Path, quantized: bool = False) -> float:
    """How far base + adapter, loaded with plain transformers and peft, is from the in-training model's logits."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if quantized:
        nf4 = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        kwargs = {"quantization_config": nf4, "device_map": {"": "cpu"}}
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32, **kwargs)
    if quantized:
        from adaptune.worker.model import keep_4bit_weights_exact

        keep_4bit_weights_exact(base)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    probe = load_file(str(adapter.parent / "probe.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits[:, -probe["logits"].shape[1] :]
    return (logits - probe["logits"]).abs().max().item()


def _merges(tiny_model: Path, adapter: Path, out: Path) -> float:
    """`adaptune merge`'s merge: the merged model, reloaded from disk, against base + adapter (raises if off)."""
    from adaptune.merge import merge_adapter

    return merge_adapter(adapter, str(tiny_model), out).max_abs_diff


def _config(adapter: Path) -> dict:
    return json.loads((adapter / "adapter_config.json").read_text())


@pytest.fixture(scope="module")
def init_grid(ray_cluster, tiny_model, tmp_path_factory):
    """lora.init x lora.use_dora as a grid: 10 combinations, of which loftq (2: no quantization, CPU workers) and
    pissa/olora with DoRA (2) cannot train; the other 6 train 10 steps each, with gradient checkpointing.
    (gaussian is trained in the ZeRO-3 trial below.)"""
    tmp = tmp_path_factory.mktemp("init-grid")
    cfg = sweep_config(tiny_model, train={"max_steps": 10, "eval_every": 10, "gradient_checkpointing": True})
    cfg["search"] = {
        "space": {
            "lora.init": {"grid": ["default", "pissa", "olora", "loftq", "eva"]},
            "lora.use_dora": {"grid": [False, True]},
        },
        "algorithm": "grid",
        "scheduler": "none",
    }
    sweep = write_yaml(tmp / "sweep.yaml", cfg)
    cluster = write_yaml(tmp / "cluster.yaml", cluster_config(tmp / "runs"))
    r = run_cli("sweep", str(sweep), "--cluster", str(cluster), timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    (sweep_dir,) = (tmp / "runs" / "test").glob("sweep-*")
    return tmp, json.loads((sweep_dir / "results.json").read_text())


def test_each_lora_init_with_and_without_dora_trains_reloads_and_merges(init_grid, tiny_model):
    tmp, results = init_grid
    trials = {(t["lora.init"], t["lora.use_dora"]): t for t in results["trials"]}
    assert len(trials) == 10
    skipped = {k: t for k, t in trials.items() if t["status"] == "skipped"}
    assert set(skipped) == {("loftq", False), ("loftq", True), ("pissa", True), ("olora", True)}, skipped
    assert "quantization.mode is none" in skipped[("loftq", False)]["reason"]
    assert "on CUDA only (got CPU workers)" in skipped[("loftq", False)]["reason"]
    assert "with DoRA cannot be saved as an adapter on the unchanged base" in skipped[("pissa", True)]["reason"]
    trained = {k: t for k, t in trials.items() if k not in skipped}
    for (init, dora), t in trained.items():
        assert t["status"] == "finished", t
        adapter = Path(t["adapter"])
        config = _config(adapter)
        assert config["use_dora"] is dora
        diff = _probe_diff(tiny_model, adapter)
        assert diff <= 1e-4, (init, dora, diff)
        assert _merges(tiny_model, adapter, tmp / "merged" / f"{init}-{dora}") <= 1e-3
        if init in ("pissa", "olora"):  # saved as the plain LoRA [B | -B0] [A ; A0] on the unchanged base
            assert config["r"] == 16 and config["lora_alpha"] == 32 and config["init_lora_weights"] is True
        if init == "eva":  # ranks redistributed across layers by explained variance
            assert config["rank_pattern"], config
    weights = _tensor_names(Path(trained[("default", True)]["adapter"]))
    assert any("lora_magnitude_vector" in k for k in weights)  # DoRA's magnitudes are trained and saved
    # The registry says how the winner started, and for pissa/olora in what form it was saved.
    from mlflow import MlflowClient

    from adaptune.driver.run import lora_init

    assert (
        lora_init("pissa", trained[("pissa", False)]["adapter"])
        == "pissa, saved as a plain LoRA of rank 16 on the unchanged base model"
    )
    uri = f"sqlite:///{(tmp / 'runs' / 'mlflow.db').resolve()}"
    (version,) = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name = 'test'")
    winner = results["winner"]
    assert version.tags["adaptune.lora_init"] == lora_init(winner["lora.init"], winner["adapter"])


def _tensor_names(adapter: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def _train(tmp: Path, tiny_model: Path, zero_stage: int, **sections) -> tuple[Path, dict]:
    sweep = write_yaml(tmp / "sweep.yaml", sweep_config(tiny_model, **sections))
    cluster = write_yaml(
        tmp / "cluster.yaml",
        {**cluster_config(tmp / "runs", num_workers=2), "deepspeed": {"zero_stage": zero_stage}},
    )
    r = run_cli("train", str(sweep), "--cluster", str(cluster))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    adapter = Path(next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("adapter ")))
    return adapter, json.loads((adapter.parent / "trainer_state.json").read_text())


def test_dora_rslora_loraplus_and_8bit_adamw_train_under_zero3_with_gradient_checkpointing(
    ray_cluster, tiny_model, tmp_path
):
    train = {
        "max_steps": 20,
        "optimizer": "adamw_8bit",
        "loraplus_lr_ratio": 16,
        "gradient_checkpointing": True,
    }
    adapter, state = _train(
        tmp_path, tiny_model, 3, lora={"use_dora": True, "use_rslora": True, "init": "gaussian"}, train=train
    )
    config = _config(adapter)
    assert config["use_dora"] and config["use_rslora"] and config["init_lora_weights"] == "gaussian"
    # LoRA+: DeepSpeed kept the two learning rates (B and DoRA's magnitudes at 16x) of peft's parameter groups
    assert state["optimizer"] == {"name": "adamw_8bit", "learning_rates": [3e-3, 16 * 3e-3]}
    last = state["history"][-1]
    assert last["optimizer_state_mb"] > 0
    assert min(h["eval_loss"] for h in state["history"]) < state["base_eval_loss"] - 0.2
    assert _probe_diff(tiny_model, adapter) <= 1e-4
    assert _merges(tiny_model, adapter, tmp_path / "merged") <= 1e-3


def test_qlora_with_gradient_checkpointing_trains_under_zero3(ray_cluster, tiny_model, tmp_path):
    adapter, state = _train(
        tmp_path,
        tiny_model,
        3,
        quantization={"mode": "4bit"},
        train={"max_steps": 20, "gradient_checkpointing": True},
    )
    assert state["quantized_layers"] == 14
    assert min(h["eval_loss"] for h in state["history"]) < state["base_eval_loss"] - 0.2
    assert _probe_diff(tiny_model, adapter, quantized=True) <= 1e-3
    assert _merges(tiny_model, adapter, tmp_path / "merged") <= 1e-3
