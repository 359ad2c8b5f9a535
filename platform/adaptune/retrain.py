"""Scheduled retraining, top to bottom: take the lock of the registered model, skip data already trained on,
snapshot the new drop, assemble the training set, sweep warm-started from the champion, score champion and
challenger on the frozen set in one process, promote only by the margin, record all of it in MLflow.

Everything a retrain keeps lives under `<storage_path>/retrain/<registered model>/`:
  lock                      who is retraining now (renewed while it runs; a crashed run's lock expires)
  history.jsonl             one line per retrain that trained: its drop, snapshots, scores and decision
  snapshots/<digest>/       a copy of each drop, as it was when trained on
  training/<key>/           the training set of a retrain (copies of its snapshots, one folder each)
  <retrain id>/             the adapters scored on the frozen set
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adaptune.config import NAME_PATTERN, ClusterProfile, SweepConfig, _problems_from_validation, resolve_path
from adaptune.data import data_digest, find_data_files, load_records
from adaptune.errors import ConfigError, DataError, Problem

log = logging.getLogger("adaptune")

RETRAIN_DIR = "retrain"
HISTORY = "history.jsonl"
LOCK = "lock"
# Decisions
FIRST_CHAMPION, PROMOTED, KEPT_CHAMPION, NO_OP = "first-champion", "promoted", "kept-champion", "no-op"
FAILED = "failed"  # the round registered a challenger, then failed before deciding


# --------------------------------------------------------------------------------------------------
# The lock: one retrain per registered model at a time
# --------------------------------------------------------------------------------------------------


class RetrainBusy(RuntimeError):
    """Another retrain of the same registered model holds the lock."""


class RetrainLock:
    """An exclusive lock file (created with O_EXCL, so exactly one process gets it, also on a shared
    filesystem) that its holder renews every `ttl_s / 3` seconds. A lock not renewed for `ttl_s` belongs to a
    retrain that died and is taken over."""

    def __init__(self, path: Path, ttl_s: float, owner: dict[str, Any]):
        self.path, self.ttl_s = path, ttl_s
        self.owner = {**owner, "lock_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:  # being written this instant: treat as held and fresh
            return {"renewed_at": time.time()}

    def acquire(self) -> None:
        """Take the lock, or raise RetrainBusy naming the retrain that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            now = time.time()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self.holder()
                if held is None:
                    continue  # released meanwhile
                age = now - float(held.get("renewed_at", 0))
                if age < self.ttl_s:
                    raise RetrainBusy(self._busy_message(held, age)) from None
                log.warning(
                    "retrain: taking over the lock of %s (not renewed for %.0f s; its retrain died)",
                    held.get("retrain_id", "?"),
                    age,
                )
                try:  # one process wins the rename; the others see the fresh lock next round
                    os.rename(self.path, self.path.with_name(f"{self.path.name}.expired-{uuid.uuid4().hex[:8]}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**self.owner, "started_at": now, "renewed_at": now}, f)
            self._renewer = threading.Thread(target=self._renew, name="retrain-lock", daemon=True)
            self._renewer.start()
            return
        raise RetrainBusy(f"could not take the retrain lock {self.path}; another retrain is starting")

    def _busy_message(self, held: dict[str, Any], age: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("started_at", 0))))
        return (
            f"another retrain of {self.owner['registered_model']} is running: {held.get('retrain_id', '?')} "
            f"(pid {held.get('pid', '?')} on {held.get('host', '?')}, started {started}, lock renewed {age:.0f} s "
            f"ago: {self.path}). Wait for it to end; if it crashed, its lock expires {self.ttl_s / 60:g} min after "
            "its last renewal"
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            held = self.holder()
            if not held or held.get("lock_id") != self.owner["lock_id"]:
                log.error("retrain: lost the lock %s to another retrain", self.path)
                return
            tmp = self.path.with_name(f".{self.path.name}.{self.owner['lock_id']}")
            tmp.write_text(json.dumps({**held, "renewed_at": time.time()}), encoding="utf-8")
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = self.holder()
        if held and held.get("lock_id") == self.owner["lock_id"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RetrainLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------------------------------
# Data: drops, snapshots, training sets, history
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One drop of company data as trained on: its content digest, rows and where the copy is."""

    digest: str
    rows: int
    source: str  # where the drop was read from
    path: str  # the copy under snapshots/


def newest_drop(root: str) -> str:
    """The newest dated drop directory (`YYYY-MM-DD`, or any name that sorts by date) under `root`."""
    base = resolve_path(root)
    drops = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []
    if not drops:
        raise DataError(
            Problem(root, "--newest-drop", "no drop directories here", "Put each drop in a dated folder (2026-11-22/)")
        )
    return str(drops[-1])


def read_drop(path: str) -> tuple[list[Path], str]:
    """The drop's data files and their content digest."""
    files = find_data_files(path, "--data")
    return files, data_digest(files)


def snapshot_drop(path: str, files: list[Path], digest: str, cfg: SweepConfig, store: Path) -> Snapshot:
    """Check every row of the drop (`read_drop`) and keep a copy of it under `store/<digest>/` (once per
    digest)."""
    records, problems = load_records(files, cfg.data)
    if problems:
        raise DataError(problems)
    target = store / digest[:16]
    if not target.is_dir():
        store.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=store))
        for i, f in enumerate(files):  # numbered: the copy reads back in the drop's order
            shutil.copy2(f, tmp / f"{i:04d}-{f.name}")
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # the same drop was copied meanwhile; identical
    return Snapshot(digest=digest, rows=len(records), source=str(path), path=str(target))


