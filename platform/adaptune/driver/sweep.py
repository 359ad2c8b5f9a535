"""The Ray Tune side of a sweep: search algorithm and scheduler from the search config, the Tuner whose trials
each own a TorchTrainer, live progress lines, and the results read back as one row per trial."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from adaptune.config import ClusterProfile, SearchConfig, SweepConfig
from adaptune.console import console
from adaptune.driver.trial import checkpoints_on_storage, launch_training, start_trial_slots
from adaptune.names import (
    ADAPTER_DIR,
    CONVERGED,
    DIVERGED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    RESULTS_CSV,
    RESULTS_JSON,
    SKIPPED,
    STOP_REQUEST,
    STOPPED_EARLY,
    TEST_METRIC,
    TRAINED,
    TRAINER_STATE,
    TRIALS_DIR,
)
from adaptune.preflight.search_space import build_param_space, expected_trials, resolve_alpha
from adaptune.records import PARETO, PreparedRun, SweepOutcome, generated_metrics
from adaptune.tracking.registry import Registration

log = logging.getLogger("adaptune")

TRIAL_DRIVER_MEMORY = 256 * 2**20


def concurrency(search: SearchConfig, cluster: ClusterProfile, resources: dict[str, float]) -> int:
    """Trials at once: the configured number, else as many as the cluster holds. The profile's capacity counts
    where it is given (an autoscaling cluster may start with no workers at all); otherwise what Ray reports."""
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    tr, cap = cluster.trial, cluster.capacity
    cpus = cap.cpus if cap.cpus is not None else resources.get("CPU", 0)
    fits = cpus // (tr.num_workers * tr.cpus_per_worker)
    if tr.use_gpu:
        gpus = cap.gpus if cap.gpus is not None else resources.get("GPU", 0)
        fits = min(fits, gpus // (tr.num_workers * tr.gpus_per_worker))
    return max(1, int(fits))


def build_search_alg(search: SearchConfig, max_concurrent: int) -> Any:
    """Random/grid sampling (Tune's BasicVariantGenerator) or Optuna TPE, seeded, with starting points, limited
    to `max_concurrent` trials at once (Tune ignores TuneConfig.max_concurrent_trials for a generator given
    explicitly, so the limit is set here for both)."""
    points = [dict(p) for p in search.points_to_evaluate] or None
    if search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points, seed=search.seed), max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points, random_state=search.seed, max_concurrent=max_concurrent)


def build_scheduler(search: SearchConfig, train: Any) -> Any:
    """ASHA with its rungs at evaluation rounds, measured in training steps (the `step` metric, which a trial
    resumed after the driver died carries on, unlike Tune's per-attempt training_iteration); or no scheduler."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if search.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="step",
        max_t=train.max_steps,
        grace_period=min(search.asha.grace_period * train.eval_every, train.max_steps),
        reduction_factor=search.asha.reduction_factor,
    )


def _progress_callback(
    metric: str, mode: str, max_steps: int, total: int, trials_path: Path, slots: str | None = None
) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """The sweep as it goes: on a terminal, a live line (trials by state, best so far, elapsed and an
        estimate of what is left) and a line per ended trial; elsewhere a plain line per event."""

        def __init__(self) -> None:
            self.best: tuple[float, str] | None = None
            self.slots = slots  # the name of the sweep's TrialSlots actor, or None
            self.holder: Any = None  # its handle, which keeps it alive (not saved with Tune's state)
            self.display: Any = None  # the live line's update function, while fit() runs
            self._task: Any = None

        def setup(self, **info: Any) -> None:
            self._task = console.task("sweep", total=total)
            self.display = self._task.__enter__()

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            self._close()

        def _close(self) -> None:
            if self._task is not None:
                task, self._task, self.display = self._task, None, None
                task.__exit__(None, None, None)

        def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks with the sweep's state
            return {**self.__dict__, "display": None, "_task": None, "holder": None}  # no live handle in Tune's state

        def __del__(self) -> None:  # fit() interrupted before its end: the display goes away with the callback
            self._close()

        def _line(
            self, trials: list[Any], event: str, ended: Any = None, errored: bool = False, reporting: Any = None
        ) -> None:
            counts = {
                "running": 0,
                "starting": 0,
                "pending": 0,
                FINISHED: 0,
                CONVERGED: 0,
                STOPPED_EARLY: 0,
                "failed/skipped": 0,
            }
            for t in trials:
                # Tune updates a trial's status after these callbacks run: count the one ending as ended.
                status = ("ERROR" if errored else "TERMINATED") if t is ended else t.status
                if status == "RUNNING":  # started by Tune: training once it has reported (a trial on deck waits)
                    trains = t is reporting or bool(t.last_result and "step" in t.last_result)
                    counts["running" if trains else "starting"] += 1  # (Tune records a result after this)
                elif status == "PENDING":
                    counts["pending"] += 1
                elif status == "ERROR":
                    counts["failed/skipped"] += 1
                elif status == "TERMINATED":
                    last = t.last_result or {}
                    done = last.get("step", 0) >= max_steps
                    counts[CONVERGED if last.get("converged") else FINISHED if done else STOPPED_EARLY] += 1
            best = f"; best {metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
            # `converged` only once a trial has (train.early_stopping is off by default); `starting` while any is
            shown = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k not in (CONVERGED, "starting"))
            if self.display is not None and console.live():
                ended_count = sum(counts.values()) - counts["running"] - counts["starting"] - counts["pending"]
                self.display(description=f"sweep: {shown}{best}", completed=ended_count, total=max(total, len(trials)))
                if ended is None:
                    return  # on a terminal only ends get a line of their own
            log.info("sweep: %s | %s%s", event, shown, best)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(metric)
            if value is not None and math.isfinite(value):
                better = self.best is None or (value < self.best[0] if mode == "min" else value > self.best[0])
                if better:
                    self.best = (value, trial.trial_id)
            self._line(trials, f"{trial.trial_id} step {result.get('step')} {metric} {value:.4f}", reporting=trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._free(trial)
            self._line(trials, f"{trial.trial_id} ended", ended=trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._free(trial)
            self._line(trials, f"{trial.trial_id} {trial_error(trial)}", ended=trial, errored=True)

        def _free(self, trial: Any) -> None:
            """Its workers stopped and its worker slot back, however it ended: Tune ends a trial ASHA stopped
            without ending its Ray Train run, which would train on to max_steps holding its workers."""
            trial_dir = trials_path / trial.trial_id
            if trial_dir.is_dir():  # (a skipped trial has none)
                (trial_dir / STOP_REQUEST).touch()
            if self.slots:
                import ray

                ray.get_actor(self.slots).release.remote(trial.trial_id)

    return Progress()


def trial_error(trial: Any) -> str:
    """A failed or skipped trial in one line: the cause (the last line of its error) and where the rest is."""
    path = Path(trial.error_file) if getattr(trial, "error_file", None) else None
    text = path.read_text(encoding="utf-8", errors="replace") if path is not None and path.is_file() else ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    cause = lines[-1] if lines else "no error recorded"
    if "TrialSkipped" in text:
        return f"skipped: {cause.split('TrialSkipped: ')[-1]}"
    where = f"; the traceback is in {path}" + (
        f" and the workers' output in {console.log_path}" if console.log_path else ""
    )
    return f"failed: {cause}{where if path else ''}"


def build_tuner(
    sweep: SweepConfig,
    cluster: ClusterProfile,
    prepared: PreparedRun,
    sweep_root: Path,
    sweep_id: str,
    resources: dict[str, float],
    restore: bool = False,
    callbacks: list[Any] | None = None,
) -> Any:
    """A Tuner whose trainable is `launch_training`: the trial itself reserves no resources (its TorchTrainer's
    workers do), so a full cluster queues trials instead of deadlocking."""
    from ray import tune

    s = sweep.search
    at_once = concurrency(s, cluster, resources)
    # trials on deck wait for a slot; the actor lives as long as its handle here, the sweep's driver
    holder, slots = start_trial_slots(at_once, sweep_id) if s.trials_on_deck else (None, None)
    trials_path = sweep_root / sweep_id / TRIALS_DIR
    trainable = tune.with_resources(
        tune.with_parameters(
            launch_training,
            sweep=sweep,
            cluster=cluster,
            prepared=prepared,
            trials_path=str(trials_path),
            slots=slots,
        ),
        # The trial process only waits on its TorchTrainer: no CPU, so a cluster holding exactly N trials' workers
        # runs N trials. Ray wants some resource per bundle: a little of its logical memory.
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    path = str(sweep_root / sweep_id)
    total = expected_trials(s)
    progress = _progress_callback(s.metric, s.mode, sweep.train.max_steps, total, trials_path, slots)
    progress.holder = holder  # keeps the slots actor alive while the sweep runs (Ray ends an actor with no handle)
    callbacks = [progress, *(callbacks or [])]
    if restore:
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
        # Tune restores the callbacks pickled with the first run's state; this run's (with live connections) go
        # in their place. Ray has no public way to do so.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    return tune.Tuner(
        trainable,
        param_space=build_param_space(s.space, grid=s.algorithm == "grid"),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=build_search_alg(s, at_once + s.trials_on_deck),
            scheduler=build_scheduler(s, sweep.train),
            num_samples=s.num_samples or (1 if s.algorithm == "grid" else 8),
        ),
        run_config=tune.RunConfig(
            name=sweep_id,
            storage_path=str(sweep_root),
            failure_config=tune.FailureConfig(max_failures=0),  # worker losses are retried inside the trial
            callbacks=callbacks,
            verbose=0,
        ),
    )


# --------------------------------------------------------------------------------------------------
# Results: one row per trial
# --------------------------------------------------------------------------------------------------


def unfinished_trials(grid: Any) -> set[str]:
    """Ids of the trials Tune had not ended (still pending or running) when `fit()` returned: the sweep was
    interrupted. Read from the trials' Tune status, not from the `done` flag of their last result: a trial that
    ended by returning and was then restored by `--resume` comes back without that flag."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(grid.experiment_path).trials
    return {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")}


def _status(result: Any, max_steps: int, ended: bool) -> tuple[str, str]:
    """(status, reason) of one Tune result; `ended`: Tune ended the trial (it was not cut off by an interrupt)."""
    if result.error is not None:
        text = str(result.error)
        reason = next(
            (line for line in reversed(text.strip().splitlines()) if line.strip()), type(result.error).__name__
        )
        kind = SKIPPED if "TrialSkipped" in text or "TrialSkipped" in repr(result.error) else FAILED
        return kind, reason.split("TrialSkipped: ")[-1]
    last = result.metrics or {}
    if last.get("diverged"):
        return DIVERGED, "loss became NaN/inf or exploded; stopped at once"
    if last.get("converged"):
        return CONVERGED, ""  # the reason is in its checkpoint: collect_results reads it
    if (last.get("step") or 0) < max_steps:
        return (STOPPED_EARLY, "") if ended else (INTERRUPTED, "")
    return FINISHED, ""


def collect_results(
    grid: Any, sweep: SweepConfig, trials_dir: Path, unfinished: set[str], cluster: ClusterProfile | None = None
) -> list[dict[str, Any]]:
    """One row per trial: id, sampled values, best metric (and the generated answers' scores there), steps run,
    wall time, status, adapter path, what it cost (`COST_COLUMNS`, with `cluster`'s workers per trial) and
    whether it is in the Pareto set. `unfinished`: the trials an interrupt cut off (`unfinished_trials`).

    The adapter is the checkpoint on storage (`trials_dir/<trial id>/`) saved at the trial's best step; the
    path Tune was told is the fallback."""
    s = sweep.search
    scores = generated_metrics(sweep)
    rows = []
    for result in grid:
        last = result.metrics or {}
        trial_id = _trial_id(result)
        status, reason = _status(result, sweep.train.max_steps, ended=trial_id not in unfinished)
        df = result.metrics_dataframe
        reported = df.to_dict("records") if df is not None else []
        evaluations = merge_histories(reported, checkpointed_history(trials_dir / trial_id))
        best_value, adapter, best = None, None, {}
        finite = [e for e in evaluations if _finite(e.get(s.metric))]
        if finite and status not in (DIVERGED, SKIPPED):
            best = (min if s.mode == "min" else max)(finite, key=lambda e: e[s.metric])
            best_value = float(best[s.metric])
            saved = checkpoints_on_storage(trials_dir / trial_id).get(int(best["step"]))
            if saved is None and isinstance(best.get("checkpoint_path"), str):
                saved = Path(best["checkpoint_path"])
            if saved is not None and (saved / ADAPTER_DIR).is_dir():
                adapter = str(saved / ADAPTER_DIR)
            else:
                on_storage = sorted(checkpoints_on_storage(trials_dir / trial_id))
                # Known gap: Ray keeps the best checkpoint by score and the latest; evaluations a stopped trial's
                # workers ran after ASHA stopped it (not part of its record) can displace the recorded best.
                reason = (
                    f"no adapter: the checkpoint of its best recorded evaluation (step {best['step']}) is not on "
                    f"storage (checkpoints there: steps {', '.join(map(str, on_storage)) or 'none'})"
                )
                log.warning("trial %s: %s", trial_id, reason)
            if status == CONVERGED:
                reason = _converged_reason(trials_dir / trial_id) or ""
        config = resolve_alpha(dict(result.config or {}), sweep)
        wall = float(last.get("time_total_s", 0.0))
        trial = cluster.trial if cluster is not None else None

        cost = {
            "worker_s": round(wall * trial.num_workers, 1) if trial else None,
            "gpu_s": round(wall * trial.num_workers * trial.gpus_per_worker, 1) if trial and trial.use_gpu else None,
            "tokens_trained": _int(_most(evaluations, "tokens_trained")),
            "peak_memory_mb": _most(evaluations, "peak_memory_mb"),
            "optimizer_state_mb": _most(evaluations, "optimizer_state_mb"),
            "adapter_mb": round(_size_mb(Path(adapter)), 3) if adapter else None,
            "trainable_params": _int(_most(evaluations, "trainable_params")),
            "pad_share": evaluations[-1].get("pad_share") if evaluations else None,  # over the whole trial
        }
        rows.append(
            {
                "trial": trial_id,
                **{k: config[k] for k in sorted(config)},
                s.metric: best_value,
                # the generated answers' scores at that evaluation (the adapter's)
                **{k: float(best[k]) if _finite(best.get(k)) else None for k in scores if k != s.metric},
                "steps": last.get("step"),
                "wall_s": round(float(last.get("time_total_s", 0.0)), 1),
                "status": status,
                "reason": reason,
                "adapter": adapter,
                **cost,
            }
        )
    rows.sort(key=lambda r: r["trial"])
    mark_pareto(rows, sweep.search)
    return rows


def _most(evaluations: list[dict[str, Any]], key: str) -> float | None:
    """The largest value of a cumulative or peak figure over a trial's evaluations."""
    values = [float(e[key]) for e in evaluations if _finite(e.get(key))]
    return max(values) if values else None


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file()) / 2**20


def mark_pareto(rows: list[dict[str, Any]], search: SearchConfig) -> None:
    """Set each row's `pareto`: true for a trial that can win (`ranked`) which no other such trial beats on both
    `search.metric` (at least as good) and worker-seconds (at least as cheap), strictly on one; false for the
    rest, None where nothing can be compared (no worker-seconds)."""
    sign = 1.0 if search.mode == "min" else -1.0
    candidates = [r for r in ranked(rows, search) if r.get("worker_s") is not None]
    for r in rows:
        r[PARETO] = None if r.get("worker_s") is None else False
    for r in candidates:
        q, c = sign * r[search.metric], r["worker_s"]
        r[PARETO] = not any(
            (sign * o[search.metric] <= q and o["worker_s"] <= c) and (sign * o[search.metric] < q or o["worker_s"] < c)
            for o in candidates
            if o is not r
        )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _trial_id(result: Any) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def trial_histories(grid: Any, trials_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every evaluation of each trial, in step order: Tune's record of the trial, completed from the trial's own
    checkpointed history on storage (`trials_dir/<trial id>/`). An evaluation reaches the checkpoint before it
    reaches Tune, so a sweep interrupted in between (Ctrl-C while a trial evaluates) and resumed from that
    checkpoint has the evaluation only there: Tune never hears of it again."""
    out = {}
    for result in grid:
        df = result.metrics_dataframe
        trial_id = _trial_id(result)
        reported = df.to_dict("records") if df is not None else []
        out[trial_id] = merge_histories(reported, checkpointed_history(trials_dir / trial_id))
    return out


def checkpointed_history(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluations in the trainer state of a trial's latest checkpoint on storage ([] when it has none)."""
    by_step = checkpoints_on_storage(run_dir)
    if not by_step:
        return []
    latest = by_step[max(by_step)]
    state = json.loads((latest / TRAINER_STATE).read_text(encoding="utf-8"))
    return [{**h, "checkpoint_path": str(by_step.get(h["step"], latest))} for h in state.get("history", [])]


def _converged_reason(run_dir: Path) -> str | None:
    """Why early stopping ended a trial, as its workers recorded it in its latest checkpoint (they know the step
    its metric last improved at)."""
    by_step = checkpoints_on_storage(run_dir)
    if not by_step:
        return None
    state = json.loads((by_step[max(by_step)] / TRAINER_STATE).read_text(encoding="utf-8"))
    return state.get("converged", {}).get("reason")


def merge_histories(reported: list[dict[str, Any]], checkpointed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tune's results with the checkpointed evaluations Tune lacks, by step (Tune's row wins where both have one:
    it carries Tune's own columns). Only evaluations up to the last step Tune heard of count: past it lie the
    steps a trial's workers ran after ASHA had already stopped the trial, which are not part of its record."""
    steps = {int(r.get("step") or 0) for r in reported}
    last = max(steps, default=0)
    merged = [*reported, *(h for h in checkpointed if int(h["step"]) not in steps and int(h["step"]) <= last)]
    return sorted(merged, key=lambda r: int(r.get("step") or 0))


def ranked(rows: list[dict[str, Any]], search: SearchConfig) -> list[dict[str, Any]]:
    """The trials that can win (trained: finished, converged or stopped early, with an adapter and a value of
    `search.metric`), best first."""
    ok = [r for r in rows if r["status"] in TRAINED and r[search.metric] is not None and r["adapter"]]
    sign = 1.0 if search.mode == "min" else -1.0
    # equal scores (likely for a generated score over a few prompts): the cheaper first, so the winner is in the
    # Pareto set; then by trial id, so the order is the same every time
    return sorted(ok, key=lambda r: (sign * r[search.metric], r.get("worker_s") or 0.0, r["trial"]))


def pick_winner(rows: list[dict[str, Any]], search: SearchConfig) -> dict[str, Any] | None:
    """The best trial that can win, or None."""
    return next(iter(ranked(rows, search)), None)


def pick_finalists(rows: list[dict[str, Any]], search: SearchConfig) -> list[dict[str, Any]]:
    """The best `search.finalists` trials that can win, best first (the winner is the first)."""
    return ranked(rows, search)[: search.finalists]


def held_out_note(
    finalists: list[dict[str, Any]],
    winner: dict[str, Any],
    metric: str,
    examples: int,
    prompts: int = 0,
    mode: str = "min",
) -> str:
    """The winner's test figure next to its validation one (and its generated answers' test scores, on `prompts`
    test prompts), and whether the test split ranks another finalist better by the searched metric's test figure
    (`test_<metric>` for a generated score, in `mode`; else test eval_loss). The winner stays the validation
    pick: choosing on the test split would make it optimistic too."""
    test = winner[TEST_METRIC]
    note = (
        f"winner {winner['trial']} test eval_loss {test:.4f} on {examples} held-out rows not used to choose "
        f"(validation {metric} {winner[metric]:.4f})"
    )
    generated = {k.removeprefix("test_"): v for k, v in winner.items() if k.startswith("test_") and k != TEST_METRIC}
    if generated and prompts:
        note += f"; answers to {prompts} test prompts: " + ", ".join(f"{k} {v:.3f}" for k, v in generated.items())
    key, sign = (f"test_{metric}", -1.0 if mode == "max" else 1.0) if f"test_{metric}" in winner else (TEST_METRIC, 1.0)
    scored = [r for r in finalists if _finite(r.get(key))]
    best = min(scored, key=lambda r: sign * r[key]) if scored else winner
    if best is not winner and _finite(winner.get(key)) and sign * best[key] < sign * winner[key]:
        shown = "test eval_loss" if key == TEST_METRIC else f"test {metric}"
        note += (
            f"; the test split disagrees: finalist {best['trial']} scores better there ({shown} {best[key]:.4f}), "
            f"the winner is chosen on validation"
        )
    return note


def write_results(
    rows: list[dict[str, Any]],
    winner: dict[str, Any] | None,
    directory: Path,
    tracking_note: str | None = None,
    held_out: str | None = None,
    interrupted: bool = False,
    summary: dict[str, Any] | None = None,
) -> None:
    """results.csv and results.json (with `tracking_note` when the tracking server had an outage, and
    `held_out`: what the winner's figures mean) beside the sweep's Tune state. `interrupted`: trials were left
    unfinished (Ctrl-C, a stopped job); `--resume` finishes them and writes both again. `summary`: what
    `adaptune results` needs to print the sweep again (`RESULTS_SUMMARY`)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (directory / RESULTS_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    (directory / RESULTS_JSON).write_text(
        json.dumps(
            {
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "interrupted": interrupted,
                **(summary or {}),
                "winner": winner,
                **({"held_out": held_out} if held_out else {}),
                **({"tracking_note": tracking_note} if tracking_note else {}),
                "trials": rows,
            },
            indent=2,
        ),
        encoding="utf-8",
    )


# What results.json keeps besides the rows, for `adaptune results`: SweepOutcome's fields of the same names.
RESULTS_SUMMARY = ("metric", "scores", "tracking_uri", "experiment_id", "parent_run_id", "ui")


def record_registration(directory: Path, registration: Any) -> None:
    """Add the winner's registry version (a tracking.registry.Registration) to results.json."""
    path = directory / RESULTS_JSON
    results = json.loads(path.read_text(encoding="utf-8"))
    results["registration"] = {
        "name": registration.name,
        "version": registration.version,
        "aliases": registration.aliases,
    }
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")


def read_results(directory: Path) -> SweepOutcome:
    """A past sweep's outcome from its results.json, as `format_sweep` prints it."""
    results = json.loads((directory / RESULTS_JSON).read_text(encoding="utf-8"))
    reg = results.get("registration")
    return SweepOutcome(
        directory.name,
        str(directory),
        results.get("metric", "eval_loss"),  # results written before the summary was kept: the default metric
        results["trials"],
        results.get("winner"),
        bool(results.get("interrupted")),
        tracking_uri=results.get("tracking_uri", ""),
        experiment_id=results.get("experiment_id", ""),
        parent_run_id=results.get("parent_run_id", ""),
        registration=Registration(reg["name"], reg["version"], reg["aliases"]) if reg else None,
        ui=results.get("ui", ""),
        tracking_note=results.get("tracking_note"),
        held_out=results.get("held_out"),
        scores=tuple(results.get("scores", ())),
    )
