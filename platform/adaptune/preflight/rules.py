"""The pure rules: which settings can train together on a cluster. No I/O, so a trial applies them to its
sampled settings as cheaply as `validate` applies them to a whole search space."""

from __future__ import annotations

import itertools
import json

from adaptune.config import ClusterProfile, SweepConfig, resolve_compute_dtype, resolve_precision
from adaptune.errors import Problem
from adaptune.preflight.search_space import apply_values, finite_values

# The settings whose combination `check_compatibility` judges
COMPAT_KEYS = (
    "quantization.mode",
    "quantization.quant_storage",
    "quantization.compute_dtype",
    "train.precision",
    "train.attention",
    "train.optimizer",
    "train.loraplus_lr_ratio",
    "lora.init",
    "lora.use_dora",
)
DECOMPOSING_INITS = ("pissa", "olora")  # lora.init values that take A and B out of the base weights


def check_compatibility(sweep: SweepConfig, cluster: ClusterProfile, source: str, cluster_source: str) -> list[Problem]:
    """Combinations of settings that cannot train together."""
    q, zero = sweep.quantization, cluster.deepspeed.zero_stage
    problems = []
    if q.mode == "8bit" and zero == 3:
        problems.append(
            Problem(
                source,
                "quantization.mode",
                "8-bit quantization cannot be sharded by ZeRO-3 (got 8bit with zero_stage 3)",
                "Use quantization.mode=4bit, or deepspeed.zero_stage <= 2",
            )
        )
    if q.mode == "4bit" and zero == 3:
        compute = resolve_compute_dtype(sweep, cluster)
        if q.quant_storage not in ("auto", compute):
            problems.append(
                Problem(
                    source,
                    "quantization.quant_storage",
                    f"QLoRA under ZeRO-3 needs quant_storage equal to the compute dtype {compute} "
                    f"(got {q.quant_storage})",
                    f"Set quantization.quant_storage={compute} or auto",
                )
            )
    if q.mode != "none" and cluster.deepspeed.offload_params:
        problems.append(
            Problem(
                cluster_source,
                "deepspeed.offload_params",
                "quantized weights cannot be offloaded by ZeRO-3",
                "Set offload_params: false",
            )
        )
    if sweep.train.attention == "flash_attention_2" and not cluster.trial.use_gpu:
        problems.append(
            Problem(
                source,
                "train.attention",
                "flash_attention_2 runs on GPUs only (got it with CPU workers)",
                "Use train.attention=sdpa on CPU workers, or a GPU cluster profile (clusters/gpu-node.yaml)",
            )
        )
    problems += _lora_variant_problems(sweep, cluster, source, cluster_source)
    if resolve_precision(sweep, cluster) == "fp16" and not cluster.trial.use_gpu:
        problems.append(
            Problem(
                source,
                "train.precision",
                "fp16 training needs GPUs (got fp16 on CPU workers)",
                "Use train.precision=fp32 or bf16 on CPU",
            )
        )
    return problems


def _distinct_valid(sweep: SweepConfig, key: str, values: list) -> list:
    """The distinct values of a searched key the schema accepts (check_space reports the others): at most a few
    per key, so the product below stays small however long the lists are."""
    distinct = {json.dumps(v, sort_keys=True, default=str): v for v in values}.values()
    valid = []
    for v in distinct:
        try:
            apply_values(sweep, {key: v})
        except ValueError:
            continue
        valid.append(v)
    return valid


