"""Load on the tracking server: concurrent trial loggers against a real `mlflow server` with a PostgreSQL backend
store (MLflow's defaults, then with a larger connection pool) and with a SQLite one, side by side in one run, at
each number of loggers. Each logger is its own process with its own
MlflowClient, as every trial's run is logged over REST: it creates a run, logs its params in one batch, logs
adaptune's per-evaluation metrics in one `log_batch` per step (as `SweepTracker.log_result` does), uploads an
adapter-sized artifact through the server (proxied artifacts), and ends the run. Then everything is read back
from the server. Prints a Markdown table.

    .venv/bin/python bench/mlflow_load.py [--loggers 32,64] [--steps 300] [--artifact-mb 16] [--setups ...]

Target: with PostgreSQL, zero lost metrics and zero failed runs; record what SQLite does under the same load.
Needs PostgreSQL on 127.0.0.1:5432 (a fresh database per server, dropped after). About 35 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.mlflow_server: how the test suite runs a real server

from tests.mlflow_server import (  # noqa: E402
    PG_HOST,
    PG_PORT,
    PG_USER,
    MlflowServer,
    _free_port,
    _sql,
    _stop,
    _wait_healthy,
    ensure_postgres,
)

MB = 2**20
PARAMS = 20


@dataclass(frozen=True)
class Setup:
    """One way to run the tracking server."""

    label: str
    backend: str  # postgresql | sqlite
    workers: int = 4  # `mlflow server --workers`; 4 is mlflow's default
    pool: tuple[int, int] | None = None  # SQLAlchemy pool size and overflow per worker; None: 5 and 10


SETUPS = {
    "postgresql": Setup("PostgreSQL, mlflow's defaults (4 workers, pool 5 + 10 each)", "postgresql"),
    "sqlite": Setup("SQLite, mlflow's defaults (4 workers)", "sqlite"),
    "postgresql-pool": Setup("PostgreSQL, 2 workers, pool 20 + 20 each", "postgresql", workers=2, pool=(20, 20)),
}

# The Markdown goes to stdout, or with --out to a file, which leaves stdout to library and Ray logs.
OUT = sys.stdout


def md(*lines: str) -> None:
    print(*lines, file=OUT, flush=True)


@contextmanager
def server(setup: Setup, workdir: Path):
    """`mlflow server` with a PostgreSQL (a fresh database, dropped at the end) or SQLite backend store and
    proxied artifacts, stopped by its process group at the end."""
    db = ""
    if setup.backend == "postgresql":
        ensure_postgres()
        db = f"adaptune_bench_{os.getpid()}_{secrets.token_hex(4)}"
        _sql(f'CREATE DATABASE "{db}"')
        store = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"
    else:
        store = f"sqlite:///{workdir / 'mlflow.db'}"
    try:
        port = _free_port()
        artifacts = workdir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        log = workdir / "mlflow-server.log"
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", store]
        cmd += ["--serve-artifacts", "--artifacts-destination", str(artifacts), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--workers", str(setup.workers)]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        if setup.pool:
            env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"], env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] = map(str, setup.pool)
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            found = MlflowServer(uri=f"http://127.0.0.1:{port}", db=db, log=log, artifacts=artifacts, pid=proc.pid)
            _wait_healthy(proc, found, 300)
            yield found
        finally:
            _stop(proc)
    finally:
        if db:
            _sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


# ---- one trial's logger, in its own process ----


def logger(uri: str, experiment_id: str, index: int, steps: int, artifact: str, barrier, results) -> None:
    """Log one run the way a trial's run is logged; every client-side exception is counted and the logger goes
    on (adaptune's tracker logs a warning and the sweep goes on), and every HTTP retry the MLflow client's
    urllib3 session makes is counted."""
    os.dup2(2, 1)  # the client's "View run" lines are not the bench's Markdown
    import urllib3.util.retry

    retries = collections.Counter()
    increment = urllib3.util.retry.Retry.increment

    def counted(self, method=None, url=None, response=None, error=None, *args, **kwargs):
        retries[f"{getattr(response, 'status', None) or type(error).__name__}"] += 1
        return increment(self, method, url, response, error, *args, **kwargs)

    urllib3.util.retry.Retry.increment = counted
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from adaptune.records import STEP_METRICS

    client = MlflowClient(uri)
    out = {"index": index, "run_id": None, "errors": [], "latency": collections.defaultdict(list)}

    def call(name: str, fn, *args, **kwargs) -> bool:
        started = time.perf_counter()
        try:
            fn(*args, **kwargs)
            return True
        except Exception as e:  # what the client raises after its own retries: the call is lost
            out["errors"].append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
            return False
        finally:
            out["latency"][name].append(time.perf_counter() - started)

    barrier.wait(timeout=900)
    out["start"] = time.time()
    try:
        out["run_id"] = client.create_run(experiment_id, run_name=f"logger-{index:02d}").info.run_id
    except Exception as e:
        out["errors"].append(f"create_run: {type(e).__name__}: {str(e)[:300]}")
    if out["run_id"]:
        run_id = out["run_id"]
        params = [Param(f"param_{i:02d}", f"value-{index}-{i}") for i in range(PARAMS)]
        call("log_batch (params)", client.log_batch, run_id, params=params)
        for step in range(1, steps + 1):
            now = int(time.time() * 1000)
            metrics = [Metric(k, index + step / (i + 1), now, step) for i, k in enumerate(STEP_METRICS)]
            call("log_batch (metrics)", client.log_batch, run_id, metrics=metrics)
        call("log_artifact", client.log_artifact, run_id, artifact, "adapter")
        call("set_terminated", client.set_terminated, run_id, "FINISHED")
    out["end"] = time.time()
    out["retries"] = dict(retries)
    out["latency"] = dict(out["latency"])
    results.put(out)


# ---- one backend under load ----


def load(setup: Setup, work: Path, loggers: int, steps: int, artifact_mb: int) -> dict:
    from mlflow import MlflowClient

    from adaptune.records import STEP_METRICS

    workdir = Path(tempfile.mkdtemp(prefix=f"{setup.backend}-{loggers}-", dir=work))
    artifact = work / "adapter_model.safetensors"
    with server(setup, workdir) as srv:
        client = MlflowClient(srv.uri)
        experiment = client.create_experiment("load")
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(loggers), ctx.Queue()
        procs = [
            ctx.Process(target=logger, args=(srv.uri, experiment, i, steps, str(artifact), barrier, results))
            for i in range(loggers)
        ]
        for p in procs:
            p.start()
        outs = [results.get(timeout=3600) for _ in procs]
        for p in procs:
            p.join()
        # ---- read everything back from the server ----
        lost = extra = not_finished = missing_artifacts = 0
        for out in outs:
            if not out["run_id"]:
                continue
            run = client.get_run(out["run_id"])
            not_finished += run.info.status != "FINISHED"
            for key in STEP_METRICS:
                got = [m.step for m in client.get_metric_history(out["run_id"], key)]
                lost += len(set(range(1, steps + 1)) - set(got))
                extra += len(got) - len(set(got))
            sizes = [f.file_size for f in client.list_artifacts(out["run_id"], "adapter")]
            missing_artifacts += sizes != [artifact_mb * MB]
        server_log = srv.log.read_text(errors="replace")
    latency = collections.defaultdict(list)
    for out in outs:
        for name, values in out["latency"].items():
            latency[name] += values
    retries = collections.Counter()
    for out in outs:
        retries.update(out["retries"])
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {
        "wall_s": wall,
        "points": loggers * steps * len(STEP_METRICS),
        "requests": sum(len(v) for v in latency.values()) + loggers,
        "latency": latency,
        "retries": retries,
        "errors": [e for o in outs for e in o["errors"]],
        "failed_runs": sum(1 for o in outs if not o["run_id"] or o["errors"]),
        "lost": lost,
        "extra": extra,
        "not_finished": not_finished + sum(1 for o in outs if not o["run_id"]),
        "missing_artifacts": missing_artifacts + sum(1 for o in outs if not o["run_id"]),
        "server_tracebacks": server_log.count("Traceback"),
        "server_locked": server_log.count("database is locked"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loggers", default="32,64", help="concurrent trial loggers (processes), comma-separated")
    parser.add_argument("--steps", type=int, default=300, help="steps per run, one log_batch of metrics each")
    parser.add_argument("--artifact-mb", type=int, default=16, help="size of each run's adapter artifact")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of: {', '.join(SETUPS)}")
    parser.add_argument("--out", help="write the Markdown to this file instead of stdout")
    args = parser.parse_args()
    global OUT
    if args.out:
        OUT = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - open until the process ends

    from adaptune.records import STEP_METRICS

    # No internet here: MLflow's usage telemetry would only retry in the background (and count as retries).
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    work = Path(tempfile.mkdtemp(prefix="adaptune-bench-mlflow-"))
    (work / "adapter_model.safetensors").write_bytes(os.urandom(args.artifact_mb * MB))
    runs = []
    for loggers in (int(n) for n in args.loggers.split(",")):
        for name in args.setups.split(","):
            r = load(SETUPS[name], work, loggers, args.steps, args.artifact_mb)
            runs.append((SETUPS[name], loggers, r))
            print(f"{name}, {loggers} loggers: done in {r['wall_s']:.0f} s", file=sys.stderr)

    md("## Tracking server under load: concurrent trial loggers against one `mlflow server`\n")
    md(
        f"*Each logger is a process with its own MlflowClient: a run, {PARAMS} params in one batch, {args.steps} "
        f"steps of {len(STEP_METRICS)} metrics in one `log_batch` each (adaptune logs one per evaluation; this is "
        f"every step), a {args.artifact_mb} MB artifact uploaded through the server (proxied artifacts), then the "
        "run ended FINISHED; then every run, metric history and artifact is read back from the server. Client "
        "retries are the MLflow client's own (up to 7 with exponential backoff, on connection errors and 429/5xx "
        "answers), counted at urllib3. Server, loggers and PostgreSQL share one 2-core machine, so throughput is "
        "a floor, not a server's capacity.*\n"
    )
    md(
        "| server | loggers | wall time | metric points/s | metrics `log_batch` p50 / p95 / max | artifact upload "
        "p50 / max | client retries | calls failed | failed runs | read back: points lost / duplicated, runs not "
        "FINISHED, artifacts missing |"
    )
    md("|---|---|---|---|---|---|---|---|---|---|")

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    batch = "log_batch (metrics)"
    for setup, loggers, r in runs:
        batches = " / ".join(f"{1000 * pct(r['latency'][batch], q):,.0f}" for q in (0.5, 0.95, 1.0))
        uploads = " / ".join(f"{pct(r['latency']['log_artifact'], q):.1f}" for q in (0.5, 1.0))
        md(
            f"| {setup.label} | {loggers} | {r['wall_s']:.0f} s | **{r['points'] / r['wall_s']:,.0f}** "
            f"| {batches} ms | {uploads} s "
            f"| {_counts(r['retries'])} | **{len(r['errors'])}** | **{r['failed_runs']}** "
            f"| **{r['lost']}** / {r['extra']}, **{r['not_finished']}**, {r['missing_artifacts']} |"
        )
    md(f"\n{args.steps * len(STEP_METRICS):,} metric points per logger.")
    for setup, loggers, r in runs:
        if r["errors"]:
            kinds = collections.Counter(": ".join(e.split(": ", 2)[:2]) for e in r["errors"])
            md(
                f"{setup.label}, {loggers} loggers: failed calls {_counts(kinds)}; the first said "
                f"`{r['errors'][0].split(': ', 2)[2][:240]}`."
            )
        if r["server_locked"] or r["server_tracebacks"]:
            md(
                f"{setup.label}, {loggers} loggers: the server logged {r['server_tracebacks']} tracebacks and "
                f"'database is locked' {r['server_locked']} times."
            )
    md()


def _counts(counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "0"


if __name__ == "__main__":
    main()
