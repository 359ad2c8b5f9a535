"""What owns one trial: a Ray Train `TorchTrainer` with N DeepSpeed workers for one set of hyperparameters,
run to the end, and its outcome read back from the checkpoints it reported."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adaptune.config import ClusterProfile, SweepConfig
from adaptune.names import ADAPTER_DIR, PHASE_ON_DECK, PHASE_TRIAL_SETUP, PHASE_TRIAL_START, TRAINER_STATE
from adaptune.preflight.rules import check_compatibility
from adaptune.preflight.search_space import apply_values, resolve_alpha
from adaptune.records import PreparedRun, TrialOutcome, TrialSpec, diverged_report

TRAIN_POLL_S = 0.25  # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S for adaptune's trials (see build_trainer)


class TrainingDiverged(RuntimeError):
    """The trial's loss became NaN/inf or exploded; it was stopped at once."""


def build_trainer(spec: TrialSpec, name: str, storage_path: str, callbacks: list[Any] | None = None) -> Any:
    """A `TorchTrainer` for one trial: N workers over gloo (CPU) or NCCL (GPU), restarted from the last
    adapter checkpoint up to `trial.max_failures` times, keeping the checkpoint best by `search.metric` and
    `search.mode` and the latest."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # How often the Train controller polls its workers: their reports reach Tune, and a trial's end is seen, on
    # these polls (Ray's default, 2 s, costs each evaluation and each trial's end up to 2 s). Set here, in the
    # process that starts the controller, so it reaches the controller on any cluster; a value set where the
    # nodes start wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(TRAIN_POLL_S))
    tr, search = spec.cluster.trial, spec.sweep.search
    resources = {"CPU": tr.cpus_per_worker}
    if tr.use_gpu:
        resources["GPU"] = tr.gpus_per_worker
    return TorchTrainer(
        _train_fn_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=tr.num_workers, use_gpu=tr.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if tr.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=tr.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=search.metric, checkpoint_score_order=search.mode
            ),
            callbacks=callbacks or [],
        ),
    )


def _train_fn_per_worker(config: dict[str, Any]) -> None:
    """The workers' entrypoint, imported only where it runs: the trial's process and the Train controller pass
    this function on (pickled by reference) without importing the worker's stack."""
    from adaptune.worker.train_loop import train_fn_per_worker

    train_fn_per_worker(config)


