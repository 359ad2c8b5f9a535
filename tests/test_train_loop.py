"""Pieces of the worker loop that need no cluster: the LR schedule and resumable data order."""

from __future__ import annotations

import itertools

import pytest

from adaptune.config import TrainConfig
from adaptune.worker.train_loop import divergence, lr_multiplier, train_batches

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