def training_set(snapshots: list[Snapshot], root: Path) -> Path:
    """A directory holding the snapshots' files, one numbered folder per snapshot, for `data.path`."""
    key = hashlib.sha256("\n".join(s.digest for s in snapshots).encode()).hexdigest()[:16]
    target = root / key
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        for i, snap in enumerate(snapshots):
            folder = tmp / f"{i:03d}-{snap.digest[:12]}"
            shutil.copytree(snap.path, folder)
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class Round:
    """One line of history.jsonl: a retrain that trained."""

    retrain_id: str
    drop: Snapshot
    snapshots: list[Snapshot]
    champion_before: str | None
    challenger: str
    decision: str
    champion_after: str
    scores: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    finished_at: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Round:
        return cls(
            **{
                **d,
                "drop": Snapshot(**d["drop"]),
                "snapshots": [Snapshot(**s) for s in d["snapshots"]],
            }
        )


def read_history(path: Path) -> list[Round]:
    if not path.is_file():
        return []
    return [Round.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def append_history(path: Path, entry: Round) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(entry)) + "\n")


def champion_snapshots(history: list[Round], champion: str | None) -> list[Snapshot]:
    """The data the champion was trained on, when a retrain made it (else nothing is known to combine with)."""
    for entry in reversed(history):
        if champion is not None and entry.challenger == champion:
            return entry.snapshots
    return []


# --------------------------------------------------------------------------------------------------
# The sweep: warm-started from the champion, with the retrain budget
# --------------------------------------------------------------------------------------------------


def champion_point(params: dict[str, str], space: dict[str, Any]) -> dict[str, Any]:
    """The champion's values of the searched keys (from its trial run's params), as a starting point; a value
    the space cannot take (the space changed since) is left out."""
    import yaml

    from adaptune.search_space import ALPHA_PER_RANK

    point: dict[str, Any] = {}
    for key, spec in space.items():
        ((kind, args),) = spec.items()
        if key == "lora.alpha" and kind == ALPHA_PER_RANK:
            if isinstance(args, int | float) or "lora.alpha" not in params or "lora.r" not in params:
                continue
            ratio = float(params["lora.alpha"]) / float(params["lora.r"])
            key, value = "lora.alpha_per_rank", ratio
            ((kind, args),) = args.items()
            if kind in ("choice", "grid"):  # the listed factor the ratio is, as listed (an int stays an int)
                value = next((a for a in args if abs(float(a) - ratio) <= 1e-6), None)
        elif key in params:
            value = yaml.safe_load(params[key]) if params[key] != "None" else None
        else:
            continue
        if kind in ("choice", "grid"):
            if value not in args:
                continue
        elif not (isinstance(value, int | float) and args[0] <= value <= args[1]):
            continue
        point[key] = value
    return point


def retrain_sweep(sweep: SweepConfig, training_dir: Path, point: dict[str, Any], source: str) -> SweepConfig:
    """The sweep a retrain runs: its training set, the retrain budget, the champion's values first."""
    from pydantic import ValidationError

    data = sweep.model_dump(mode="json")
    data["data"]["path"] = str(training_dir)
    r = sweep.retrain
    if r.num_samples is not None:
        data["search"]["num_samples"] = r.num_samples
    if r.max_steps is not None:
        data["train"]["max_steps"] = r.max_steps
        data["train"]["eval_every"] = min(sweep.train.eval_every, r.max_steps)
    if point:
        rest = [p for p in data["search"]["points_to_evaluate"] if p != point]
        data["search"]["points_to_evaluate"] = [point, *rest]
    data["mlflow"]["register_winner"] = True
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems_from_validation(e, SweepConfig, source, {})) from None