def check_space_compatibility(
    sweep: SweepConfig, cluster: ClusterProfile, source: str, cluster_source: str
) -> list[Problem]:
    """A space whose every combination of the settings that must agree is incompatible is an error; one where
    only some are is fine (those trials are skipped and reported)."""
    valid = {k: _distinct_valid(sweep, k, finite_values(sweep.search.space, k) or []) for k in COMPAT_KEYS}
    searched = {k: v for k, v in valid.items() if v}  # a key with no valid value is check_space's to report
    if not searched:
        return []
    first: list[Problem] = []
    for combo in itertools.product(*searched.values()):
        try:
            candidate = apply_values(sweep, dict(zip(searched, combo, strict=True)))
        except ValueError:
            continue
        found = check_compatibility(candidate, cluster, source, cluster_source)
        if not found:
            return []
        first = first or found
    keys = ", ".join(searched)
    return [
        Problem(
            source,
            "search.space",
            f"every combination of {keys} is incompatible with this cluster: "
            f"{first[0].message if first else 'none is valid'}",
            "Widen the space or change the cluster",
        )
    ]


def _lora_variant_problems(
    sweep: SweepConfig, cluster: ClusterProfile, source: str, cluster_source: str
) -> list[Problem]:
    """LoRA initialisations, DoRA and optimizers that cannot train together, or not on this cluster."""
    lora, t, q, zero = sweep.lora, sweep.train, sweep.quantization, cluster.deepspeed.zero_stage
    found = []

    def refuse(key: str, message: str, fix: str, where: str = source) -> None:
        found.append(Problem(where, key, message, fix))

    if lora.init in DECOMPOSING_INITS:
        if zero == 3:
            refuse(
                "lora.init",
                f"{lora.init} decomposes each whole base weight, which ZeRO-3 shards across the workers",
                "Use deepspeed.zero_stage=2, or lora.init=default or gaussian under ZeRO-3",
            )
        if q.mode != "none":
            refuse(
                "lora.init",
                f"{lora.init} decomposes full-precision base weights, but quantization.mode is {q.mode}",
                "Use lora.init=loftq for a quantized base, or quantization.mode=none",
            )
        if lora.use_dora:
            refuse(
                "lora.init",
                f"{lora.init} with DoRA cannot be saved as an adapter on the unchanged base (DoRA's magnitudes "
                "are of the decomposed weights)",
                "Set lora.use_dora=false, or lora.init=default or gaussian with DoRA",
            )
    if lora.init == "loftq":
        if q.mode != "4bit":
            refuse(
                "lora.init",
                f"loftq starts A and B from the 4-bit quantization error, but quantization.mode is {q.mode}",
                "Set quantization.mode=4bit (QLoRA), or use lora.init=pissa or default",
            )
        if zero == 3:
            refuse(
                "lora.init",
                "loftq reads each whole base weight, which ZeRO-3 shards across the workers",
                "Use deepspeed.zero_stage=2 with loftq",
            )
        if not cluster.trial.use_gpu:
            refuse(
                "lora.init",
                "peft computes LoftQ's initialisation of a 4-bit model on CUDA only (got CPU workers)",
                "Use a GPU cluster profile (clusters/gpu-node.yaml) for loftq, or lora.init=default or gaussian",
            )
    if lora.init == "eva" and zero == 3:
        refuse(
            "lora.init",
            "eva computes each layer's input statistics on the whole layer, which ZeRO-3 shards",
            "Use deepspeed.zero_stage=2 with eva",
        )
    if t.optimizer.startswith("paged_") and not cluster.trial.use_gpu:
        refuse(
            "train.optimizer",
            f"{t.optimizer} pages optimizer state through CUDA unified memory: it needs GPU workers",
            "Use train.optimizer=adamw or adamw_8bit on CPU workers, or a GPU cluster profile (clusters/gpu-node.yaml)",
        )
    if cluster.deepspeed.offload_optimizer and (t.optimizer != "adamw" or t.loraplus_lr_ratio is not None):
        what = t.optimizer if t.optimizer != "adamw" else "LoRA+ (train.loraplus_lr_ratio)"
        refuse(
            "deepspeed.offload_optimizer",
            f"an offloaded optimizer is DeepSpeed's CPU Adam, which {what} replaces",
            "Set offload_optimizer: false, or use train.optimizer=adamw without loraplus_lr_ratio",
            cluster_source,
        )
    return found
