"""What the job driver does, top to bottom: load and check the config, prepare the data once, connect to
Ray, and launch the run's trials. This is the process `ray job submit` starts."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from adaptune.architecture import ArchitectureError, target_modules_for
from adaptune.config import ClusterProfile, SweepConfig, model_source, read_configs, resolve_path
from adaptune.data import prepare_dataset
from adaptune.errors import ConfigError, DataError, Problem
from adaptune.validate import check_run

log = logging.getLogger("adaptune")


@dataclass
class RunPlan:
    """A checked configuration and where its run stores things."""

    sweep: SweepConfig
    cluster: ClusterProfile
    sweep_file: str
    cluster_file: str | None
    sweep_root: Path  # <storage_path>/<sweep name>


def plan_run(sweep_file: str, cluster_file: str | None, overrides: list[str]) -> RunPlan:
    """Load both files with overrides and run every pre-flight check.

    Raises:
        ConfigError: every problem at once.
    """
    sweep, cluster, problems = read_configs(sweep_file, cluster_file, overrides)
    problems += check_run(sweep, cluster, sweep_file, cluster_file)
    if problems or sweep is None or cluster is None:
        raise ConfigError(problems)
    storage = resolve_path(cluster.storage_path)
    return RunPlan(sweep, cluster, sweep_file, cluster_file, storage.resolve() / sweep.name)


def prepare_inputs(plan: RunPlan):
    """Tokenize the data once for the whole run and resolve the LoRA targets; returns (manifest, inputs)."""
    from adaptune.trial import TrialInputs

    sweep, cluster = plan.sweep, plan.cluster
    started = time.perf_counter()
    manifest = prepare_dataset(
        sweep.data, sweep.model.path, plan.sweep_root / "data", sweep.model.trust_remote_code, sweep.model.revision
    )
    log.info(
        "data %s: %s rows (train/validation/test) -> %s examples, %s truncated, %s dropped; digest %s; "
        "prepared in %.1fs at %s",
        sweep.data.path,
        _fmt(manifest.rows),
        _fmt(manifest.examples),
        sum(manifest.truncated.values()),
        sum(manifest.dropped.values()),
        manifest.digest[:12],
        time.perf_counter() - started,
        manifest.path,
    )
    need = cluster.trial.num_workers * sweep.train.micro_batch_size
    if manifest.examples["train"] < need:
        raise DataError(
            Problem(
                sweep.data.path,
                "train.micro_batch_size",
                f"the train split has {manifest.examples['train']} examples, fewer than one batch "
                f"across {cluster.trial.num_workers} workers ({need})",
                "Add data, or lower train.micro_batch_size or trial.num_workers",
            )
        )
    try:
        targets = target_modules_for(sweep.lora.target_modules, model_source(sweep.model.path), sweep.model.revision)
    except ArchitectureError as e:
        raise ConfigError(
            Problem(plan.sweep_file, "lora.target_modules", str(e), "Pick modules from that list")
        ) from None
    return manifest, TrialInputs(data_dir=manifest.path, target_modules=targets, pad_token_id=manifest.pad_token_id)


def connect_ray(cluster: ClusterProfile) -> None:
    """Join the configured cluster (profile address, else RAY_ADDRESS), or start a local Ray in-process.

    The local case says `address="local"`: a bare `ray.init()` would instead join whatever cluster was last
    started with `ray start` on this machine, or hang on a stale record of one.
    """
    import ray

    if ray.is_initialized():
        return
    address = cluster.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", log_to_driver=True)
    log.info("ray: %s", ray.cluster_resources())


def pin_paths(sweep: SweepConfig) -> SweepConfig:
    """The sweep as workers should see it. Under `ray job submit --working-dir`, every node unpacks the same
    directory and runs in it, so relative paths stay relative. Otherwise workers do not share the driver's
    working directory: a local model path is made absolute."""
    import ray

    if ray.get_runtime_context().runtime_env.get("working_dir"):
        return sweep
    model = sweep.model.model_copy(update={"path": model_source(sweep.model.path)})
    return sweep.model_copy(update={"model": model})


def run_train(sweep_file: str, cluster_file: str | None, overrides: list[str]):
    """`adaptune train`: the sweep's base values as one trial. Returns (manifest, outcome)."""
    from adaptune.trial import run_trial

    plan = plan_run(sweep_file, cluster_file, overrides)
    manifest, inputs = prepare_inputs(plan)
    connect_ray(plan.cluster)
    name = time.strftime("train-%Y%m%d-%H%M%S")
    outcome = run_trial(pin_paths(plan.sweep), plan.cluster, inputs, name, str(plan.sweep_root))
    return manifest, outcome


def _fmt(counts: dict[str, int]) -> str:
    return "/".join(str(counts.get(k, 0)) for k in ("train", "validation", "test"))