# --------------------------------------------------------------------------------------------------
# The retrain
# --------------------------------------------------------------------------------------------------


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
    scores: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    sweep: Any = None  # SweepOutcome
    merged: Any = None  # (registration, report) of the merge, when one ran
    ui: str = ""
    exit_code: int = 0


def decide(champion: float | None, challenger: float, margin: float) -> tuple[str, str]:
    """Promote only a challenger whose frozen-set loss is lower than the champion's by at least `margin`."""
    if champion is None:
        return FIRST_CHAMPION, f"no champion yet: the challenger (frozen eval_loss {challenger:.4f}) becomes it"
    gain = champion - challenger
    if gain >= margin:
        return PROMOTED, (
            f"frozen eval_loss {challenger:.4f} beats the champion's {champion:.4f} by {gain:.4f} >= margin {margin:g}"
        )
    return KEPT_CHAMPION, (
        f"frozen eval_loss {challenger:.4f} against the champion's {champion:.4f}: "
        + (f"better by only {gain:.4f}" if gain > 0 else f"worse by {-gain:.4f}")
        + f", the margin is {margin:g}"
    )


def run_retrain(
    sweep_file: str,
    cluster_file: str | None,
    data_path: str,
    overrides: list[str],
    newest: bool = False,
) -> RetrainOutcome:
    """`adaptune retrain`: see the module docstring. Raises RetrainBusy when another retrain holds the lock."""
    from adaptune.config import read_configs
    from adaptune.driver import checked_plan

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
    sweep, cluster = plan.sweep, plan.cluster
    model = sweep.registered_model_name
    home = resolve_path(cluster.storage_path).resolve() / RETRAIN_DIR / model
    drop_path = newest_drop(data_path) if newest else data_path
    find_data_files(drop_path, "--data")  # a drop that is not there is refused before the lock is taken
    retrain_id = time.strftime("retrain-%Y%m%d-%H%M%S")
    owner = {"retrain_id": retrain_id, "registered_model": model, "sweep_file": sweep_file, "data": drop_path}
    with RetrainLock(home / LOCK, sweep.retrain.lock_ttl_minutes * 60, owner):
        return _retrain_locked(plan, retrain_id, home, drop_path, cluster_file, overrides)


