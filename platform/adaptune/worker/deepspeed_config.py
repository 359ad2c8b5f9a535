"""The DeepSpeed config of a trial, generated from the typed config so batch sizes and precision never
disagree with it. Pure Python: no DeepSpeed or torch import."""

from __future__ import annotations

from typing import Any

from adaptune.config import ClusterProfile, SweepConfig, TrainConfig, resolve_precision


def client_optimizer(t: TrainConfig) -> bool:
    """Whether the trial builds its optimizer itself (`model.build_optimizer`) rather than DeepSpeed from its
    config: for bitsandbytes' optimizers and for LoRA+'s parameter groups, which DeepSpeed's would flatten
    into one learning rate."""
    return t.optimizer != "adamw" or t.loraplus_lr_ratio is not None


def build_deepspeed_config(sweep: SweepConfig, cluster: ClusterProfile, world_size: int) -> dict[str, Any]:
    """The `ds_config` dict for `deepspeed.initialize`.

    The learning-rate schedule is not here: the training loop passes its own warmup + decay scheduler,
    so the first optimizer step already uses a non-zero learning rate and resuming sets the step exactly.
    """
    t = sweep.train
    ds = cluster.deepspeed
    precision = resolve_precision(sweep, cluster)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=cluster.trial.use_gpu, contiguous_gradients=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cluster.trial.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cluster.trial.use_gpu}
    if ds.zero_stage == 3:
        # Adapters are small: gather whole LoRA weights for saving, keep frozen base weights sharded.
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train_batch_size": t.micro_batch_size * t.gradient_accumulation_steps * world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                # On CPU-only workers DeepSpeed's fused kernels do not exist; use torch's AdamW there.
                "torch_adam": not cluster.trial.use_gpu and not ds.offload_optimizer,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "gradient_clipping": t.max_grad_norm,
        "steps_per_print": 10**9,  # progress goes through ray.train.report, not DeepSpeed's stdout
        "wall_clock_breakdown": False,
    }
    if client_optimizer(t):
        del config["optimizer"]
        config["zero_allow_untested_optimizer"] = True  # bitsandbytes' optimizers are not on DeepSpeed's list
    if precision == "fp16":
        config["fp16"].update(loss_scale=0, initial_scale_power=16)
    return config
