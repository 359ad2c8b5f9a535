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
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from adaptune.config import ClusterProfile, SweepConfig, model_source, resolve_path
from adaptune.errors import Problem
from adaptune.redaction import redact_uri, redacted, uri_password

log = logging.getLogger("adaptune")

EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"
TAG_SWEEP = "adaptune.sweep_id"
TAG_TRIAL = "adaptune.trial_id"
TAG_STATUS = "adaptune.status"
TAG_STOPPED_EARLY = "adaptune.stopped_early"
TAG_REASON = "adaptune.failure_reason"
TAG_MODEL_ID = "adaptune.adapter_model_id"
TAG_TRACKING_NOTE = "adaptune.tracking_outage"
TAG_KIND = "adaptune.kind"  # sweep | trial (| merge, from adaptune.registry)
PARENT_TAG = "mlflow.parentRunId"
ADAPTER_MODEL_NAME = "adapter"
# Metrics logged at every evaluation, under the names the trainer reports them.
STEP_METRICS = (
    "eval_loss",
    "perplexity",
    "train_loss",
    "tokens_per_s",
    "peak_memory_mb",
    "learning_rate",
    "step_time_s",
    "epoch",
    "trainable_params",
    "trainable_fraction",
)
LIBRARIES = ("adaptune", "torch", "ray", "deepspeed", "transformers", "peft", "bitsandbytes", "datasets", "mlflow")
MLFLOW_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


# --------------------------------------------------------------------------------------------------
# The tracking server: which one, and is it there
# --------------------------------------------------------------------------------------------------


def tracking_uri(cluster: ClusterProfile) -> str:
    """The profile's tracking URI, else MLFLOW_TRACKING_URI, else the embedded SQLite store under storage."""
    uri = cluster.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{resolve_path(cluster.storage_path).resolve() / EMBEDDED_DB}"


def embedded_artifacts(cluster: ClusterProfile, uri: str) -> str | None:
    """Artifact root for experiments created in the embedded store (a predictable folder beside it)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / EMBEDDED_ARTIFACTS).as_uri()
    return None


def ui_command(uri: str) -> str:
    """How a person opens the MLflow UI on this store (any password in the URI masked)."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact_uri(uri)} in a browser"
    return f"mlflow ui --backend-store-uri {shlex.quote(redact_uri(uri))} --port 5000"  # paths with spaces


CREDENTIALS_FIX = (
    "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment of "
    "the process that runs adaptune to an account on that server"
)


def check_tracking(cluster: ClusterProfile, source: str) -> list[Problem]:
    """Whether the tracking store answers, without importing MLflow for a server (one request each), with the
    credentials MLflow's client would send. A password written into the URI is refused: credentials come from
    the environment only."""
    uri = tracking_uri(cluster)
    key = "mlflow.tracking_uri"
    shown = redact_uri(uri)
    if uri_password(uri) is not None:
        where = "cluster profile" if cluster.mlflow.tracking_uri else "MLFLOW_TRACKING_URI"
        if uri.startswith(("http://", "https://")):
            fix = "Remove it from the URI and set " + CREDENTIALS_FIX.removeprefix("Set ")
        else:
            fix = "Remove it from the URI and give it to the database driver through the environment (PGPASSWORD "
            fix += "or ~/.pgpass for PostgreSQL)"
        return [
            Problem(
                source,
                key,
                f"{shown} carries a password ({where}); URIs end up in logs, shell histories and job specs, so "
                "adaptune takes credentials from the environment only",
                fix,
            )
        ]
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            return [
                Problem(
                    source,
                    key,
                    f"cannot create the MLflow store {uri}: {probe} is not writable",
                    "Set storage_path to a writable folder, or mlflow.tracking_uri to a server",
                )
            ]
        return []
    if not uri.startswith(("http://", "https://")):
        return []  # another kind of store (a database URI, databricks): MLflow reports on first use
    fix = (
        "Start the server (see README: 'A production tracking server'), or fix mlflow.tracking_uri in the "
        "cluster profile / MLFLOW_TRACKING_URI"
    )
    user, header = tracking_credentials()
    try:
        server_request(uri, "/health", header)
        json.loads(server_request(uri, "/api/2.0/mlflow/experiments/search?max_results=1", header))
    except urllib.error.HTTPError as e:
        if e.code == 401 and header is None:
            what = f"MLflow tracking server {shown} requires a login (HTTP 401) and no credentials are set"
            return [Problem(source, key, what, CREDENTIALS_FIX)]
        if e.code == 401:
            who = f"user {user!r}" if user else "MLFLOW_TRACKING_TOKEN"
            what = f"MLflow tracking server {shown} refused the credentials of {who} (HTTP 401)"
            return [Problem(source, key, what, "Check " + CREDENTIALS_FIX.removeprefix("Set "))]
        if e.code == 403:
            return [
                Problem(
                    source,
                    key,
                    f"MLflow tracking server {shown} does not let {user or 'this token'} search experiments (HTTP 403)",
                    "Ask an admin of that server for READ permission (or use an account that has it)",
                )
            ]
        what = f"{shown} answered HTTP {e.code} ({e.reason}): not an MLflow tracking server"
        return [Problem(source, key, what, fix)]
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return [Problem(source, key, f"MLflow tracking server {shown} is unreachable ({reason})", fix)]
    except ValueError:
        return [Problem(source, key, f"{shown} did not answer like an MLflow tracking server", fix)]
    return []


