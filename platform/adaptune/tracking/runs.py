"""MLflow tracking of a sweep: one parent run per sweep, one child run per trial, the trials' adapters as
MLflow models, the parent's plots and results table.

Only the job driver talks to MLflow (the Tune callback below runs in it): workers never do, so a trial's
run is created once however often its workers restart, and a resumed sweep finds its runs again by the
sweep id and Ray trial id tags. The tracking server is checked before anything starts.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from adaptune.config import ClusterProfile, SweepConfig, model_source, resolve_path
from adaptune.names import (
    ADAPTER_MODEL_NAME,
    ANSWERS_FILE,
    ANSWERS_TABLE,
    CONVERGED,
    DIVERGED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    KIND_SWEEP,
    KIND_TRIAL,
    RESULTS_CSV,
    RESULTS_JSON,
    SKIPPED,
    STOPPED_EARLY,
    TAG_CONVERGED,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_HELD_OUT,
    TAG_KIND,
    TAG_MODEL_ID,
    TAG_PARENT,
    TAG_PARETO,
    TAG_REASON,
    TAG_STATUS,
    TAG_STOPPED_EARLY,
    TAG_SWEEP,
    TAG_TRACKING_NOTE,
    TAG_TRIAL,
    TAG_WINNER_RUN,
    TAG_WINNER_TRIAL,
    TEST_METRIC,
    target_key,
)
from adaptune.preflight.search_space import apply_values, resolve_alpha
from adaptune.records import PARETO, STEP_METRICS, generated_metrics
from adaptune.redaction import redact_uri, redacted
from adaptune.tracking.models import base_reference, log_text_model, version
from adaptune.tracking.server import embedded_artifacts, server_answers, tracking_uri
from adaptune.tracking.store import client, client_settings, experiment_id

log = logging.getLogger("adaptune")

# The MLflow client's retries while a sweep logs live: a request the server stops answering mid-sweep costs
# seconds, not the client's default 7 retries with exponential backoff (about 4 minutes, measured, during which
# Tune's event loop, and so every trial waiting to report, stood still). What fails is logged late (`backfill`).
LIVE_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
LIBRARIES = ("adaptune", "torch", "ray", "deepspeed", "transformers", "peft", "bitsandbytes", "datasets", "mlflow")


def dataset_input(path: str, name: str, digest: str, context: str, rows: int | None = None) -> Any:
    """An MLflow dataset input for data at `path` with our content digest (MLflow's own digest only samples the
    first rows) and, when known, its row count as the dataset's profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if "://" not in path:
        path = str(resolve_path(path).resolve())
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(path)
    dataset = Dataset(
        name=name,
        digest=digest[:36],
        source_type=source._get_source_type(),
        source=source.to_json(),
        profile=json.dumps({"num_rows": rows}) if rows is not None else None,
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


# --------------------------------------------------------------------------------------------------
# What a trial's run records
# --------------------------------------------------------------------------------------------------


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def trial_params(
    base: SweepConfig, cluster: ClusterProfile, config: dict[str, Any], targets: dict[str, list[str]]
) -> dict[str, str]:
    """Params of a trial's run under stable dotted names: every training setting with the sampled values
    applied (`lora.r`, `lora.alpha`, `lora.target_modules`, `train.learning_rate`, `quantization.mode`, ...),
    the resolved target modules, and the cluster settings that shape training (`deepspeed.zero_stage`,
    `trial.num_workers`). A combination the schema refuses is recorded as sampled."""
    values = resolve_alpha(dict(config), base)
    params = {k: _param(v) for k, v in values.items()}
    try:
        trial = apply_values(base, values)
    except ValidationError:
        return params
    dumped = trial.model_dump(mode="json")
    for section in ("lora", "quantization", "train"):
        params.update({k: _param(v) for k, v in flat(dumped[section], f"{section}.").items()})
    params["lora.target_modules.resolved"] = ",".join(targets.get(target_key(trial.lora.target_modules), []))
    params["deepspeed.zero_stage"] = str(cluster.deepspeed.zero_stage)
    params["trial.num_workers"] = str(cluster.trial.num_workers)
    params["trial.use_gpu"] = str(cluster.trial.use_gpu)
    return params


def run_status(status: str) -> tuple[str, dict[str, str]]:
    """MLflow run status and tags for an adaptune trial status."""
    if status in (FINISHED, CONVERGED):
        return "FINISHED", {TAG_STATUS: status}
    if status == STOPPED_EARLY:
        return "KILLED", {TAG_STATUS: status, TAG_STOPPED_EARLY: "true"}
    if status == INTERRUPTED:
        return "KILLED", {TAG_STATUS: status}
    assert status in (DIVERGED, FAILED, SKIPPED), status
    return "FAILED", {TAG_STATUS: status}


# --------------------------------------------------------------------------------------------------
# The sweep's runs
# --------------------------------------------------------------------------------------------------


class SweepTracker:
    """The parent run of one sweep and its trials' child runs, kept by the job driver."""

    def __init__(
        self,
        sweep: SweepConfig,
        cluster: ClusterProfile,
        sweep_id: str,
        targets: dict[str, list[str]],
        parent_tags: dict[str, str] | None = None,
    ):
        self.sweep, self.cluster, self.sweep_id, self.targets = sweep, cluster, sweep_id, targets
        self.parent_tags = parent_tags or {}  # e.g. the retrain run this sweep is nested under
        self.base = base_reference(sweep.model.path, sweep.model.revision, resolve_path(cluster.storage_path))
        self.uri = tracking_uri(cluster)
        self.mlc = client(self.uri)
        self.experiment_id = experiment_id(self.mlc, sweep.experiment_name, embedded_artifacts(cluster, self.uri))
        self.parent_id = ""
        self.children: dict[str, str] = {}  # Ray trial id -> run id
        self.models: dict[str, str] = {}  # Ray trial id -> model id of its logged adapter (after `close`)
        self.last_step: dict[str, int] = {}  # run id -> last step logged
        # Tracking-server outages seen while trials ran: [start, end or None] wall times, and the
        # evaluations that could not be logged live (logged late by `backfill`).
        self.outages: list[list[float | None]] = []
        self.missed: set[tuple[str, int]] = set()  # (trial id, step) of each evaluation not logged live
        self.backfilled = 0

    # ---- the parent ----

    def open(self, manifest: Any, sweep_file: str, cluster_file: str | None, resuming: bool) -> str:
        """Create the sweep's parent run (or, resuming, find it and mark it running again)."""
        found = self._find({TAG_SWEEP: self.sweep_id, TAG_KIND: KIND_SWEEP}, parent=None)  # trial runs carry the id too
        if found is not None:
            self.parent_id = found
            self.mlc.update_run(found, status="RUNNING")
            for run in self._child_runs():
                self.children[run.data.tags[TAG_TRIAL]] = run.info.run_id
            log.info(
                "mlflow: resumed parent run %s (%d trial runs) at %s", found, len(self.children), redact_uri(self.uri)
            )
            return found
        if resuming:
            log.info("mlflow: no parent run for %s found at %s; creating one", self.sweep_id, redact_uri(self.uri))
        run = self.mlc.create_run(
            self.experiment_id,
            run_name=self.sweep_id,
            tags={TAG_SWEEP: self.sweep_id, TAG_KIND: KIND_SWEEP, **_source_tags(sweep_file), **self.parent_tags},
        )
        self.parent_id = run.info.run_id
        self._log_sweep(manifest, sweep_file, cluster_file)
        log.info(
            "mlflow: parent run %s in experiment %r at %s",
            self.parent_id,
            self.sweep.experiment_name,
            redact_uri(self.uri),
        )
        return self.parent_id

    def _log_sweep(self, manifest: Any, sweep_file: str, cluster_file: str | None) -> None:
        from mlflow.entities import Param

        s = self.sweep
        params = {
            "sweep.name": s.name,
            "model.path": model_source(s.model.path),
            "model.revision": s.model.revision,
            "data.path": s.data.path,
            "data.digest": manifest.digest,
            "search.algorithm": s.search.algorithm,
            "search.scheduler": s.search.scheduler,
            "search.metric": s.search.metric,
            "search.mode": s.search.mode,
            "search.num_samples": s.search.num_samples,
            "search.keys": ",".join(sorted(s.search.space)),
            "deepspeed.zero_stage": self.cluster.deepspeed.zero_stage,
            "trial.num_workers": self.cluster.trial.num_workers,
        }
        params.update({f"version.{lib}": version(lib) for lib in LIBRARIES})
        self.mlc.log_batch(self.parent_id, params=[Param(k, redact_uri(_param(v))) for k, v in params.items()])

        for name, section in (("sweep", s), ("cluster", self.cluster), ("search_space", s.search)):
            # redacted: a tracking URI (or any URI-ish value) with a password in it must not be recorded
            text = yaml.safe_dump(redacted(section.model_dump(mode="json")), sort_keys=False)
            self.mlc.log_text(self.parent_id, text, f"config/{name}.yaml")
        self.mlc.log_dict(self.parent_id, _manifest_dict(manifest), "data/manifest.json")
        self._log_dataset(manifest)

    def _log_dataset(self, manifest: Any) -> None:
        """The company data as an MLflow dataset input, with our digest of every byte (MLflow's own digest of
        a dataset only samples its first rows)."""
        rows = sum(manifest.rows.get(k, 0) for k in ("train", "validation", "test"))
        entry = dataset_input(self.sweep.data.path, self.sweep.name + "-data", manifest.digest, "training", rows)
        self.mlc.log_inputs(self.parent_id, datasets=[entry])

    # ---- the trials ----

    def callback(self) -> Any:
        """A Tune callback that gives each trial its child run and logs every evaluation to it."""
        from ray import tune

        tracker = self

        class MlflowTrials(tune.Callback):
            def __init__(self) -> None:
                self.tracker: SweepTracker | None = tracker

            def __getstate__(self) -> dict[str, Any]:
                # Tune pickles its callbacks with the sweep's state; a live MLflow client does not belong in
                # there (a resumed sweep brings its own tracker).
                return {"tracker": None}

            def on_trial_start(self, iteration, trials, trial, **info):
                self._safely(lambda t: t.child(trial.trial_id, trial.config), evaluation=None)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                # keyed by step: a restarted worker group may report an evaluation again
                step = (trial.trial_id, int(result.get("step") or 0)) if result.get("eval_loss") is not None else None
                self._safely(lambda t: t.log_result(t.child(trial.trial_id, trial.config), result), evaluation=step)

            def _safely(self, call: Any, evaluation: tuple[str, int] | None) -> None:
                # A tracking server outage must not stop trials that cost GPU hours, nor stall Tune's event
                # loop in the client's retries: while the server is down, each event costs one quick probe and
                # is skipped; the evaluations skipped are logged late from the trials' histories
                # (`backfill`) and the sweep's result says what happened.
                if self.tracker is not None:
                    self.tracker.guarded(call, evaluation)

        return MlflowTrials()

    def guarded(self, call: Any, evaluation: tuple[str, int] | None) -> None:
        """Run `call(self)` when the tracking server answers a quick probe (the client's own retries would hold
        Tune's event loop for minutes); otherwise record the outage and the evaluation ((trial id, step), or None
        for another event) it cost."""
        down = bool(self.outages) and self.outages[-1][1] is None
        if not server_answers(self.uri):
            if not down:
                self.outages.append([time.time(), None])
                log.warning(
                    "mlflow: %s is unreachable; trials go on, their evaluations are logged later", redact_uri(self.uri)
                )
            if evaluation is not None:
                self.missed.add(evaluation)
            return
        if down:
            self.outages[-1][1] = time.time()
            log.warning(
                "mlflow: %s answers again; evaluations missed meanwhile are logged at the end", redact_uri(self.uri)
            )
        try:
            with client_settings(LIVE_RETRIES):
                call(self)
        except Exception as e:  # noqa: BLE001 - any client or server error
            if evaluation is not None:
                self.missed.add(evaluation)
            log.warning("mlflow: could not log to %s (%s); the sweep goes on, logs it later", redact_uri(self.uri), e)

    def backfill(self, rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]]) -> int:
        """Log every evaluation in the trials' histories that their runs lack (evaluations reported while the
        server was down; a run the outage kept from being created is created now). Returns how many
        evaluations were logged late."""
        from mlflow.entities import Metric

        count = 0
        for row in rows:
            history = histories.get(row["trial"], [])
            run_id = self.child(row["trial"], {k: row[k] for k in self.sweep.search.space if k in row})
            logged = {m.step for m in self.mlc.get_metric_history(run_id, "eval_loss")}
            now = int(time.time() * 1000)
            metrics = []
            for result in history:
                step = int(result.get("step") or 0)
                if step <= 0 or step in logged or result.get("eval_loss") is None:
                    continue
                count += 1
                logged.add(step)
                metrics += _step_metrics(result, now, step, Metric, generated_metrics(self.sweep))
            for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
                self.mlc.log_batch(run_id, metrics=metrics[i : i + 1000])
            self.last_step[run_id] = max(logged, default=-1)
        self.backfilled += count
        return count

    def outage_note(self) -> str | None:
        """What the sweep's result says about tracking-server outages, or None when there was none."""
        if not self.outages and not self.missed:
            return None
        seconds = sum((end or time.time()) - start for start, end in self.outages)
        return (
            f"MLflow server {redact_uri(self.uri)} was unreachable {len(self.outages)} time(s) during the sweep "
            f"({seconds:.0f} s in all): {len(self.missed)} evaluation(s) could not be logged live; "
            f"{self.backfilled} were logged late from the trials' histories"
        )

    def child(self, trial_id: str, config: dict[str, Any]) -> str:
        """The trial's run, created exactly once (keyed by the Ray trial id)."""
        if trial_id in self.children:
            return self.children[trial_id]
        from mlflow.entities import Param

        found = self._find({TAG_TRIAL: trial_id}, parent=self.parent_id)
        if found is None:
            run = self.mlc.create_run(
                self.experiment_id,
                run_name=trial_id,
                tags={
                    TAG_PARENT: self.parent_id,
                    TAG_TRIAL: trial_id,
                    TAG_SWEEP: self.sweep_id,
                    TAG_KIND: KIND_TRIAL,
                },
            )
            found = run.info.run_id
            params = trial_params(self.sweep, self.cluster, config, self.targets)
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.mlc.log_batch(found, params=items[i : i + 100])
        else:
            self.mlc.update_run(found, status="RUNNING")
        self.children[trial_id] = found
        return found

    def log_result(self, run_id: str, result: dict[str, Any]) -> None:
        """One evaluation's metrics at its step; a step already logged (a resumed trial replays its history)
        is skipped."""
        from mlflow.entities import Metric

        step = int(result.get("step") or 0)
        if run_id not in self.last_step:
            history = self.mlc.get_metric_history(run_id, "eval_loss")
            self.last_step[run_id] = max((m.step for m in history), default=-1)
        if step <= self.last_step[run_id]:
            return
        metrics = _step_metrics(result, int(time.time() * 1000), step, Metric, generated_metrics(self.sweep))
        if metrics:
            self.mlc.log_batch(run_id, metrics=metrics)
        self.last_step[run_id] = step

    # ---- the end ----

    def close(
        self,
        rows: list[dict[str, Any]],
        winner: dict[str, Any] | None,
        results_dir: Path,
        interrupted: bool,
        note: str | None = None,
        held_out: str | None = None,
    ):
        """Log each trained trial's adapter as an MLflow model (and a finalist's test score), set every run's final
        status, and give the parent its plots, results, winner, `note` (what happened to tracking) and `held_out`
        (what the winner's figures mean). Returns {trial id: model id} of the logged adapters (also kept as
        `self.models`)."""
        models = self.models
        for row in rows:
            run_id = self.child(row["trial"], {k: row[k] for k in self.sweep.search.space if k in row})
            if row["adapter"] and Path(row["adapter"]).is_dir():
                models[row["trial"]] = self.log_adapter(run_id, Path(row["adapter"]))
                if row["status"] != INTERRUPTED:  # an interrupted trial's kept evaluation may still change
                    self.log_answers(run_id, Path(row["adapter"]).parent / ANSWERS_FILE)
            for key in (TEST_METRIC, *(f"test_{k}" for k in generated_metrics(self.sweep))):
                if isinstance(row.get(key), int | float) and math.isfinite(row[key]):
                    self.mlc.log_metric(run_id, key, float(row[key]))  # a finalist's scores on the test split
            for key in ("worker_s", "gpu_s", "tokens_trained"):  # what it cost (adapter_size_mb: log_adapter)
                if isinstance(row.get(key), int | float) and math.isfinite(row[key]):
                    self.mlc.log_metric(run_id, key, row[key], step=int(row.get("steps") or 0))
            status, tags = run_status(row["status"])
            if row.get(PARETO) is not None:
                tags[TAG_PARETO] = str(bool(row[PARETO])).lower()
            if row["reason"]:
                tags[TAG_CONVERGED if row["status"] == CONVERGED else TAG_REASON] = row["reason"][:5000]
            for k, v in tags.items():
                self.mlc.set_tag(run_id, k, v)
            self.mlc.set_terminated(run_id, status)
        for name in (RESULTS_CSV, RESULTS_JSON):
            self.mlc.log_artifact(self.parent_id, str(results_dir / name), "results")
        self._log_plots(rows)
        metric = self.sweep.search.metric
        if note:
            self.mlc.set_tag(self.parent_id, TAG_TRACKING_NOTE, note)
        if held_out:
            self.mlc.set_tag(self.parent_id, TAG_HELD_OUT, held_out)
        front = [r["trial"] for r in rows if r.get(PARETO)]
        if front:
            self.mlc.set_tag(self.parent_id, TAG_PARETO, ",".join(front))
        if winner is not None and winner.get(TEST_METRIC) is not None:
            self.mlc.log_metric(self.parent_id, f"winner_{TEST_METRIC}", float(winner[TEST_METRIC]))
        if winner is not None:
            self.mlc.set_tag(self.parent_id, TAG_WINNER_TRIAL, winner["trial"])
            self.mlc.set_tag(self.parent_id, TAG_WINNER_RUN, self.children[winner["trial"]])
            self.mlc.log_metric(self.parent_id, f"best_{metric}", float(winner[metric]))
        if interrupted:
            self.mlc.set_terminated(self.parent_id, "KILLED")
        elif winner is None:
            self.mlc.set_tag(self.parent_id, TAG_REASON, "no trial trained to an evaluation")
            self.mlc.set_terminated(self.parent_id, "FAILED")
        else:
            self.mlc.set_terminated(self.parent_id, "FINISHED")
        return models

    def log_adapter(self, run_id: str, adapter: Path) -> str:
        """The trial's adapter as an MLflow pyfunc model (prompts in, text out) that refers to the base model
        instead of copying its weights; logged once per run. Returns the model id."""
        run = self.mlc.get_run(run_id)
        existing = run.data.tags.get(TAG_MODEL_ID)
        if existing:
            return existing
        size = sum(f.stat().st_size for f in adapter.iterdir() if f.is_file())
        model_id = log_text_model(
            self.uri,
            run_id,
            ADAPTER_MODEL_NAME,
            {"adapter": str(adapter)},
            {
                **self.base,  # base_model, and the reference another machine resolves (models.resolve_base)
                "revision": self.sweep.model.revision,
                "trust_remote_code": self.sweep.model.trust_remote_code,
            },
            tags={TAG_TRIAL: run.data.tags.get(TAG_TRIAL, "")},
        )
        self.mlc.log_metric(run_id, "adapter_size_mb", size / 2**20)
        self.mlc.set_tag(run_id, TAG_MODEL_ID, model_id)
        return model_id

    def log_answers(self, run_id: str, answers: Path) -> None:
        """The generated answers of the trial's kept evaluation (its adapter's) as the run's MLflow table
        `ANSWERS_TABLE`, one row per prompt: step, prompt, reference, answer and each score. Runs logging the same
        table compare answer by answer in the UI (the experiment's Evaluation view, grouped by prompt). Logged once
        per run: MLflow adds a second `log_table`'s rows to the first's (a resumed sweep closes its runs again)."""
        folder = ANSWERS_TABLE.rpartition("/")[0]
        if not answers.is_file() or any(a.path == ANSWERS_TABLE for a in self.mlc.list_artifacts(run_id, folder)):
            return
        record = json.loads(answers.read_text(encoding="utf-8"))
        rows = record["rows"]
        if not rows:
            return
        # prompt first and answer second: the Evaluation view groups by the first column and compares the second
        columns = list(dict.fromkeys(["prompt", "answer", *(k for r in rows for k in r)]))
        table = {**{c: [r.get(c) for r in rows] for c in columns}, "step": [record["step"]] * len(rows)}
        self.mlc.log_table(run_id, table, ANSWERS_TABLE)

    def _log_plots(self, rows: list[dict[str, Any]]) -> None:
        """eval_loss curves of every trial on one plot; best metric against each searched value."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metric = self.sweep.search.metric
        fig, ax = plt.subplots(figsize=(8, 5))
        for row in rows:
            history = self.mlc.get_metric_history(self.children[row["trial"]], metric)
            if history:
                points = sorted((m.step, m.value) for m in history)
                ax.plot(*zip(*points, strict=True), marker="o", label=f"{row['trial']} ({row['status']})")
        ax.set(xlabel="step", ylabel=metric, title=f"{self.sweep_id}: {metric} of every trial")
        if rows:
            ax.legend(fontsize=7)
        self.mlc.log_figure(self.parent_id, fig, f"plots/{metric}_curves.png")
        plt.close(fig)

        scored = [r for r in rows if r.get(metric) is not None]
        self._log_quality_vs_cost(plt, scored)
        keys = sorted({k for k in scored[0] if k in self.sweep.search.space or k == "lora.alpha"}) if scored else []
        if not keys:
            return
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            xs = [r.get(key) for r in scored]
            numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
            order = sorted({_param(x) for x in xs})
            for status, group in _by_status(scored):  # a loss at step 20 is not a loss at step 60
                gx = [r.get(key) if numeric else order.index(_param(r.get(key))) for r in group]
                ax.scatter(gx, [r[metric] for r in group], marker=STATUS_MARKERS.get(status, "o"), label=status)
            if numeric and key.endswith("learning_rate") and min(xs) > 0:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(order)), order, rotation=20, fontsize=7)
            ax.set(xlabel=key, ylabel=f"best {metric}")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{self.sweep_id}: best {metric} against each searched value (marker: how the trial ended)")
        fig.tight_layout()
        self.mlc.log_figure(self.parent_id, fig, f"plots/{metric}_by_value.png")
        plt.close(fig)

    def _log_quality_vs_cost(self, plt: Any, scored: list[dict[str, Any]]) -> None:
        """Best `search.metric` against worker-seconds, one marker per way a trial ended, the Pareto set joined
        by a line and labelled."""
        costed = [r for r in scored if r.get("worker_s") is not None]
        if not costed:
            return
        metric = self.sweep.search.metric
        fig, ax = plt.subplots(figsize=(8, 5))
        for status, group in _by_status(costed):
            ax.scatter(
                [r["worker_s"] for r in group],
                [r[metric] for r in group],
                marker=STATUS_MARKERS.get(status, "o"),
                label=status,
            )
        front = sorted((r for r in costed if r.get(PARETO)), key=lambda r: r["worker_s"])
        if front:
            ax.plot([r["worker_s"] for r in front], [r[metric] for r in front], "k--", lw=1, label="Pareto set")
            for r in front:
                ax.annotate(
                    r["trial"], (r["worker_s"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.set(
            xlabel="cost: worker-seconds (wall time x workers)",
            ylabel=f"best {metric}",
            title=f"{self.sweep_id}: quality against cost",
        )
        ax.legend(fontsize=7)
        self.mlc.log_figure(self.parent_id, fig, "plots/quality_vs_cost.png")
        plt.close(fig)

    # ---- lookups ----

    def _find(self, tags: dict[str, str], parent: str | None) -> str | None:
        filters = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        if parent:
            filters.append(f"tags.`{TAG_PARENT}` = '{parent}'")
        runs = self.mlc.search_runs([self.experiment_id], " and ".join(filters), max_results=2)
        return runs[0].info.run_id if runs else None

    def _child_runs(self) -> list[Any]:
        return self.mlc.search_runs(
            [self.experiment_id], f"tags.`{TAG_PARENT}` = '{self.parent_id}'", max_results=10000
        )


STATUS_MARKERS = {FINISHED: "o", CONVERGED: "s", STOPPED_EARLY: "v"}  # how a trial ended, in the plots


def _by_status(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    statuses = list(dict.fromkeys(r["status"] for r in rows))
    return [(s, [r for r in rows if r["status"] == s]) for s in statuses]


def _step_metrics(
    result: dict[str, Any], timestamp: int, step: int, metric_cls: Any, scores: tuple[str, ...] = ()
) -> list[Any]:
    return [
        metric_cls(k, float(result[k]), timestamp, step)
        for k in (*STEP_METRICS, *scores)
        if isinstance(result.get(k), int | float) and not isinstance(result.get(k), bool) and math.isfinite(result[k])
    ]


def _manifest_dict(manifest: Any) -> dict[str, Any]:

    return asdict(manifest)


def _source_tags(sweep_file: str) -> dict[str, str]:
    """The git commit of the sweep file's repository, else of the working directory's, if either is one (not
    under `ray job submit`, whose working directory is an unpacked copy without .git)."""
    for folder in (Path(sweep_file).resolve().parent, Path.cwd()):
        try:
            commit = subprocess.run(
                ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            if commit.returncode != 0:
                continue
            dirty = subprocess.run(
                ["git", "-C", str(folder), "status", "--porcelain"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return {}
        return {
            TAG_GIT_COMMIT: commit.stdout.strip(),
            TAG_GIT_DIRTY: str(bool(dirty.stdout.strip())),
        }
    return {}
