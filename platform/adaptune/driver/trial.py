"""What owns one trial: a Ray Train `TorchTrainer` with N DeepSpeed workers for one set of hyperparameters,
run to the end, and its outcome read back from the checkpoints it reported."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adaptune.config import ClusterProfile, SweepConfig
from adaptune.names import (
    ADAPTER_DIR,
    PHASE_ON_DECK,
    PHASE_TRIAL_SETUP,
    PHASE_TRIAL_START,
    STOP_REQUEST,
    TRAINER_STATE,
)
from adaptune.preflight.rules import check_compatibility
from adaptune.preflight.search_space import apply_values, resolve_alpha
from adaptune.records import PreparedRun, TrialOutcome, TrialSpec, diverged_report

log = logging.getLogger("adaptune")

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
    config: dict[str, Any],
    sweep: SweepConfig,
    cluster: ClusterProfile,
    prepared: PreparedRun,
    trials_path: str,
    slots: str | None = None,
) -> None:
    """The Ray Tune trainable of a sweep: one trial. Applies the sampled values (`config`, dotted keys) to the
    base sweep, then runs a TorchTrainer whose evaluations reach Tune through `TuneReportCallback`. With `slots`
    (the name of the sweep's `TrialSlots` actor), it trains only once it holds a slot: a trial on deck waits
    there, its process up.

    The inner run is named after the Tune trial, so a trial restarted by `--resume` continues from the
    checkpoints its earlier attempt left in `trials_path`.
    """
    entered = time.time()
    import ray
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
    stop_file = Path(trials_path) / trial_id / STOP_REQUEST
    stop_file.unlink(missing_ok=True)  # Tune (re)starts this trial: whatever ended an earlier attempt is past
    holder = ray.get_actor(slots) if slots else None
    if holder is not None:
        ray.get(holder.acquire.remote(trial_id))  # a trial on deck waits here for the trial before it to end
        _wait_for_room(cluster)  # ... and for its workers to be gone (Ray frees them a moment after it ends)
    try:
        started = _process_started()
        launched = time.time()
        timeline = (
            (PHASE_TRIAL_START, started, entered - started),
            (PHASE_TRIAL_SETUP, entered, ready - entered),
            (PHASE_ON_DECK, ready, launched - ready),
        )
        spec = prepared.spec(trial_sweep, cluster, launched, timeline, str(stop_file))
        trainer = build_trainer(spec, name=trial_id, storage_path=trials_path, callbacks=[TuneReportCallback()])
        handed_over = _handed_to_tune()
        trainer.fit()
        _wait_for_tune_to_take(handed_over, stop_file)
    finally:
        if holder is not None:
            holder.release.remote(trial_id)


ROOM_POLL_S, ROOM_WAIT_S = 0.25, 60.0
HANDOVER_POLL_S, HANDOVER_SETTLE_S, HANDOVER_WAIT_S = 0.05, 0.5, 120.0


def _handed_to_tune() -> tuple[int, int]:
    """How many reports this trial's Tune session has taken in so far and put on its result queue (see
    `_wait_for_tune_to_take`)."""
    from ray.train._internal.session import get_session

    session = get_session()
    return session.iteration, session.result_queue.unfinished_tasks


def _wait_for_tune_to_take(before: tuple[int, int], stop_file: Path) -> None:
    """Return from the trial only once Tune has taken in every report of its Train run.

    The Train controller hands each report to the trial's process through a queue actor
    (`TuneReportCallback`), which the trial's main thread drains onto the session's one-slot result queue. When
    the training function returns, Tune puts its own final result on that queue; if the controller's last
    report is still in the queue actor then, the main thread blocks forever putting it behind a result only it
    would take (Ray 2.60: the trial hangs, holding its resources, and the sweep never ends). So this waits until
    the queue actor is empty and every report the main thread took is on the result queue: it counts one up
    (`iteration`) before it puts (`unfinished_tasks` counts puts; nothing calls `task_done`), and the two must
    agree for `HANDOVER_SETTLE_S`, the moment between the main thread taking a report and counting it. A trial
    Tune has ended (its stop event, or the driver's stop file) takes nothing more: it returns at once."""
    from ray.exceptions import RayError
    from ray.train._internal.session import get_session

    session = get_session()
    reports = session._inter_actor_queue
    if reports is None:
        return
    deadline, settled = time.monotonic() + HANDOVER_WAIT_S, None
    while time.monotonic() < deadline:
        if session.stop_event.is_set() or stop_file.exists():
            return
        taken, put = (n - n0 for n, n0 in zip(_handed_to_tune(), before, strict=True))
        try:
            waiting = not reports.empty()
        except RayError:  # the queue actor is gone with the trial: nothing is left to hand over
            return
        if taken == put and not waiting:
            settled = settled or time.monotonic()
            if time.monotonic() - settled >= HANDOVER_SETTLE_S:
                return
        else:
            settled = None
        time.sleep(HANDOVER_POLL_S)
    log.warning("trial: Tune had not taken the Train run's last report after %.0f s; ending anyway", HANDOVER_WAIT_S)


def _wait_for_room(cluster: ClusterProfile) -> None:
    """Wait (up to ROOM_WAIT_S) until the cluster has room for this trial's workers: a trial that took the slot
    of one that just ended asks for its placement group only once the ended trial's workers are gone (Ray
    removes their placement group a moment after the trial ends). A cluster that never has the room (one that
    autoscales up from fewer nodes) is asked at once: its pending placement group is what adds the nodes."""
    import ray

    tr = cluster.trial
    need = {
        "CPU": tr.num_workers * tr.cpus_per_worker,
        **({"GPU": tr.num_workers * tr.gpus_per_worker} if tr.use_gpu else {}),
    }
    if any(ray.cluster_resources().get(k, 0.0) < v for k, v in need.items()):
        return
    deadline = time.monotonic() + ROOM_WAIT_S
    while time.monotonic() < deadline and any(ray.available_resources().get(k, 0.0) < v for k, v in need.items()):
        time.sleep(ROOM_POLL_S)


class TrialSlots:
    """The sweep's worker slots: as many trials train at once as the cluster holds; a trial started ahead of them
    (on deck, `search.trials_on_deck`) waits for a slot with its process up and its imports done.

    A Ray actor of the driver's (it dies with the driver). A trial takes a slot before its Train controller asks
    for a placement group, and gives it back when its training returns; the driver gives back the slot of a
    trial Tune ended otherwise (ASHA stops a trial by ending its process). So no trial asks Ray for its workers
    while the ones before it hold them: Ray Train hands a placement group to its clean-up only once the workers
    have started, and a group left waiting by a trial that was then interrupted (Ctrl-C, a killed driver) would
    be left behind, holding those CPUs and GPUs for good."""

    def __init__(self, slots: int):
        self.free = slots
        self.holders: set[str] = set()
        self.ended: set[str] = set()  # released: a late or orphaned acquire of theirs takes nothing
        self.changed = asyncio.Condition()

    async def acquire(self, trial_id: str) -> None:
        async with self.changed:
            if trial_id in self.holders or trial_id in self.ended:
                return
            await self.changed.wait_for(lambda: self.free > 0 or trial_id in self.ended)
            if trial_id in self.ended:  # its process died while it waited (the driver released it)
                return
            self.free -= 1
            self.holders.add(trial_id)

    async def release(self, trial_id: str) -> None:
        async with self.changed:
            self.ended.add(trial_id)
            if trial_id in self.holders:
                self.holders.discard(trial_id)
                self.free += 1
            self.changed.notify_all()


def start_trial_slots(slots: int, sweep_id: str) -> tuple[Any, str]:
    """The `TrialSlots` actor of a sweep's driver (no CPU, gone with the driver) and its name, by which the trials
    and the driver's callback find it: only the name is handed to them, since Tune saves what it is handed
    with the sweep's state, and a saved handle of a gone actor cannot be loaded again by `--resume`."""
    import ray

    name = f"adaptune-trial-slots-{sweep_id}"
    return ray.remote(num_cpus=0)(TrialSlots).options(name=name).remote(slots), name


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