def tracking_credentials() -> tuple[str | None, str | None]:
    """(user name, Authorization header) that MLflow's client sends a tracking server: basic auth from
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (else ~/.mlflow/credentials, as MLflow reads it), else a
    bearer MLFLOW_TRACKING_TOKEN, else (None, None)."""
    import base64
    import configparser

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    stored = Path.home() / ".mlflow" / "credentials"
    if (not user or not password) and stored.is_file():
        parser = configparser.ConfigParser()
        parser.read(stored)
        section = parser["mlflow"] if parser.has_section("mlflow") else {}
        user = user or section.get("mlflow_tracking_username")
        password = password or section.get("mlflow_tracking_password")
    if user and password:
        return user, "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return (None, f"Bearer {token}") if token else (None, None)


def server_request(uri: str, path: str, authorization: str | None = None, timeout: float = 10) -> bytes:
    """The body of GET `path` on the tracking server at `uri`, with `authorization` as the Authorization header.
    A user name in the URI is dropped from the request line (urllib cannot send it there).

    Raises:
        urllib.error.HTTPError: the server answered with an error status.
        urllib.error.URLError, OSError: it did not answer.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    base = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path.rstrip("/"), "", ""))
    request = urllib.request.Request(base + path, headers={"Authorization": authorization} if authorization else {})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.read()


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


def client(uri: str) -> Any:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlc: Any, name: str, artifact_location: str | None) -> str:
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlc.create_experiment(name, artifact_location=artifact_location)


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
    from pydantic import ValidationError

    from adaptune.search_space import apply_values, resolve_alpha
    from adaptune.trial import target_key

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
    from adaptune.sweep import DIVERGED, FAILED, FINISHED, INTERRUPTED, SKIPPED, STOPPED_EARLY

    if status == FINISHED:
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
        from adaptune.registry import base_reference

        self.base = base_reference(sweep.model.path, sweep.model.revision, resolve_path(cluster.storage_path))
        self.uri = tracking_uri(cluster)
        self.mlc = client(self.uri)
        self.experiment_id = experiment_id(self.mlc, sweep.experiment_name, embedded_artifacts(cluster, self.uri))
        self.parent_id = ""
        self.children: dict[str, str] = {}  # Ray trial id -> run id
        self.last_step: dict[str, int] = {}  # run id -> last step logged
        # Tracking-server outages seen while trials ran: [start, end or None] wall times, and the
        # evaluations that could not be logged live (logged late by `backfill`).
        self.outages: list[list[float | None]] = []
        self.missed: set[tuple[str, int]] = set()  # (trial id, step) of each evaluation not logged live
        self.backfilled = 0

    # ---- the parent ----

    def open(self, manifest: Any, sweep_file: str, cluster_file: str | None, resuming: bool) -> str:
        """Create the sweep's parent run (or, resuming, find it and mark it running again)."""
        found = self._find({TAG_SWEEP: self.sweep_id, TAG_KIND: "sweep"}, parent=None)  # trial runs carry the id too
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
            tags={TAG_SWEEP: self.sweep_id, TAG_KIND: "sweep", **_source_tags(sweep_file), **self.parent_tags},
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
        params.update({f"version.{lib}": _version(lib) for lib in LIBRARIES})
        self.mlc.log_batch(self.parent_id, params=[Param(k, redact_uri(_param(v))) for k, v in params.items()])
        import yaml

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
                metrics += _step_metrics(result, now, step, Metric)
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
                    PARENT_TAG: self.parent_id,
                    TAG_TRIAL: trial_id,
                    TAG_SWEEP: self.sweep_id,
                    TAG_KIND: "trial",
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
        metrics = _step_metrics(result, int(time.time() * 1000), step, Metric)
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
    ):
        """Log each trained trial's adapter as an MLflow model, set every run's final status, and give the parent
        its plots, results, winner and `note` (what happened to tracking). Returns {trial id: model id} of the
        logged adapters."""
        from adaptune.sweep import RESULTS_CSV, RESULTS_JSON

        models = {}
        for row in rows:
            run_id = self.child(row["trial"], {k: row[k] for k in self.sweep.search.space if k in row})
            if row["adapter"] and Path(row["adapter"]).is_dir():
                models[row["trial"]] = self.log_adapter(run_id, Path(row["adapter"]))
            status, tags = run_status(row["status"])
            if row["reason"]:
                tags[TAG_REASON] = row["reason"][:5000]
            for k, v in tags.items():
                self.mlc.set_tag(run_id, k, v)
            self.mlc.set_terminated(run_id, status)
        for name in (RESULTS_CSV, RESULTS_JSON):
            self.mlc.log_artifact(self.parent_id, str(results_dir / name), "results")
        self._log_plots(rows)
        metric = self.sweep.search.metric
        if note:
            self.mlc.set_tag(self.parent_id, TAG_TRACKING_NOTE, note)
        if winner is not None:
            self.mlc.set_tag(self.parent_id, "adaptune.winner_trial", winner["trial"])
            self.mlc.set_tag(self.parent_id, "adaptune.winner_run_id", self.children[winner["trial"]])
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
        import mlflow

        existing = self.mlc.get_run(run_id).data.tags.get(TAG_MODEL_ID)
        if existing:
            return existing
        size = sum(f.stat().st_size for f in adapter.iterdir() if f.is_file())
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=ADAPTER_MODEL_NAME,
                python_model=str(MLFLOW_MODEL_CODE),
                artifacts={"adapter": str(adapter)},
                model_config={
                    **self.base,  # base_model, and the reference another machine resolves (registry.resolve_base)
                    "revision": self.sweep.model.revision,
                    "trust_remote_code": self.sweep.model.trust_remote_code,
                },
                signature=text_signature(),
                pip_requirements=model_requirements(),
                tags={TAG_TRIAL: self.mlc.get_run(run_id).data.tags.get(TAG_TRIAL, "")},
            )
        self.mlc.log_metric(run_id, "adapter_size_mb", size / 2**20)
        self.mlc.set_tag(run_id, TAG_MODEL_ID, info.model_id)
        return info.model_id

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
        keys = sorted({k for k in scored[0] if k in self.sweep.search.space or k == "lora.alpha"}) if scored else []
        if not keys:
            return
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            xs = [r.get(key) for r in scored]
            ys = [r[metric] for r in scored]
            if all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs):
                ax.scatter(xs, ys)
                if key.endswith("learning_rate") and min(xs) > 0:
                    ax.set_xscale("log")
            else:
                labels = [_param(x) for x in xs]
                order = sorted(set(labels))
                ax.scatter([order.index(x) for x in labels], ys)
                ax.set_xticks(range(len(order)), order, rotation=20, fontsize=7)
            ax.set(xlabel=key, ylabel=f"best {metric}")
        fig.suptitle(f"{self.sweep_id}: best {metric} against each searched value")
        fig.tight_layout()
        self.mlc.log_figure(self.parent_id, fig, f"plots/{metric}_by_value.png")
        plt.close(fig)

    # ---- lookups ----

    def _find(self, tags: dict[str, str], parent: str | None) -> str | None:
        filters = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        if parent:
            filters.append(f"tags.`{PARENT_TAG}` = '{parent}'")
        runs = self.mlc.search_runs([self.experiment_id], " and ".join(filters), max_results=2)
        return runs[0].info.run_id if runs else None

    def _child_runs(self) -> list[Any]:
        return self.mlc.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}'", max_results=10000
        )


