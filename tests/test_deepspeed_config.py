"""The DeepSpeed config generated from the typed config, for each ZeRO stage."""

from __future__ import annotations

import pytest

from adaptune.config import ClusterProfile, SweepConfig
from adaptune.worker.deepspeed_config import build_deepspeed_config

pytestmark = pytest.mark.unit


def _configs(stage: int, use_gpu: bool = False, **ds):
    sweep = SweepConfig.model_validate(
        {
            "name": "t",
            "model": {"path": "m"},
            "data": {"path": "d"},
            "train": {
                "micro_batch_size": 4,
                "gradient_accumulation_steps": 3,
                "learning_rate": 1e-4,
                "max_grad_norm": 0.5,
            },
        }
    )
    cluster = ClusterProfile.model_validate({"trial": {"use_gpu": use_gpu}, "deepspeed": {"zero_stage": stage, **ds}})
    return sweep, cluster


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_stage_agrees_with_the_typed_config(stage):
    cfg = build_deepspeed_config(*_configs(stage), world_size=4)
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 4 * 3 * 4
    assert cfg["optimizer"]["params"]["lr"] == 1e-4 and cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"]["enabled"] is False and cfg["fp16"]["enabled"] is False  # fp32 on CPU
    assert cfg["optimizer"]["params"]["torch_adam"] is True  # no fused kernels on CPU workers
    assert "scheduler" not in cfg  # the loop's own warmup+decay schedule drives the learning rate


def test_gpu_uses_bf16_and_deepspeed_optimizers():
    cfg = build_deepspeed_config(*_configs(3, use_gpu=True, offload_optimizer=True, offload_params=True), world_size=8)
    assert cfg["bf16"]["enabled"] is True
    assert cfg["optimizer"]["params"]["torch_adam"] is False
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert cfg["train_batch_size"] == 4 * 3 * 8
