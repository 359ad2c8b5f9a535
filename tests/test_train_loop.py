"""Pieces of the worker loop that need no cluster: the LR schedule, resumable (and length-grouped) data order,
and packed batches that keep their examples apart."""

from __future__ import annotations

import itertools
import os

import pytest

from adaptune.config import EarlyStopping, TrainConfig
from adaptune.worker.train_loop import collate, divergence, lr_multiplier, plateau, train_batches

from .support import DEMO_DATA

pytestmark = pytest.mark.unit


def test_schedule_warms_up_from_a_nonzero_rate_then_decays():
    t = TrainConfig(max_steps=100, warmup_ratio=0.1, eval_every=10)
    factors = [lr_multiplier(s, t) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] < 0.01
    linear = TrainConfig(max_steps=100, warmup_ratio=0.0, lr_scheduler="linear", eval_every=10)
    assert lr_multiplier(50, linear) == pytest.approx(0.5)
    const = TrainConfig(max_steps=100, warmup_ratio=0.0, lr_scheduler="constant", eval_every=10)
    assert {lr_multiplier(s, const) for s in range(100)} == {1.0}


def test_batches_are_disjoint_across_ranks_and_resume_where_they_left_off():
    n, world, bs = 103, 2, 4
    first_epoch = [list(itertools.islice(train_batches(n, r, world, bs, seed=1, start=0), 12)) for r in range(world)]
    seen = [i for rank in first_epoch for b in rank for i in b]
    assert len(seen) == len(set(seen)) == 96  # 12 batches x 4 x 2 ranks, no overlap, drop_last
    straight = list(itertools.islice(train_batches(n, 0, world, bs, seed=1, start=0), 30))
    resumed = list(itertools.islice(train_batches(n, 0, world, bs, seed=1, start=17), 13))
    assert resumed == straight[17:]
    assert straight[12] != straight[0]  # a new epoch is reshuffled


def test_length_grouped_batches_pad_less_cover_every_row_once_and_resume_where_they_left_off():
    import random

    n, world, bs = 1000, 2, 4
    lengths = [random.Random(i).randint(5, 200) for i in range(n)]
    per_epoch = (n // world) // bs  # 125 batches per rank

    def padding(batches):
        return sum(bs * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    for rank in range(world):
        grouped = list(itertools.islice(train_batches(n, rank, world, bs, 1, 0, lengths), per_epoch))
        plain = list(itertools.islice(train_batches(n, rank, world, bs, 1, 0), per_epoch))
        assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)  # the same rows, once
        assert padding(grouped) < padding(plain) / 4, (padding(grouped), padding(plain))
    straight = list(itertools.islice(train_batches(n, 0, world, bs, 1, 0, lengths), 300))
    assert list(itertools.islice(train_batches(n, 0, world, bs, 1, 170, lengths), 130)) == straight[170:]
    assert straight[125:250] != straight[:125]  # a new epoch is regrouped from a new shuffle


def test_a_packed_batch_takes_the_loss_its_examples_take_unpacked(tmp_path, tiny_model):
    """Two packed rows of whole examples give the same per-token loss, within float error, as the same
    examples in an ordinary padded batch: positions restart at each example and no token attends to another.
    The same packed rows without their examples' boundaries (one long sequence) do not."""
    import torch
    from transformers import AutoModelForCausalLM

    from adaptune.config import DataConfig
    from adaptune.data import PACKED_LENGTHS, open_split, prepare_dataset

    cfg = DataConfig(path=str(DEMO_DATA), max_seq_length=512)
    packed_m = prepare_dataset(cfg.model_copy(update={"packing": True}), str(tiny_model), tmp_path)
    plain_m = prepare_dataset(cfg, str(tiny_model), tmp_path)
    packed, plain = open_split(packed_m.path, "train"), open_split(plain_m.path, "train")
    rows = packed[[0, 1]]
    k = sum(len(lengths) for lengths in rows[PACKED_LENGTHS])
    assert k > 4 and [len(x) for x in plain[:k]["input_ids"]] == [n for ls in rows[PACKED_LENGTHS] for n in ls]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    cpu = torch.device("cpu")
    with torch.no_grad():
        loss_packed = model(**collate(rows, 0, cpu).inputs).loss.item()
        loss_plain = model(**collate(plain[:k], 0, cpu).inputs).loss.item()
        joined = collate({"input_ids": rows["input_ids"], "labels": rows["labels"]}, 0, cpu).inputs
        loss_joined = model(**joined).loss.item()
    assert loss_packed == pytest.approx(loss_plain, abs=1e-5), (loss_packed, loss_plain)
    assert abs(loss_joined - loss_plain) > 1e-3, (loss_joined, loss_plain)  # what packing without boundaries does


def test_a_packed_trial_refuses_a_model_that_lets_examples_see_each_other(tmp_path, tiny_model):
    """The check a packed trial runs on its model before training: the tiny Llama passes; the same model
    behind a forward that drops the position ids (as a model whose code ignores them would) is refused."""
    import torch
    from transformers import AutoModelForCausalLM

    from adaptune.config import DataConfig
    from adaptune.data import open_split, prepare_dataset
    from adaptune.worker.train_loop import Rank, check_packing

    m = prepare_dataset(DataConfig(path=str(DEMO_DATA), max_seq_length=512, packing=True), str(tiny_model), tmp_path)
    rows = open_split(m.path, "train")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    me = Rank(0, 1, torch.device("cpu"), False, m.pad_token_id)
    check_packing(model, rows, me, "fp32")

    class IgnoresPositions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, position_ids=None, **inputs):
            return self.inner(**inputs)

    with pytest.raises(ValueError, match=r"data.packing: this model's attention lets a packed example see the one"):
        check_packing(IgnoresPositions(model), rows, me, "fp32")