def _retrain_locked(
    plan: Any, retrain_id: str, home: Path, drop_path: str, cluster_file: str | None, overrides: list[str]
) -> RetrainOutcome:
    from adaptune import registry
    from adaptune.driver import checked_plan, run_merge, sweep_plan
    from adaptune.tracking import (
        TAG_KIND,
        client,
        dataset_input,
        embedded_artifacts,
        experiment_id,
        tracking_uri,
        ui_command,
    )
    from adaptune.validate import check_frozen

    sweep, cluster = plan.sweep, plan.cluster
    model, r = sweep.registered_model_name, sweep.retrain
    history = read_history(home / HISTORY)

    # 1. The drop: already trained on?
    files, digest = read_drop(drop_path)
    seen = next((h for h in history if digest in {s.digest for s in h.snapshots}), None)
    if seen is not None:
        drop = next(s for s in seen.snapshots if s.digest == digest)
        return RetrainOutcome(
            retrain_id,
            model,
            NO_OP,
            f"{drop_path} (digest {digest[:12]}) was already trained on by {seen.retrain_id}; nothing to do",
            drop,
        )
    overlap = check_frozen(sweep, plan.sweep_file, training=files)  # before anything reaches MLflow
    if overlap:
        raise DataError(overlap)
    drop = snapshot_drop(drop_path, files, digest, sweep, home / "snapshots")

    # 2. The training set
    uri = tracking_uri(cluster)
    mlc = client(uri)
    before = registry.aliases(mlc, model).get(registry.CHAMPION)
    kept = champion_snapshots(history, before) if r.data_mode == "combine" else []
    if r.data_mode == "combine" and before is not None and not kept:
        log.info("retrain: champion version %s was not made by a retrain; training on the new drop alone", before)
    snapshots = [*[s for s in kept if s.digest != drop.digest], drop]
    training = training_set(snapshots, home / "training")

    # 3. The sweep, warm-started from the champion, checked like any run (the frozen set against its training
    # set included), then the retrain run it is nested under
    point: dict[str, Any] = {}
    if before is not None:
        champion_run = mlc.get_model_version(model, before).run_id
        point = champion_point(mlc.get_run(champion_run).data.params, sweep.search.space)
        log.info("retrain: starting from champion version %s's values %s", before, point or "(none searched)")
    retrain = retrain_sweep(sweep, training, point, plan.sweep_file)
    sub_plan = checked_plan(retrain, cluster, plan.sweep_file, plan.cluster_file)
    exp = experiment_id(mlc, sweep.experiment_name, embedded_artifacts(cluster, uri))
    run = mlc.create_run(
        exp,
        run_name=retrain_id,
        tags={TAG_KIND: "retrain", "adaptune.registered_model": model, "adaptune.retrain_id": retrain_id},
    )
    run_id = run.info.run_id
    frozen_digest = data_digest(find_data_files(r.frozen_eval_path or "", "retrain.frozen_eval_path"))
    outcome = RetrainOutcome(retrain_id, model, "", "", drop, snapshots, before, run_id=run_id, ui=ui_command(uri))
    status = "FAILED"
    try:
        mlc.log_batch(run_id, params=_params(sweep, drop, drop_path, before, training, frozen_digest))
        mlc.log_inputs(
            run_id,
            datasets=[
                *(dataset_input(s.path, f"drop-{s.digest[:12]}", s.digest, "training", s.rows) for s in snapshots),
                dataset_input(r.frozen_eval_path, "frozen-eval", frozen_digest, "evaluation"),
            ],
        )
        _, swept = sweep_plan(sub_plan, parent_tags={"mlflow.parentRunId": run_id, "adaptune.retrain_run_id": run_id})
        outcome.sweep = swept
        if swept.interrupted or swept.registration is None:
            outcome.decision, outcome.exit_code = ("interrupted", 130) if swept.interrupted else ("failed", 1)
            outcome.message = "the sweep " + ("was stopped" if swept.interrupted else "trained no adapter")
            status = "KILLED" if swept.interrupted else "FAILED"
            mlc.set_tag(run_id, registry.TAG_DECISION, outcome.decision)
            return outcome
        challenger = swept.registration.version
        outcome.challenger = challenger
        try:
            _score_and_decide(mlc, uri, outcome, plan, home, swept.parent_run_id)
        except BaseException as e:
            # The challenger is registered: the registry must not show it as a version nobody decided on
            why = f"retrain {retrain_id} failed before deciding: {type(e).__name__}: {e}"
            registry.mark_failed(mlc, model, challenger, why, run_id)
            mlc.set_tag(run_id, "adaptune.decision", FAILED)
            outcome.decision, outcome.message = FAILED, why
            append_history(home / HISTORY, _round(outcome))
            raise

        # 6. Optionally merge the new champion
        if r.merge_dir and outcome.decision in (PROMOTED, FIRST_CHAMPION):
            cluster_overrides = [o for o in overrides if o.startswith("cluster.")]
            _, report, registration, _ = run_merge(
                f"{model}@{registry.CHAMPION}", r.merge_dir, cluster_file, uri, cluster_overrides, True, True
            )
            outcome.merged = (registration, report)
            mlc.set_tag(run_id, "adaptune.merged_to", r.merge_dir)
        status = "FINISHED"
        return outcome
    finally:
        mlc.set_terminated(run_id, status)


def _score_and_decide(mlc: Any, uri: str, outcome: RetrainOutcome, plan: Any, home: Path, sweep_run_id: str) -> None:
    """Score champion and challenger on the frozen set in one process by the same code, promote the challenger
    only by the margin, and record the decision on its version, on the retrain run and in the history."""
    from adaptune import registry
    from adaptune.driver import connect_ray

    sweep, cluster = plan.sweep, plan.cluster
    model, challenger, before, run_id = (
        outcome.registered_model,
        outcome.challenger,
        outcome.champion_before,
        outcome.run_id,
    )
    connect_ray(cluster)
    named = {"challenger": challenger, **({"champion": before} if before not in (None, challenger) else {})}
    scores = _score(mlc, uri, model, named, home / outcome.retrain_id, sweep, cluster)
    outcome.scores = scores
    champion_score = scores.get("champion")
    decision, why = decide(champion_score, scores["challenger"], sweep.retrain.margin)
    if before == challenger:  # a resumed sweep registered nothing new
        decision, why = KEPT_CHAMPION, "the challenger is the champion already"
    if decision == PROMOTED:
        registry.promote(mlc, model, challenger)
    after = registry.aliases(mlc, model).get(registry.CHAMPION)
    outcome.decision, outcome.message, outcome.champion_after = decision, why, after
    for key, value in {
        registry.TAG_DECISION: decision,
        registry.TAG_DECISION_REASON: why,
        registry.TAG_FROZEN_LOSS: f"{scores['challenger']:.6g}",
        registry.TAG_RETRAIN_RUN: run_id,
    }.items():
        mlc.set_model_version_tag(model, challenger, key, value)
    for name, value in scores.items():
        mlc.log_metric(run_id, f"{name}_frozen_eval_loss", value)
    if champion_score is not None:
        mlc.log_metric(run_id, "improvement", champion_score - scores["challenger"])
    for key, value in {
        "adaptune.decision": decision,
        "adaptune.decision_reason": why,
        "adaptune.challenger_version": challenger,
        "adaptune.champion_after": after or "",
        "adaptune.sweep_run_id": sweep_run_id,
    }.items():
        mlc.set_tag(run_id, key, value)
    append_history(home / HISTORY, _round(outcome))


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
    )