def _step_metrics(result: dict[str, Any], timestamp: int, step: int, metric_cls: Any) -> list[Any]:
    return [
        metric_cls(k, float(result[k]), timestamp, step)
        for k in STEP_METRICS
        if isinstance(result.get(k), int | float) and not isinstance(result.get(k), bool) and math.isfinite(result[k])
    ]


def server_answers(uri: str, timeout: float = 3.0) -> bool:
    """Whether the tracking server at `uri` answers at all (any HTTP status counts: an authenticating server
    that refuses an anonymous probe is up). Stores that are not servers always count as answering."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        server_request(uri, "/health", timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


TRACKING_WAIT_S = 600  # how long a finished sweep waits for a tracking server that is down


def wait_for_server(uri: str, timeout: float, every: float = 5.0) -> bool:
    """Whether the tracking server answers within `timeout` seconds (a restart), probing every `every` s."""
    deadline = time.monotonic() + timeout
    if server_answers(uri):
        return True
    log.warning(
        "mlflow: %s does not answer; waiting up to %.0f s for it to log the sweep's results", redact_uri(uri), timeout
    )
    while time.monotonic() < deadline:
        time.sleep(every)
        if server_answers(uri):
            return True
    return False


def text_signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from adaptune.mlflow_model import DEFAULT_MAX_NEW_TOKENS

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # a list of prompts (or a one-column DataFrame)
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
    )


def model_requirements() -> list[str]:
    """What loading a logged model needs, pinned to the versions that wrote it."""
    return [f"{lib}=={_version(lib)}" for lib in ("mlflow", "torch", "transformers", "peft", "safetensors")]


def _version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "not installed"


def _manifest_dict(manifest: Any) -> dict[str, Any]:
    from dataclasses import asdict

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
            "mlflow.source.git.commit": commit.stdout.strip(),
            "adaptune.git_dirty": str(bool(dirty.stdout.strip())),
        }
    return {}
