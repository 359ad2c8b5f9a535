"""What the job driver does, top to bottom: load and check the config, prepare the data once, connect to
Ray, and launch the run's trials. This is the process `ray job submit` starts."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptune.config import MAX_EVAL_SAMPLES, ClusterProfile, SweepConfig, model_source, read_configs, resolve_path
from adaptune.console import console
from adaptune.data import DataManifest, load_eval_prompts, prepare_dataset
from adaptune.driver.sweep import (
    RESULTS_SUMMARY,
    build_tuner,
    collect_results,
    held_out_note,
    pick_finalists,
    pick_winner,
    read_results,
    record_registration,
    trial_histories,
    unfinished_trials,
    write_results,
)
from adaptune.driver.trial import run_trial
from adaptune.errors import ConfigError, DataError, Problem, StorageError, storage_failure
from adaptune.evaluation import scorer_code
from adaptune.merge import merge_adapter
from adaptune.names import ADAPTER_CONFIG, DATA_DIR, LOGS_DIR, RESULTS_JSON, TEST_METRIC, TRIALS_DIR, target_key
from adaptune.preflight.architecture import ArchitectureError, target_modules_for
from adaptune.preflight.rules import DECOMPOSING_INITS
from adaptune.preflight.search_space import target_candidates
from adaptune.preflight.validate import MOSTLY_TRUNCATED, attention_problems, check_run, eval_samples_problems
from adaptune.records import PreparedRun, SweepOutcome, TrialOutcome, generated_metrics
from adaptune.scoring import score_split
from adaptune.tracking.models import download_adapter, resolve_base
from adaptune.tracking.registry import log_merged, register_winner, resolve_ref
from adaptune.tracking.runs import SweepTracker
from adaptune.tracking.server import (
    TRACKING_WAIT_S,
    check_tracking,
    embedded_artifacts,
    embedded_store_lock,
    tracking_uri,
    ui_command,
    wait_for_server,
)
from adaptune.tracking.store import client

log = logging.getLogger("adaptune")
WORKER_GROUP_START_TIMEOUT_S = 600


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
    return checked_plan(sweep, cluster, sweep_file, cluster_file, problems)


def checked_plan(
    sweep: SweepConfig | None,
    cluster: ClusterProfile | None,
    sweep_file: str,
    cluster_file: str | None,
    problems: list[Problem] | None = None,
) -> RunPlan:
    """A plan for configs already loaded, after every pre-flight check (raises ConfigError)."""
    found = [*(problems or []), *check_run(sweep, cluster, sweep_file, cluster_file)]
    problems = [p for p in found if not p.warning]
    if problems or sweep is None or cluster is None:
        raise ConfigError(problems)
    for p in found:
        if p.warning:
            log.warning("warning: %s", p)
    storage = resolve_path(cluster.storage_path)
    return RunPlan(sweep, cluster, sweep_file, cluster_file, storage.resolve() / sweep.name)


@dataclass(frozen=True)
class Prepared:
    """A run's data, prepared once, and what every trial of it shares."""

    manifest: DataManifest
    run: PreparedRun


