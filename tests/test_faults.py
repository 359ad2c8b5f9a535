"""Faults, each ending with nothing lost: a training worker SIGKILLed and the MLflow server stopped and started
again in the middle of one sweep; the storage path filling up mid-run, or unwritable or too small before it.
(A sweep driver killed and resumed: tests/test_sweep_integration.py.)"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from adaptune.tracking.runs import LIVE_RETRIES

from .support import Background, cluster_config, committed_state, run_cli, sweep_config, write_yaml
from .support.ray_nodes import alive_actors

pytestmark = pytest.mark.system

# --------------------------------------------------------------------------------------------------
# Storage: a real filesystem of a fixed size (tmpfs), filled or made read-only
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(where: Path, size_mb: int, read_only: bool = False):
    """A tmpfs of `size_mb` mounted at `where` (needs the mount privilege these machines' root has)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_mb}m" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): storage faults need a filesystem of fixed size")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> int:
    """Write a file in `directory` until the filesystem is full; return the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    try:
        with (directory / "filler.bin").open("wb", buffering=0) as f:
            while True:
                written += f.write(chunk)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    return written


def test_read_only_or_too_small_storage_is_refused_before_anything_starts(tiny_model, tmp_path):
    sweep = write_yaml(tmp_path / "sweep.yaml", sweep_config(tiny_model))
    with small_filesystem(tmp_path / "ro", 16, read_only=True) as ro:
        cluster = write_yaml(tmp_path / "ro.yaml", cluster_config(ro / "runs"))
        r = run_cli("sweep", str(sweep), "--cluster", str(cluster), timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"{cluster}: storage_path: {ro} is on a read-only filesystem" in r.stderr
        assert "Traceback" not in r.stderr and not (ro / "runs").exists()
    with small_filesystem(tmp_path / "small", 16) as small:
        cluster = write_yaml(tmp_path / "small.yaml", cluster_config(small / "runs"))
        r = run_cli("train", str(sweep), "--cluster", str(cluster), timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        assert re.search(rf"{cluster}: storage_path: {small} has 0\.0\d GiB free, less than min_free_gb 1", r.stderr)
        assert "lower min_free_gb" in r.stderr
        assert list(small.iterdir()) == []  # nothing written


def test_storage_filling_up_mid_run_stops_with_an_error_naming_it(ray_cluster, tiny_model, tmp_path):
    sweep = write_yaml(tmp_path / "sweep.yaml", sweep_config(tiny_model, train={"max_steps": 300, "eval_every": 5}))
    with small_filesystem(tmp_path / "store", 64) as store:
        # No retries: a restarted worker finds the same full disk (the message is the same after them).
        profile = {**cluster_config(store / "runs", max_failures=0), "min_free_gb": 0}
        cluster = write_yaml(tmp_path / "cluster.yaml", profile)
        run = Background("train", str(sweep), "--cluster", str(cluster), logs=tmp_path)
        runs = store / "runs" / "test"
        run.wait_until(lambda: any(committed_state(d) for d in runs.glob("train-*")), timeout=600)
        (run_dir,) = runs.glob("train-*")
        before = committed_state(run_dir)
        fill(store)
        full_at = time.monotonic()
        code, out, err = run.finish(900)
        took = time.monotonic() - full_at
        assert code == 1, err[-3000:]
        # (Ray streams the workers' own logs, their traceback included, to the driver's stderr, before and after.)
        (last,) = [line for line in err.splitlines() if line.startswith("adaptune: train failed:")]
        assert last.startswith(f"adaptune: train failed: storage {store / 'runs'} is full (No space left on device; ")
        assert "Free space there, or give storage_path a larger volume" in last, last
        assert took < 600, f"took {took:.0f} s to give up"
        # Nothing already saved is lost: the last committed checkpoint is intact.
        after = committed_state(run_dir)
        assert after is not None and after["step"] >= before["step"]


# --------------------------------------------------------------------------------------------------
# A worker killed and the MLflow server down and back, in one sweep
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def own_mlflow(tmp_path):
    """An `mlflow server` of this test's own (PostgreSQL, loopback): it is stopped and started again."""
    from .support.mlflow_server import mlflow_server

    with mlflow_server(tmp_path / "mlflow") as server:
        yield server


def _steps_logged(mlc, run_id: str) -> list[int]:
    return sorted(m.step for m in mlc.get_metric_history(run_id, "eval_loss"))


def test_sweep_survives_a_killed_worker_and_an_mlflow_outage(ray_cluster, tiny_model, own_mlflow, tmp_path):
    from mlflow import MlflowClient

    cfg = sweep_config(tiny_model, train={"max_steps": 150, "eval_every": 5})
    cfg["name"] = "faults"
    cfg["search"] = {"space": {"lora.r": {"grid": [4, 8]}}, "algorithm": "grid", "scheduler": "none"}
    cfg["mlflow"] = {"register_winner": False}
    sweep = write_yaml(tmp_path / "sweep.yaml", cfg)
    cluster = write_yaml(
        tmp_path / "cluster.yaml", {**cluster_config(tmp_path / "runs"), "mlflow": {"tracking_uri": own_mlflow.uri}}
    )
    mlc = MlflowClient(tracking_uri=own_mlflow.uri)
    run = Background("sweep", str(sweep), "--cluster", str(cluster), logs=tmp_path)
    trials = tmp_path / "runs" / "faults"

    def committed() -> dict[str, int]:
        out = {}
        for d in trials.glob("sweep-*/trials/*"):
            state = committed_state(d) if d.is_dir() else None
            if state is not None:
                out[d.name] = state["step"]
        return out

    def logged_live() -> bool:
        exp = mlc.get_experiment_by_name("faults")
        runs = mlc.search_runs([exp.experiment_id], "tags.`adaptune.kind` = 'trial'") if exp else []
        return any(_steps_logged(mlc, r.info.run_id) for r in runs)

    run.wait_until(lambda: logged_live() and committed(), timeout=600)
    pids = alive_actors("RayTrainWorker")
    assert len(pids) == 2, pids  # two trials of one worker
    own_mlflow.stop()  # the tracking server goes away mid-sweep ...
    down = committed()
    os.kill(pids[-1], signal.SIGKILL)  # ... and a training worker dies while it is gone

    # Training goes on without MLflow: the sweep has seen the outage (an evaluation reached it while the server
    # was down) and every trial that had committed a checkpoint commits two evaluations more.
    def trained_on_without_mlflow() -> bool:
        now = committed()
        seen = "is unreachable; trials go on" in run.err.read_text()
        return seen and all(now.get(t, 0) >= step + 10 for t, step in down.items())

    run.wait_until(trained_on_without_mlflow, timeout=600)
    own_mlflow.start()
    code, out, err = run.finish(1200)
    assert code == 0, err[-4000:]

    (sweep_dir,) = trials.glob("sweep-*")
    results = json.loads((sweep_dir / "results.json").read_text())
    assert sorted(t["lora.r"] for t in results["trials"]) == [4, 8]
    assert all(t["status"] == "finished" and t["steps"] == 150 for t in results["trials"])
    # The sweep's result says what happened, in the printed summary, results.json and the parent run.
    note = results["tracking_note"]
    m = re.fullmatch(
        rf"MLflow server {re.escape(own_mlflow.uri)} was unreachable (\d+) time\(s\) during the sweep \(\d+ s in "
        r"all\): (\d+) evaluation\(s\) could not be logged live; (\d+) were logged late from the trials' histories",
        note,
    )
    assert m and int(m[1]) >= 1 and int(m[2]) >= 1 and int(m[3]) == int(m[2]), note
    assert f"tracking {note}" in out
    # A request the server stopped answering cost the client's few live retries (LIVE_RETRIES), not its
    # default seven with exponential backoff, which held Tune's event loop, and every trial, for minutes.
    (log_file,) = (trials / "logs").glob("sweep-*.log")
    retries = log_file.read_text().count("Retrying (Retry(")
    assert retries <= 2 * int(LIVE_RETRIES["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), retries
    exp = mlc.get_experiment_by_name("faults")
    (parent,) = mlc.search_runs([exp.experiment_id], "tags.`adaptune.kind` = 'sweep'")
    assert parent.data.tags["adaptune.tracking_outage"] == note and parent.info.status == "FINISHED"
    # One run per trial (a worker restart is the same trial, the same run), every evaluation logged exactly once.
    children = mlc.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["adaptune.trial_id"] for c in children) == sorted(t["trial"] for t in results["trials"])
    for child in children:
        assert _steps_logged(mlc, child.info.run_id) == list(range(5, 151, 5)), child.data.tags["adaptune.trial_id"]
        assert child.info.status == "FINISHED"
    # The killed worker's trial resumed from its checkpoint instead of starting over.
    restarted = []
    for trial in results["trials"]:
        ckpts = sorted(p for p in (sweep_dir / "trials" / trial["trial"]).glob("checkpoint_*") if p.is_dir())
        state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
        assert [h["step"] for h in state["history"]] == list(range(5, 151, 5))
        restarted += state["restarts"]
    assert len(restarted) == 1 and 0 < restarted[0] < 150, restarted
