"""One scheduled retrain, top to bottom: take the lock of the registered model, skip data already trained on,
snapshot the new drop, assemble the training set, sweep warm-started from the champion, score champion and
challenger on the frozen set in one process, promote only by the margin, record all of it in MLflow, and merge
the new champion when asked. Also `adaptune rollback`.

What a retrain keeps on storage is in `state`; its pure rules in `rules`; what it records in MLflow goes through
`tracking.retrain_runs`. The adapters it scores are kept under `<storage>/retrain/<model>/<retrain id>/`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adaptune.config import NAME_PATTERN, ClusterProfile, SweepConfig, read_configs, resolve_path
from adaptune.data import data_digest, find_data_files
from adaptune.driver.run import (
    capture_output,
    checked_plan,
    connect_ray,
    hold_store,
    registry_access,
    run_merge,
    sweep_plan,
)
from adaptune.errors import ConfigError, DataError, Problem
from adaptune.names import (
    CHAMPION,
    DECISION_FAILED,
    FIRST_CHAMPION,
    INTERRUPTED,
    KEPT_CHAMPION,
    NO_OP,
    PROMOTED,
    RETRAIN_DIR,
    RETRAIN_HISTORY,
    RETRAIN_LOCK,
)
from adaptune.preflight.validate import check_frozen
from adaptune.retrain.rules import champion_point, decide, retrain_sweep
from adaptune.retrain.scoring import score_frozen
from adaptune.retrain.state import (
    RetrainBusy,
    RetrainLock,
    Round,
    Snapshot,
    append_history,
    champion_snapshots,
    newest_drop,
    read_drop,
    read_history,
    snapshot_drop,
    training_set,
)
from adaptune.tracking.models import download_adapter
from adaptune.tracking.registry import aliases, mark_failed, promote, resolve_ref, rollback
from adaptune.tracking.retrain_runs import RetrainRun, champion_params, record_rollback
from adaptune.tracking.server import tracking_uri, ui_command
from adaptune.tracking.store import client

log = logging.getLogger("adaptune")
__all__ = ["RetrainBusy", "RetrainOutcome", "run_retrain", "run_rollback"]


@dataclass
class RetrainOutcome:
    retrain_id: str
    registered_model: str
    decision: str
    message: str  # why, in one sentence
    drop: Snapshot
    snapshots: list[Snapshot] = field(default_factory=list)
    champion_before: str | None = None
    challenger: str | None = None
    champion_after: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # frozen-set eval_loss by "champion"/"challenger"
    guards: dict[str, dict[str, float]] = field(default_factory=dict)  # guard set path -> the same
    run_id: str = ""
    sweep: Any = None  # SweepOutcome
    merged: Any = None  # (registration, report) of the merge, when one ran
    ui: str = ""
    exit_code: int = 0


@dataclass
class RoundContext:
    """What the phases of one round hand each other."""

    plan: Any  # driver.run.RunPlan of the retrain's sweep file
    retrain_id: str
    home: Path  # <storage>/retrain/<registered model>
    drop_path: str
    mlc: Any = None
    uri: str = ""


def run_retrain(
    sweep_file: str,
    cluster_file: str | None,
    data_path: str,
    overrides: list[str],
    newest: bool = False,
) -> RetrainOutcome:
    """`adaptune retrain`: see the module docstring. Raises RetrainBusy when another retrain holds the lock."""
    sweep, cluster, problems = read_configs(sweep_file, cluster_file, overrides)
    if sweep is not None and sweep.retrain.frozen_eval_path is None:
        problems.append(
            Problem(
                sweep_file,
                "retrain.frozen_eval_path",
                "retraining needs a frozen evaluation set",
                "Set retrain.frozen_eval_path to a held-out file that is never trained on",
            )
        )
    plan = checked_plan(sweep, cluster, sweep_file, cluster_file, problems)
    model = plan.sweep.registered_model_name
    home = resolve_path(plan.cluster.storage_path).resolve() / RETRAIN_DIR / model
    drop_path = newest_drop(data_path) if newest else data_path
    find_data_files(drop_path, "--data")  # a drop that is not there is refused before the lock is taken
    retrain_id = time.strftime("retrain-%Y%m%d-%H%M%S")
    owner = {"retrain_id": retrain_id, "registered_model": model, "sweep_file": sweep_file, "data": drop_path}
    # the retrain lock first: a second retrain of the same model is told so, whichever store it uses
    with (
        RetrainLock(home / RETRAIN_LOCK, plan.sweep.retrain.lock_ttl_minutes * 60, owner),
        hold_store(plan, retrain_id),
    ):
        capture_output(plan, retrain_id)
        cluster_overrides = [o for o in overrides if o.startswith("cluster.")]
        return _retrain_locked(RoundContext(plan, retrain_id, home, drop_path), cluster_file, cluster_overrides)


def _retrain_locked(r: RoundContext, cluster_file: str | None, cluster_overrides: list[str]) -> RetrainOutcome:
    """The round, lock held: drop, training set, sweep, score, decide, merge."""
    history = read_history(r.home / RETRAIN_HISTORY)
    drop, seen = take_drop(r, history)
    if seen is not None:
        return seen
    r.uri = tracking_uri(r.plan.cluster)
    r.mlc = client(r.uri)
    champion, snapshots, training = assemble_training_set(r, history, drop)
    outcome, run = open_round(r, drop, snapshots, champion, training)
    status = "FAILED"
    try:
        swept = sweep(r, run, champion, training)
        outcome.sweep = swept
        if swept.interrupted or swept.registration is None:
            outcome.decision, outcome.exit_code = (INTERRUPTED, 130) if swept.interrupted else (DECISION_FAILED, 1)
            outcome.message = "the sweep " + ("was stopped" if swept.interrupted else "trained no adapter")
            status = "KILLED" if swept.interrupted else "FAILED"
            run.decided(outcome.decision)
            return outcome
        outcome.challenger = swept.registration.version
        score_and_decide(r, run, outcome, swept.parent_run_id)
        merge(r, run, outcome, cluster_file, cluster_overrides)
        status = "FINISHED"
        return outcome
    finally:
        run.end(status)


def take_drop(r: RoundContext, history: list[Round]) -> tuple[Snapshot, RetrainOutcome | None]:
    """The new drop, snapshotted; or, when its digest was already trained on, the no-op outcome."""
    files, digest = read_drop(r.drop_path)
    seen = next((h for h in history if digest in {s.digest for s in h.snapshots}), None)
    if seen is not None:
        drop = next(s for s in seen.snapshots if s.digest == digest)
        message = f"{r.drop_path} (digest {digest[:12]}) was already trained on by {seen.retrain_id}; nothing to do"
        return drop, RetrainOutcome(r.retrain_id, r.plan.sweep.registered_model_name, NO_OP, message, drop)
    overlap = check_frozen(r.plan.sweep, r.plan.sweep_file, training=files)  # before anything reaches MLflow
    if overlap:
        raise DataError(overlap)
    return snapshot_drop(r.drop_path, files, digest, r.plan.sweep, r.home / "snapshots"), None


def assemble_training_set(
    r: RoundContext, history: list[Round], drop: Snapshot
) -> tuple[str | None, list[Snapshot], Path]:
    """(the champion version before the round, the snapshots trained on, the training set's folder): the new
    drop, with the champion's snapshots when `retrain.data_mode` is combine."""
    model, mode = r.plan.sweep.registered_model_name, r.plan.sweep.retrain.data_mode
    before = aliases(r.mlc, model).get(CHAMPION)
    kept = champion_snapshots(history, before) if mode == "combine" else []
    if mode == "combine" and before is not None and not kept:
        log.info("retrain: champion version %s was not made by a retrain; training on the new drop alone", before)
    snapshots = [*[s for s in kept if s.digest != drop.digest], drop]
    training = training_set(snapshots, r.home / "training")
    # The frozen and guard sets against the champion's snapshots too, before anything reaches MLflow (take_drop
    # checked the drop): in `combine` they are trained on again, so an earlier drop cannot guard such a round.
    again = [f for snap in snapshots if snap.digest != drop.digest for f in find_data_files(snap.path, "data.path")]
    overlap = check_frozen(r.plan.sweep, r.plan.sweep_file, training=again) if again else []
    if overlap:
        hint = " (data_mode combine trains on the champion's drops again: guard with data it never trains on)"
        raise DataError([replace(p, fix=p.fix + hint) for p in overlap])
    return before, snapshots, training


def open_round(
    r: RoundContext, drop: Snapshot, snapshots: list[Snapshot], before: str | None, training: Path
) -> tuple[RetrainOutcome, Any]:
    """The retrain's MLflow run with its inputs, and the outcome the next phases fill in."""
    sweep, rt = r.plan.sweep, r.plan.sweep.retrain
    model = sweep.registered_model_name
    frozen_digest = data_digest(find_data_files(rt.frozen_eval_path or "", "retrain.frozen_eval_path"))
    run = RetrainRun(r.mlc, r.uri, sweep.experiment_name, r.plan.cluster, model, r.retrain_id)
    outcome = RetrainOutcome(
        r.retrain_id, model, "", "", drop, snapshots, before, run_id=run.run_id, ui=ui_command(r.uri)
    )
    try:
        params = {
            "registered_model": model,
            "drop.path": r.drop_path,
            "drop.digest": drop.digest,
            "drop.rows": drop.rows,
            "data_mode": rt.data_mode,
            "training_set": str(training),
            "frozen_eval_path": rt.frozen_eval_path,
            "frozen_eval.digest": frozen_digest,
            "margin": rt.margin,
            "champion_before": before or "none",
            "num_samples": rt.num_samples or sweep.search.num_samples,
            "max_steps": rt.max_steps or sweep.train.max_steps,
        }
        run.log_inputs(params, snapshots, (rt.frozen_eval_path or "", frozen_digest))
    except BaseException:
        run.end("FAILED")
        raise
    return outcome, run


def sweep(r: RoundContext, run: Any, before: str | None, training: Path) -> Any:
    """The sweep on the training set, warm-started from the champion's values, nested under the retrain run and
    checked like any run (the frozen set against its training set included)."""
    plan = r.plan
    point: dict[str, Any] = {}
    if before is not None:
        point = champion_point(
            champion_params(r.mlc, plan.sweep.registered_model_name, before), plan.sweep.search.space
        )
        log.info("retrain: starting from champion version %s's values %s", before, point or "(none searched)")
    retrain = retrain_sweep(plan.sweep, training, point, plan.sweep_file)
    sub_plan = checked_plan(retrain, plan.cluster, plan.sweep_file, plan.cluster_file)
    return sweep_plan(sub_plan, parent_tags=run.sweep_tags())


def score_and_decide(r: RoundContext, run: Any, outcome: RetrainOutcome, sweep_run_id: str) -> None:
    """Score champion and challenger on the frozen set in one process by the same code, promote the challenger
    only by the margin, and record the decision on its version, on the retrain run and in the history. A round
    that fails here marks its registered challenger failed (nobody may read it as still being judged)."""
    sweep, cluster = r.plan.sweep, r.plan.cluster
    model, challenger, before = outcome.registered_model, outcome.challenger, outcome.champion_before
    try:
        connect_ray(cluster)
        named = {"challenger": challenger, **({"champion": before} if before not in (None, challenger) else {})}
        scores, guards = _score(r.mlc, r.uri, model, named, r.home / outcome.retrain_id, sweep, cluster)
        outcome.scores, outcome.guards = scores, guards
        rt = sweep.retrain
        decision, why = decide(scores.get("champion"), scores["challenger"], rt.margin, guards, rt.guard_tolerance)
        if before == challenger:  # a resumed sweep registered nothing new
            decision, why = KEPT_CHAMPION, "the challenger is the champion already"
        if decision == PROMOTED:
            promote(r.mlc, model, challenger)
        after = aliases(r.mlc, model).get(CHAMPION)
        outcome.decision, outcome.message, outcome.champion_after = decision, why, after
        run.record_decision(challenger, decision, why, scores, after, sweep_run_id, guards)
    except BaseException as e:
        why = f"retrain {outcome.retrain_id} failed before deciding: {type(e).__name__}: {e}"
        mark_failed(r.mlc, model, challenger, why, run.run_id)
        run.decided(DECISION_FAILED)
        outcome.decision, outcome.message = DECISION_FAILED, why
        append_history(r.home / RETRAIN_HISTORY, _round(outcome))
        raise
    append_history(r.home / RETRAIN_HISTORY, _round(outcome))


def merge(
    r: RoundContext, run: Any, outcome: RetrainOutcome, cluster_file: str | None, cluster_overrides: list[str]
) -> None:
    """Merge the new champion into its base model when `retrain.merge_dir` is set and the round promoted one."""
    target = r.plan.sweep.retrain.merge_dir
    if not target or outcome.decision not in (PROMOTED, FIRST_CHAMPION):
        return
    ref = f"{outcome.registered_model}@{CHAMPION}"
    merged = run_merge(ref, target, cluster_file, r.uri, cluster_overrides, True, True)
    outcome.merged = (merged.registration, merged.report)
    run.merged_to(target)


def _round(o: RetrainOutcome) -> Round:
    return Round(
        o.retrain_id,
        o.drop,
        o.snapshots,
        o.champion_before,
        o.challenger or "",
        o.decision,
        o.champion_after or "",
        dict(o.scores or {}),
        o.run_id,
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        dict(o.guards or {}),
    )


def _score(
    mlc: Any,
    uri: str,
    model: str,
    versions: dict[str, str],
    workdir: Path,
    sweep: SweepConfig,
    cluster: ClusterProfile,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Download each version's adapter to shared storage and score them all in one Ray task (on a GPU when the
    trials use GPUs) with the same code, on the frozen set and each guard set: ({name: frozen eval_loss},
    {guard set path: {name: eval_loss}})."""
    import ray

    dirs = {}
    for name, version in versions.items():
        adapter = resolve_ref(mlc, f"{model}/{version}", uri)
        local, _ = download_adapter(uri, adapter.model_uri, adapter.ref, workdir / name)
        dirs[name] = str(local)
    tr = cluster.trial
    task = ray.remote(num_cpus=tr.cpus_per_worker, num_gpus=tr.gpus_per_worker if tr.use_gpu else 0)(score_frozen)
    by_set = ray.get(task.remote(sweep, dirs, tr.use_gpu))
    for set_name, scores in by_set.items():
        for name, score in scores.items():
            log.info(
                "retrain: %s (version %s) %s eval_loss %.4f over %d response tokens of %d rows",
                name,
                versions[name],
                "frozen" if set_name == "frozen" else f"guard set {set_name}",
                score.eval_loss,
                score.tokens,
                score.examples,
            )
    losses = {set_name: {n: s.eval_loss for n, s in scores.items()} for set_name, scores in by_set.items()}
    return losses.pop("frozen"), losses


@dataclass(frozen=True)
class Rollback:
    demoted: str  # the version that held @champion
    restored: str  # the version that holds it now
    run_id: str  # the MLflow run recording the rollback
    uri: str


def run_rollback(
    name: str, cluster_file: str | None, tracking: str | None, overrides: list[str], reason: str
) -> Rollback:
    """`adaptune rollback NAME`: `champion` back to `previous-champion`, recorded as a run in MLflow. Takes the
    model's retrain lock, so it cannot interleave with a retrain's promotion."""
    if not re.fullmatch(NAME_PATTERN, name):  # it names a directory under storage_path
        raise ConfigError(
            Problem(
                "command line",
                "NAME",
                f"{name!r} is not a registered model name adaptune makes",
                "Use letters, digits, '.', '_' or '-' (at most 64 characters)",
            )
        )
    access = registry_access("rollback", cluster_file, tracking, overrides)
    home = resolve_path(access.cluster.storage_path).resolve() / RETRAIN_DIR / name
    rollback_id = time.strftime("rollback-%Y%m%d-%H%M%S")
    owner = {"retrain_id": rollback_id, "registered_model": name}
    with RetrainLock(home / RETRAIN_LOCK, 15 * 60, owner):
        demoted, restored = rollback(access.mlc, name, access.uri)
        run_id = record_rollback(access.mlc, name, demoted, restored, reason, rollback_id)
    return Rollback(demoted, restored, run_id, access.uri)