def _params(
    sweep: SweepConfig, drop: Snapshot, drop_path: str, before: str | None, training: Path, frozen_digest: str
) -> list[Any]:
    from mlflow.entities import Param

    r = sweep.retrain
    values = {
        "registered_model": sweep.registered_model_name,
        "drop.path": drop_path,
        "drop.digest": drop.digest,
        "drop.rows": drop.rows,
        "data_mode": r.data_mode,
        "training_set": str(training),
        "frozen_eval_path": r.frozen_eval_path,
        "frozen_eval.digest": frozen_digest,
        "margin": r.margin,
        "champion_before": before or "none",
        "num_samples": r.num_samples or sweep.search.num_samples,
        "max_steps": r.max_steps or sweep.train.max_steps,
    }
    return [Param(k, str(v)) for k, v in values.items()]


def _score(
    mlc: Any,
    uri: str,
    model: str,
    versions: dict[str, str],
    workdir: Path,
    sweep: SweepConfig,
    cluster: ClusterProfile,
) -> dict[str, float]:
    """Download each version's adapter to shared storage and score them all in one Ray task (on a GPU when the
    trials use GPUs) with the same code."""
    import ray

    from adaptune.registry import download_adapter, resolve_ref
    from adaptune.scoring import score_adapters

    dirs = {}
    for name, version in versions.items():
        adapter, _ = download_adapter(resolve_ref(mlc, f"{model}/{version}", uri), workdir / name)
        dirs[name] = str(adapter)
    tr = cluster.trial
    task = ray.remote(num_cpus=tr.cpus_per_worker, num_gpus=tr.gpus_per_worker if tr.use_gpu else 0)(score_adapters)
    scores = ray.get(task.remote(sweep.model_dump(mode="json"), dirs, tr.use_gpu))
    for name, score in scores.items():
        log.info(
            "retrain: %s (version %s) frozen eval_loss %.4f over %d response tokens of %d rows",
            name,
            versions[name],
            score.eval_loss,
            score.tokens,
            score.examples,
        )
    return {name: score.eval_loss for name, score in scores.items()}


def run_rollback(name: str, cluster_file: str | None, tracking: str | None, overrides: list[str], reason: str):
    """`adaptune rollback NAME`: `champion` back to `previous-champion`, recorded as a run in MLflow. Takes the
    model's retrain lock, so it cannot interleave with a retrain's promotion."""
    from adaptune import registry
    from adaptune.driver import registry_access
    from adaptune.tracking import TAG_KIND, experiment_id

    if not re.fullmatch(NAME_PATTERN, name):  # it names a directory under storage_path
        raise ConfigError(
            Problem(
                "command line",
                "NAME",
                f"{name!r} is not a registered model name adaptune makes",
                "Use letters, digits, '.', '_' or '-' (at most 64 characters)",
            )
        )
    cluster, uri, mlc = registry_access("rollback", cluster_file, tracking, overrides)
    home = resolve_path(cluster.storage_path).resolve() / RETRAIN_DIR / name
    rollback_id = time.strftime("rollback-%Y%m%d-%H%M%S")
    owner = {"retrain_id": rollback_id, "registered_model": name}
    with RetrainLock(home / LOCK, 15 * 60, owner):
        demoted, restored = registry.rollback(mlc, name, uri)
        source = mlc.get_run(mlc.get_model_version(name, restored).run_id)
        exp = experiment_id(mlc, mlc.get_experiment(source.info.experiment_id).name, None)
        run = mlc.create_run(
            exp,
            run_name=rollback_id,
            tags={
                TAG_KIND: "rollback",
                "adaptune.registered_model": name,
                "adaptune.rolled_back_version": demoted,
                "adaptune.restored_version": restored,
                "adaptune.reason": reason,
            },
        )
        mlc.set_terminated(run.info.run_id, "FINISHED")
    return demoted, restored, run.info.run_id, uri
