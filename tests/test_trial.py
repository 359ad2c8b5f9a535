"""The Tune trainable's checks on a sampled combination, which run before any worker starts."""

from __future__ import annotations

import pytest

from adaptune.config import ClusterProfile, SweepConfig
from adaptune.driver.trial import TrialSkipped, launch_training
from adaptune.records import PreparedRun

pytestmark = pytest.mark.unit

BASE = SweepConfig.model_validate({"name": "t", "model": {"path": "m"}, "data": {"path": "d"}})


def _launch(sampled, zero_stage=3):
    cluster = ClusterProfile.model_validate({"deepspeed": {"zero_stage": zero_stage}})
    launch_training(
        sampled,
        sweep=BASE,
        cluster=cluster,
        prepared=PreparedRun("d", 0, {}),
        trials_path="unused",
    )


def test_incompatible_samples_are_skipped_with_the_reason():
    with pytest.raises(TrialSkipped, match=r"quantization.mode: 8-bit quantization cannot be sharded by ZeRO-3"):
        _launch({"quantization.mode": "8bit"})
    with pytest.raises(TrialSkipped, match=r"train.precision: fp16 training needs GPUs"):
        _launch({"train.precision": "fp16"}, zero_stage=2)
    with pytest.raises(TrialSkipped, match=r"lora.r: Input should be greater than 0"):
        _launch({"lora.r": 0})