def test_divergence_rule():
    assert divergence(True, 0.0, 5.0) == "NaN/inf loss"
    assert divergence(False, 16.0, 5.0) == "loss 16 exploded (over 3x the base model's 5)"
    assert divergence(False, 14.9, 5.0) is None  # a bad step is not a diverged run


def _history(*values: float, metric: str = "eval_loss") -> list[dict]:
    return [{"step": 5 * (i + 1), metric: v} for i, v in enumerate(values)]


def test_plateau_ends_a_trial_after_patience_rounds_without_improvement():
    rule = EarlyStopping(patience=2, min_delta=0.0)
    assert plateau(_history(3.0, 2.5, 2.6), "eval_loss", "min", rule) is None  # one round without: not yet
    assert plateau(_history(3.0, 2.5, 2.6, 2.5), "eval_loss", "min", rule) == 10  # equal is no improvement
    assert plateau(_history(3.0, 2.5, 2.6, 2.4), "eval_loss", "min", rule) is None  # improved again
    assert plateau(_history(3.0, 2.5, 2.6, 2.5), "eval_loss", "min", EarlyStopping()) is None  # off
    # min_delta: smaller gains do not count; the step named is the last evaluation that improved by enough
    assert plateau(_history(3.0, 2.95, 2.91), "eval_loss", "min", EarlyStopping(patience=2, min_delta=0.1)) == 5
    # mode max (a score that should rise): a fall and a flat round end it
    assert plateau(_history(0.2, 0.4, 0.3, 0.4, metric="f1"), "f1", "max", rule) == 10
    assert plateau(_history(0.2, 0.4, 0.5, metric="f1"), "f1", "max", rule) is None


def test_plateau_counts_rounds_before_a_resume_too():
    """A trial resumed after a worker loss carries its history in its checkpoint: the rounds before the loss
    count, so it ends where an uninterrupted trial would."""
    rule = EarlyStopping(patience=3)
    before_loss = _history(3.0, 2.0, 2.1, 2.2)
    assert plateau(before_loss, "eval_loss", "min", rule) is None
    assert plateau([*before_loss, {"step": 25, "eval_loss": 2.05}], "eval_loss", "min", rule) == 10


def test_early_stopping_settings_are_checked():
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(early_stopping={"patience": 0})
    with pytest.raises(ValueError, match="min_delta"):
        TrainConfig(early_stopping={"min_delta": -1})
    assert TrainConfig().early_stopping.patience is None  # off unless asked for


def test_an_eva_adapter_resumes_with_its_per_layer_ranks_and_scales(tmp_path, tiny_model):
    """eva redistributes ranks and adjusts the scales per layer (`rank_pattern`, `alpha_pattern` in the saved
    config); a resumed worker builds the adapter from both and loads its weights, without computing eva again,
    and gets the same model."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from adaptune.config import SweepConfig
    from adaptune.worker.model import add_lora, initialize_eva, load_adapter_weights

    cfg = {"name": "t", "model": {"path": str(tiny_model)}, "data": {"path": "d"}, "lora": {"init": "eva"}}
    sweep = SweepConfig.model_validate(cfg)
    torch.manual_seed(0)
    trained = add_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model)), sweep, ["q_proj", "v_proj"])
    initialize_eva(trained, [{"input_ids": torch.randint(5, 500, (4, 32))} for _ in range(16)])
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)  # as if trained
    trained.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    patterns = {k: config[k] for k in ("rank_pattern", "alpha_pattern")}
    assert patterns["rank_pattern"] and patterns["alpha_pattern"]
    resumed = add_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model)), sweep, ["q_proj", "v_proj"], patterns)
    load_adapter_weights(resumed, tmp_path / "adapter_model.safetensors")
    x = torch.randint(5, 500, (2, 16))
    with torch.no_grad():
        assert torch.equal(resumed.eval()(input_ids=x).logits, trained.eval()(input_ids=x).logits)


def test_the_base_model_is_evaluated_once_per_data_and_model_and_read_by_every_other_trial(
    tmp_path, tiny_model, one_rank_group
):
    import torch

    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.records import PreparedRun
    from adaptune.worker.train_loop import Rank, base_eval_loss

    from .support import sweep_config

    prepared = PreparedRun(str(tmp_path / "data"), 0, {"attention": ["q_proj"], "all-linear": ["q_proj", "up_proj"]})
    me = Rank(0, 1, torch.device("cpu"), False, 0)
    calls = []

    def evaluate(value):
        return lambda: calls.append(value) or value

    def spec(**sections):
        return prepared.spec(SweepConfig(**sweep_config(tiny_model, **sections)), ClusterProfile(), 0.0)

    assert base_eval_loss(spec(), me, evaluate(6.5)) == (6.5, "computed")
    # Other LoRA settings start as the same function (B = 0): read, not evaluated again.
    other = spec(lora={"r": 16, "target_modules": "all-linear", "use_dora": True})
    assert base_eval_loss(other, me, evaluate(9.9)) == (6.5, "read")
    # A base loaded another way, or rewritten by its initialisation, or whose weights changed: evaluated.
    assert base_eval_loss(spec(quantization={"mode": "4bit"}), me, evaluate(6.7)) == (6.7, "computed")
    assert base_eval_loss(spec(lora={"init": "pissa"}), me, evaluate(6.6)) == (6.6, "computed")
    weights = tiny_model / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    try:
        assert base_eval_loss(spec(), me, evaluate(6.4)) == (6.4, "computed")
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert calls == [6.5, 6.7, 6.6, 6.4]
    kept = sorted((tmp_path / "data" / "base_eval").iterdir())
    assert len(kept) == 4 and all(p.suffix == ".json" for p in kept)
