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
)


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