def prepare_inputs(plan: RunPlan) -> Prepared:
    """Tokenize the data once for the whole run and resolve the LoRA targets of every setting it may sample."""
    sweep, cluster = plan.sweep, plan.cluster
    problems = attention_problems(sweep, plan.sweep_file)
    if problems:
        raise ConfigError(problems)
    started = time.perf_counter()
    with console.task(f"data: preparing {sweep.data.path}"):
        manifest = prepare_dataset(
            sweep.data,
            sweep.model.path,
            plan.sweep_root / DATA_DIR,
            sweep.model.trust_remote_code,
            sweep.model.revision,
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
    truncated, examples = manifest.truncated.get("train", 0), manifest.rows["train"]  # rows: packing or not
    if truncated > MOSTLY_TRUNCATED * examples:
        log.warning(
            "warning: %d of %d training examples were longer than data.max_seq_length=%d and were cut: raise it "
            "or shorten the rows",
            truncated,
            examples,
            sweep.data.max_seq_length,
        )
    need = cluster.trial.num_workers * sweep.train.micro_batch_size
    if manifest.examples["train"] < need:
        raise DataError(
            Problem(
                sweep.data.path,
                "train.micro_batch_size",
                f"the train split has {manifest.examples['train']} "
                + ("packed rows" if manifest.packing else "examples")
                + f", fewer than one batch across {cluster.trial.num_workers} workers ({need})",
                "Add data, or lower train.micro_batch_size or trial.num_workers"
                + (", or set data.packing=false" if manifest.packing else ""),
            )
        )
    scorers = None
    if sweep.eval.generates(sweep.data.format):  # validate counted small data; this counts what was prepared
        prompts = len(load_eval_prompts(manifest.path, "validation", MAX_EVAL_SAMPLES))
        problems = eval_samples_problems(sweep, plan.sweep_file, prompts)
        if problems:
            raise DataError(problems)
        scorers = scorer_code(sweep.eval)
    return Prepared(manifest, PreparedRun(manifest.path, manifest.pad_token_id, resolve_targets(plan), scorers))


def start_local_ray(**init_kwargs: Any) -> None:
    """Start a Ray on this machine only, in this process.

    `address="local"`: a bare `ray.init()` would join whatever cluster `ray start` last recorded in
    /tmp/ray/ray_current_cluster. Ray's own processes still read that record to find the cluster's state API
    (Ray Train's placement-group cleaner among them), and a stale one (a `ray start` ended without `ray stop`)
    makes the cleaner fail: a finished trial's worker CPUs then stay reserved and the next trial waits
    forever. So the dashboard gets a known port, and every process of this Ray is told it.
    """
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"  # processes Ray starts inherit it
    ray.init(address="local", dashboard_host="127.0.0.1", dashboard_port=port, **init_kwargs)


def connect_ray(cluster: ClusterProfile) -> None:
    """Join the configured cluster (profile address, else RAY_ADDRESS), or start a local Ray in-process."""
    import ray

    if ray.is_initialized():
        return
    # Ray Train gives a worker group 60 s to start; workers importing torch, transformers and DeepSpeed on a
    # busy machine can take longer, and a timed-out attempt's retry can wait behind its own placement group.
    # Processes of a local Ray inherit this; on a cluster set it where the nodes start (see docs/clusters.md).
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(WORKER_GROUP_START_TIMEOUT_S))
    address = cluster.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        start_local_ray(log_to_driver=True)
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


@contextmanager
def storage_guard(cluster: ClusterProfile, resume: str = "") -> Iterator[None]:
    """Turn a failure caused by a full, read-only or unwritable storage path (in the driver or, passed on by
    Ray, in a worker) into one StorageError naming the path and the fix."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        found = storage_failure(e, cluster.storage_path, resume)
        if found is None:
            raise
        raise found from e


@dataclass(frozen=True)
class TrainResult:
    manifest: DataManifest
    outcome: TrialOutcome


def run_train(sweep_file: str, cluster_file: str | None, overrides: list[str]) -> TrainResult:
    """`adaptune train`: the sweep's base values as one trial."""
    plan = plan_run(sweep_file, cluster_file, overrides)
    name = time.strftime("train-%Y%m%d-%H%M%S")
    with storage_guard(plan.cluster), hold_store(plan, name):
        capture_output(plan, name)
        prepared = prepare_inputs(plan)
        connect_ray(plan.cluster)
        with console.task(f"train: {name}, {plan.sweep.train.max_steps} steps"):
            outcome = run_trial(pin_paths(plan.sweep), plan.cluster, prepared.run, name, str(plan.sweep_root))
    return TrainResult(prepared.manifest, outcome)


def resolve_targets(plan: RunPlan) -> dict[str, list[str]]:
    """Module suffixes for every target setting the sweep may sample, resolved once for the model."""
    sweep = plan.sweep
    out = {}
    for i, target in enumerate(target_candidates(sweep)):
        try:
            out[target_key(target)] = target_modules_for(target, model_source(sweep.model.path), sweep.model.revision)
        except ArchitectureError as e:
            key = "lora.target_modules" if i == 0 else "search.space.lora.target_modules"
            raise ConfigError(Problem(plan.sweep_file, key, str(e), "Pick modules from that list")) from None
    return out