def read_outcome(result: Any, search: Any) -> TrialOutcome:
    """The outcome of a finished `TorchTrainer.fit()`, read from its checkpoints (not `Result.metrics`,
    which Ray leaves empty in some paths). The latest checkpoint's trainer state has the full history; the
    best evaluation is the best by `search.metric` in `search.mode`."""
    if result.checkpoint is None:
        raise RuntimeError(f"trial at {result.path} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / TRAINER_STATE).read_text(encoding="utf-8"))
    if "diverged" in state:
        raise TrainingDiverged(state["diverged"]["reason"])
    pick = min if search.mode == "min" else max
    best_ckpt, best = pick(
        result.best_checkpoints or [(result.checkpoint, state["history"][-1])], key=lambda cm: cm[1][search.metric]
    )
    return TrialOutcome(
        path=str(result.path),
        best=best,
        final=state["history"][-1],
        history=state["history"],
        adapter_path=str(Path(best_ckpt.path) / ADAPTER_DIR),
        restarts=state["restarts"],
        quantized_layers=state["quantized_layers"],
        startup=state.get("startup", []),
        converged=state["converged"]["reason"] if "converged" in state else None,
    )


def run_trial(
    sweep: SweepConfig, cluster: ClusterProfile, prepared: PreparedRun, name: str, storage_path: str
) -> TrialOutcome:
    """Train one adapter with the sweep's base values and return what it produced.

    Raises:
        ray.train.TrainingFailedError: when the workers failed more than `trial.max_failures` times.
    """
    trainer = build_trainer(prepared.spec(sweep, cluster, time.time()), name, storage_path)
    result = trainer.fit()
    return read_outcome(result, sweep.search)


class TrialSkipped(RuntimeError):
    """The sampled combination cannot train (an incompatible setting); the trial is recorded, not run."""


def launch_training(
    config: dict[str, Any], sweep: SweepConfig, cluster: ClusterProfile, prepared: PreparedRun, trials_path: str
) -> None:
    """The Ray Tune trainable of a sweep: one trial. Applies the sampled values (`config`, dotted keys) to the
    base sweep, then runs a TorchTrainer whose evaluations reach Tune through `TuneReportCallback`.

    The inner run is named after the Tune trial, so a trial restarted by `--resume` continues from the
    checkpoints its earlier attempt left in `trials_path`.
    """
    entered = time.time()
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    try:
        trial_sweep = apply_values(sweep, resolve_alpha(config, sweep))
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        raise TrialSkipped(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    problems = check_compatibility(trial_sweep, cluster, "sampled", "cluster")
    if problems:
        raise TrialSkipped("; ".join(f"{p.key}: {p.message}" for p in problems))
    trial_id = tune.get_context().get_trial_id()
    finished = _finished_run(Path(trials_path) / trial_id, trial_sweep.train, trial_sweep.search)
    if finished is not None:
        # Restarted by --resume after finishing (the driver died before Tune saved that): replay, don't retrain.
        for report in finished:
            tune.report(report)
        return
    ready = time.time()
    wait_for_room(cluster)  # a trial on deck: its process is up, its workers wait for the trials before it
    started = _process_started()
    launched = time.time()
    timeline = (
        (PHASE_TRIAL_START, started, entered - started),
        (PHASE_TRIAL_SETUP, entered, ready - entered),
        (PHASE_ON_DECK, ready, launched - ready),
    )
    spec = prepared.spec(trial_sweep, cluster, launched, timeline)
    trainer = build_trainer(spec, name=trial_id, storage_path=trials_path, callbacks=[TuneReportCallback()])
    trainer.fit()


ROOM_POLL_S = 0.25


def wait_for_room(cluster: ClusterProfile) -> None:
    """Return once the cluster has room for this trial's workers, if it ever can without growing.

    A trial on deck (`search.trials_on_deck`) starts while the trials before it hold every worker slot. Its Train
    controller must not ask for its placement group before there is room: Ray Train hands a placement group to
    its clean-up only once the workers have started, so a trial interrupted while its group waited (Ctrl-C, a
    killed driver) would leave the group behind, holding its CPUs and GPUs once they free up, for good. A
    cluster that does not have the room at all (one that autoscales from fewer nodes) gets the request at
    once: a pending placement group is what makes the autoscaler add nodes."""
    import ray

    tr = cluster.trial
    need = {"CPU": tr.num_workers * tr.cpus_per_worker}
    if tr.use_gpu:
        need["GPU"] = tr.num_workers * tr.gpus_per_worker
    total = ray.cluster_resources()
    if any(total.get(k, 0.0) < v for k, v in need.items()):
        return
    while any(ray.available_resources().get(k, 0.0) < v for k, v in need.items()):
        time.sleep(ROOM_POLL_S)


def _process_started() -> float:
    """Wall-clock time this process started (psutil, which Ray depends on)."""
    import psutil

    return psutil.Process().create_time()


def checkpoints_on_storage(run_dir: Path) -> dict[int, Path]:
    """A trial's inner-run checkpoints on storage by training step, read from their trainer states.
    A checkpoint directory still being written (no readable state yet) is left out."""
    out = {}
    for ckpt in sorted(run_dir.glob("checkpoint_*")):
        try:
            out[int(json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))["step"])] = ckpt
        except (OSError, ValueError, KeyError):
            continue
    return out


def _finished_run(run_dir: Path, train: Any, search: Any) -> list[dict[str, Any]] | None:
    """The reports of a trial's inner run that already finished (or diverged), read from its latest
    checkpoint on storage; None when it has not finished."""
    by_step = checkpoints_on_storage(run_dir)
    if not by_step:
        return None
    latest = by_step[max(by_step)]
    state = json.loads((latest / TRAINER_STATE).read_text(encoding="utf-8"))
    if "diverged" in state:
        return [diverged_report(state["diverged"]["step"], search.metric, search.mode)]
    if state["step"] < train.max_steps and "converged" not in state:
        return None
    # each evaluation's checkpoint, so the winner's adapter path is exact
    return [{**h, "checkpoint_path": str(by_step.get(h["step"], latest))} for h in state["history"]]
