"""Pieces of the worker loop that need no cluster: the LR schedule and resumable data order."""

from __future__ import annotations

import itertools

import pytest

from adaptune.config import EarlyStopping, TrainConfig
from adaptune.worker.train_loop import divergence, lr_multiplier, plateau, train_batches

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