def find_sweep(sweep_root: Path, wanted: str | None) -> str:
    """The sweep to resume: the named one, else the newest under this sweep's storage."""
    found = sorted(p.name for p in sweep_root.glob("sweep-*") if p.is_dir()) if sweep_root.is_dir() else []
    if wanted:
        if wanted not in found:
            raise ConfigError(
                Problem(
                    str(sweep_root),
                    "--resume",
                    f"no sweep {wanted!r} to resume",
                    f"Sweeps there: {', '.join(found) or 'none'}",
                )
            )
        return wanted
    if not found:
        raise ConfigError(
            Problem(str(sweep_root), "--resume", "no earlier sweep to resume", "Run without --resume to start one")
        )
    return found[-1]


def run_sweep(
    sweep_file: str, cluster_file: str | None, overrides: list[str], resume: str | bool = False
) -> SweepOutcome:
    """`adaptune sweep`: many trials under Ray Tune; data prepared once, every trial reads the same copy. MLflow
    gets one parent run for the sweep and a child run per trial; the winner's adapter is registered.

    SIGTERM (what `ray job stop` sends) is handled like Ctrl-C: Tune stops the trials and saves its state,
    so the sweep can be resumed.
    """
    return sweep_plan(plan_run(sweep_file, cluster_file, overrides), resume)


def sweep_plan(plan: RunPlan, resume: str | bool = False, parent_tags: dict[str, str] | None = None) -> SweepOutcome:
    """The sweep of a checked plan (see `run_sweep`); `parent_tags` go on its MLflow parent run."""
    sweep_id = sweep_to_run(plan, resume)  # what may still refuse the input comes before Ray is imported
    with storage_guard(plan.cluster), hold_store(plan, sweep_id):
        return _sweep_held(plan, sweep_id, resume, parent_tags)


def capture_output(plan: RunPlan, run: str) -> None:
    """Ray's, DeepSpeed's and the libraries' output from here on to `<storage>/<sweep name>/logs/<run>.log`
    (see adaptune.console); the terminal keeps adaptune's lines."""
    console.capture(plan.sweep_root / LOGS_DIR / f"{run}.log")


def hold_store(plan: RunPlan, run: str) -> Any:
    """The embedded MLflow store held for this run (see tracking.server.embedded_store_lock)."""
    return embedded_store_lock(plan.cluster, plan.cluster_file or "embedded default cluster", run)


def _sweep_held(plan: RunPlan, sweep_id: str, resume: str | bool, parent_tags: dict[str, str] | None) -> SweepOutcome:
    capture_output(plan, sweep_id)
    prepared = prepare_inputs(plan)
    connect_ray(plan.cluster)
    tracker = open_tracking(plan, sweep_id, prepared, bool(resume), parent_tags)
    with storage_guard(plan.cluster, f"; resume with: adaptune sweep {plan.sweep_file} --resume {sweep_id}"):
        grid = fit(plan, sweep_id, prepared.run, tracker, bool(resume))
        outcome = finish(plan, sweep_id, grid, prepared, tracker)
    if outcome.winner is not None and not outcome.interrupted and plan.sweep.mlflow.register_winner:
        outcome.registration = register(plan, prepared.manifest, tracker, outcome.winner)
        record_registration(Path(outcome.path), outcome.registration)
    return outcome


def sweep_to_run(plan: RunPlan, resume: str | bool) -> str:
    """The id of the sweep to run: a new one, or (resuming) the named or newest one under its storage."""
    if resume:
        return find_sweep(plan.sweep_root, resume if isinstance(resume, str) else None)
    return time.strftime("sweep-%Y%m%d-%H%M%S")


def open_tracking(
    plan: RunPlan, sweep_id: str, prepared: Prepared, resuming: bool, parent_tags: dict[str, str] | None
) -> Any:
    """The sweep's MLflow parent run, created (or found again when resuming)."""
    log.info("sweep %s: storage %s", sweep_id, plan.sweep_root / sweep_id)
    tracker = SweepTracker(plan.sweep, plan.cluster, sweep_id, prepared.run.targets, parent_tags)
    tracker.open(prepared.manifest, plan.sweep_file, plan.cluster_file, resuming=resuming)
    return tracker


def fit(plan: RunPlan, sweep_id: str, prepared: PreparedRun, tracker: Any, resuming: bool) -> Any:
    """Run (or resume) the Tune sweep to its end, or until Ctrl-C / SIGTERM stops it; returns Tune's results."""
    import ray

    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        tuner = build_tuner(
            pin_paths(plan.sweep),
            plan.cluster,
            prepared,
            plan.sweep_root,
            sweep_id,
            ray.cluster_resources(),
            restore=resuming,
            callbacks=[tracker.callback()],
        )
        return tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_leftover_groups()


def remove_leftover_groups() -> None:
    """Once the sweep's trials have ended, the placement groups its trials' Train controllers made and left
    behind (Ray Train hands a group to its clean-up only once its workers started, so a trial interrupted while
    its group waited leaves it holding the cluster's CPUs until this job ends, and on a long-lived cluster that
    job is this driver). A group's id ends with its job's id; other jobs' groups are not touched."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    for pg_id, info in placement_group_table().items():
        if pg_id.endswith(job) and info["state"] != "REMOVED":
            log.debug("removing placement group %s (%s) left by a trial", pg_id, info["state"])
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


def finish(plan: RunPlan, sweep_id: str, grid: Any, prepared: Prepared, tracker: Any) -> SweepOutcome:
    """One row per trial and the winner; the finalists scored on the test split; what the tracking server
    missed logged late; the results written (once) beside the sweep; every run closed with its final status."""
    directory = plan.sweep_root / sweep_id
    trials_dir = directory / TRIALS_DIR
    unfinished = unfinished_trials(grid)
    rows = collect_results(grid, plan.sweep, trials_dir, unfinished, plan.cluster)
    winner = pick_winner(rows, plan.sweep.search)
    held_out = score_finalists(plan, prepared, rows, winner) if not unfinished else None
    if not wait_for_server(tracker.uri, TRACKING_WAIT_S):
        write_results(rows, winner, directory, held_out=held_out, interrupted=bool(unfinished))
        raise RuntimeError(
            f"the MLflow server {tracker.uri} did not answer for {TRACKING_WAIT_S} s at the end of sweep "
            f"{sweep_id}: its results are in {directory / RESULTS_JSON} and its checkpoints on storage. Start the "
            f"server, then log them with `adaptune sweep {plan.sweep_file} --resume {sweep_id}`"
        )
    tracker.backfill(rows, trial_histories(grid, trials_dir))
    note = tracker.outage_note()
    if note:
        log.warning("%s", note)
    outcome = SweepOutcome(
        sweep_id,
        str(directory),
        plan.sweep.search.metric,
        rows,
        winner,
        bool(unfinished),
        tracking_uri=tracker.uri,
        experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_id,
        ui=ui_command(tracker.uri),
        tracking_note=note,
        held_out=held_out,
        scores=generated_metrics(plan.sweep),
    )
    summary = {k: getattr(outcome, k) for k in RESULTS_SUMMARY}
    write_results(
        rows, winner, directory, note, held_out, bool(unfinished), {**summary, "scores": list(outcome.scores)}
    )
    tracker.close(rows, winner, directory, bool(unfinished), note, held_out)
    return outcome


def score_finalists(
    plan: RunPlan, prepared: Prepared, rows: list[dict[str, Any]], winner: dict[str, Any] | None
) -> str | None:
    """Score the best `search.finalists` trials on the test split in one Ray task (one process, the same code
    for every adapter), writing `test_eval_loss` into their rows; what the winner's figures mean, as a line
    for the output (None when there is nothing to say: no trial trained)."""
    import ray

    search, cluster = plan.sweep.search, plan.cluster
    if winner is None:
        return None
    validation_only = f"the winner's {search.metric} is a validation score, on the set it was chosen on (optimistic)"
    if prepared.manifest.examples.get("test", 0) == 0:
        hint = "hold out a test split (data.test_fraction or data.test_path) to score it on rows not used to choose"
        return f"{validation_only}: {hint}"
    finalists = pick_finalists(rows, search)
    if not finalists:
        return f"{validation_only}: search.finalists is 0, so no trial was scored on the test split"
    tr = cluster.trial
    task = ray.remote(num_cpus=tr.cpus_per_worker, num_gpus=tr.gpus_per_worker if tr.use_gpu else 0)(score_split)
    adapters = {r["trial"]: r["adapter"] for r in finalists}
    log.info("sweep: scoring %d finalist(s) on the test split: %s", len(adapters), ", ".join(adapters))
    try:
        run = prepared.run
        with console.task(f"sweep: scoring {len(adapters)} finalist(s) on the test split"):
            scores = ray.get(
                task.remote(
                    pin_paths(plan.sweep), run.data_dir, "test", run.pad_token_id, adapters, tr.use_gpu, run.scorer_code
                )
            )
    except Exception as e:  # the sweep's results must not be lost to the scoring of its finalists
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        log.warning("sweep: scoring the finalists on the test split failed: %s", reason)
        return f"{validation_only}: scoring the finalists on the test split failed ({reason[:500]})"
    for r in finalists:
        r[TEST_METRIC] = scores[r["trial"]].eval_loss
        # test_exact_match, ...: a score no answer has (-inf inside) is left out, not written as -Infinity
        r.update({f"test_{k}": v for k, v in scores[r["trial"]].scores.items() if math.isfinite(v)})
    won = scores[winner["trial"]]
    return held_out_note(finalists, winner, search.metric, won.examples, won.prompts, search.mode)


def register(plan: RunPlan, manifest: DataManifest, tracker: Any, winner: dict[str, Any]) -> Any:
    """The winner's adapter as a new version of the sweep's registered model (see tracking.registry)."""
    metric = plan.sweep.search.metric
    return register_winner(
        tracker.mlc,
        plan.sweep.registered_model_name,
        tracker.models[winner["trial"]],
        tracker.parent_id,
        tracker.children[winner["trial"]],
        manifest.digest,
        tracker.base,
        metric,
        winner[metric],
        winner.get(TEST_METRIC),
        lora_init(winner.get("lora.init", plan.sweep.lora.init), winner.get("adapter")),
    )


def lora_init(init: str, adapter: str | None) -> str:
    """The registry's account of how an adapter started: for pissa/olora, also that it was saved as a plain
    LoRA (of twice the rank) on the unchanged base, which is the base it needs."""
    if init not in DECOMPOSING_INITS or not adapter:
        return init
    rank = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8"))["r"]
    return f"{init}, saved as a plain LoRA of rank {rank} on the unchanged base model"


def _fmt(counts: dict[str, int]) -> str:
    return "/".join(str(counts.get(k, 0)) for k in ("train", "validation", "test"))


def run_merge(
    ref: str,
    out: str,
    cluster_file: str | None,
    tracking: str | None,
    overrides: list[str],
    overwrite: bool,
    register: bool,
) -> MergeResult:
    """`adaptune merge`: the adapter a registry reference or run id names, merged into its base model in full
    precision, checked against base+adapter, saved, logged to MLflow and registered as `<name>-merged`."""
    access = registry_access("merge", cluster_file, tracking, overrides)
    storage = resolve_path(access.cluster.storage_path).resolve()
    console.capture(storage / LOGS_DIR / time.strftime("merge-%Y%m%d-%H%M%S.log"))
    uri, mlc = access.uri, access.mlc
    adapter = resolve_ref(mlc, ref, uri)
    log.info("merge: %s -> %s (run %s) at %s", ref, adapter.model_uri, adapter.run_id, uri)
    with tempfile.TemporaryDirectory(prefix="adaptune-merge-") as tmp:
        adapter_dir, config = download_adapter(uri, adapter.model_uri, adapter.ref, Path(tmp))
        with console.task(f"merge: {ref} into its base model"):
            report = merge_adapter(
                adapter_dir,
                resolve_base(config, storage, ref),
                Path(out),
                revision=config.get("revision"),
                trust_remote_code=bool(config.get("trust_remote_code")),
                overwrite=overwrite,
            )
    registration = log_merged(mlc, uri, adapter, Path(out), report) if register else None
    return MergeResult(adapter, report, registration, ui_command(uri))


@dataclass(frozen=True)
class MergeResult:
    adapter: Any  # tracking.registry.ResolvedAdapter
    report: Any  # merge.MergeReport
    registration: Any  # tracking.registry.Registration of the merged model, or None
    ui: str  # how to open the MLflow UI on it


@dataclass(frozen=True)
class RegistryAccess:
    cluster: ClusterProfile
    uri: str
    mlc: Any  # the MlflowClient of `uri`


def registry_access(verb: str, cluster_file: str | None, tracking: str | None, overrides: list[str]) -> RegistryAccess:
    """For verbs that work on the registry alone (merge, rollback): the cluster profile with `cluster.`
    overrides and `--tracking-uri`, its tracking server checked."""
    stray = [o for o in overrides if not o.startswith("cluster.")]
    if stray:
        raise ConfigError(
            Problem("command line", stray[0], f"{verb} takes only cluster profile overrides", "Prefix it with cluster.")
        )
    overrides = [*overrides, *([f"cluster.mlflow.tracking_uri={tracking}"] if tracking else [])]
    _, cluster, problems = read_configs(None, cluster_file, overrides)
    if cluster is not None:
        problems += check_tracking(cluster, cluster_file or "command line")
    if problems or cluster is None:
        raise ConfigError(problems)
    uri = tracking_uri(cluster)
    return RegistryAccess(cluster, uri, client(uri))


def find_results(wanted: str | None, cluster_file: str | None, overrides: list[str]) -> Path:
    """`adaptune results`: the directory of the past sweep `wanted` names (a sweep id, a sweep file: its newest
    sweep, or a sweep's directory), else the newest sweep with results under the profile's storage path."""
    if wanted and Path(wanted).is_dir() and (Path(wanted) / RESULTS_JSON).is_file():
        return Path(wanted)
    sweep_file = wanted if wanted and wanted.endswith((".yaml", ".yml")) else None
    sweep, cluster, problems = read_configs(sweep_file, cluster_file, overrides)
    if problems or cluster is None or (sweep_file and sweep is None):
        raise ConfigError(problems)
    storage = resolve_path(cluster.storage_path).resolve()
    pattern = f"{sweep.name}/sweep-*" if sweep is not None else "*/sweep-*"
    found = sorted((p for p in storage.glob(pattern) if (p / RESULTS_JSON).is_file()), key=lambda p: p.name)
    if wanted and sweep is None:
        found = [p for p in found if p.name == wanted]
    if found:
        return found[-1]
    shown = ", ".join(sorted({p.name for p in storage.glob("*/sweep-*") if (p / RESULTS_JSON).is_file()})[-5:])
    what = f"no sweep {wanted!r} with results" if wanted else "no sweep with results yet"
    fix = f"Sweeps there: {shown}" if shown else "Run one with `adaptune sweep <sweep file>`, or give --cluster"
    raise ConfigError(Problem(str(storage), "SWEEP", what, fix))


def past_sweep(wanted: str | None, cluster_file: str | None, overrides: list[str]) -> SweepOutcome:
    """A past sweep's outcome from its storage (see `find_results`)."""
    return read_results(find_results(wanted, cluster_file, overrides))


@dataclass(frozen=True)
class UiTarget:
    """How `adaptune ui` opens the MLflow UI: `command` to run for a local store, else the server's `url`."""

    uri: str
    command: list[str] | None = None
    url: str | None = None


def ui_target(
    store: str | None, cluster_file: str | None, tracking: str | None, overrides: list[str], host: str, port: int
) -> UiTarget:
    """The MLflow UI on the store the configs point at: `mlflow ui` on the embedded SQLite store (of `store`, a
    storage folder, when given), or the tracking server's URL."""
    overrides = [*overrides, *([f"cluster.storage_path={store}"] if store else [])]
    overrides += [f"cluster.mlflow.tracking_uri={tracking}"] if tracking else []
    _, cluster, problems = read_configs(None, cluster_file, overrides)
    if problems or cluster is None:
        raise ConfigError(problems)
    uri = tracking_uri(cluster)
    if uri.startswith(("http://", "https://")):
        return UiTarget(uri, url=uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(
            Problem(
                cluster_file or "embedded default cluster",
                "storage_path",
                f"no MLflow store at {uri} yet",
                "Run a sweep first, or name the storage folder that holds one: adaptune ui <storage_path>",
            )
        )
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    artifacts = embedded_artifacts(cluster, uri)
    if artifacts:
        command += ["--artifacts-destination", artifacts]
    return UiTarget(uri, command=command, url=f"http://{host}:{port}")
