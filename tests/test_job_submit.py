"""`ray job submit` for real: a two-node Ray cluster on loopback (2 CPUs per node; trial workers take 2 CPUs
each, so a 2-worker trial must span both nodes), sweeps submitted with the real `ray job submit` command
line, their status and logs, and `ray job stop` followed by a resumed submission."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from adaptune.driver.run import WORKER_GROUP_START_TIMEOUT_S

from .support import REPO, free_port, sweep_config, write_yaml
from .support.ray_nodes import RAY, ray_env, stop_ray

pytestmark = pytest.mark.system


def _ray_start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [RAY, "start", "--block", "--num-cpus=2", "--object-store-memory=400000000", "--disable-usage-stats", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head and a worker node, each with 2 CPUs and its own ports, the job server on the head."""
    assert "RAY_ADDRESS" not in os.environ, "the shared Ray cluster is up: two Ray instances on one host stall"
    logs = tmp_path_factory.mktemp("two-nodes")
    env = ray_env(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=str(WORKER_GROUP_START_TIMEOUT_S))
    port, dashboard = free_port(), free_port()
    head = _ray_start(
        [
            "--head",
            f"--port={port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}",
        ],
        logs / "head.log",
        env,
    )
    address = f"127.0.0.1:{port}"
    nodes = [head]
    # Its own temp dir: nodes sharing one (as two nodes on one host would) clean up each other's runtime
    # environments, the job's unpacked working directory included. A short path: Ray's sockets live in it.
    worker_tmp = Path(f"/tmp/adaptune-rw-{uuid.uuid4().hex[:6]}")
    try:
        _wait_for_cpus(address, 2, env, head, logs / "head.log")
        worker = _ray_start(
            [
                f"--address={address}",
                f"--temp-dir={worker_tmp}",
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}",
            ],
            logs / "worker.log",
            env,
        )
        nodes.insert(0, worker)
        _wait_for_cpus(address, 4, env, worker, logs / "worker.log")
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        stop_ray(*nodes, address=address)
        shutil.rmtree(worker_tmp, ignore_errors=True)


def _wait_for_cpus(address: str, cpus: int, env: dict[str, str], proc: subprocess.Popen, log: Path) -> None:
    probe = f"import ray; ray.init(address='{address}', logging_level='ERROR'); print(ray.cluster_resources()['CPU'])"
    deadline = time.monotonic() + 180
    while True:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=90)
        if r.returncode == 0 and float(r.stdout.strip().splitlines()[-1]) >= cpus:
            return
        if time.monotonic() > deadline or proc.poll() is not None:
            pytest.fail(f"Ray node did not come up: {log.read_text()[-2000:]}\n{r.stderr[-2000:]}")
        time.sleep(2)


@pytest.fixture
def shared_storage():
    """Storage every node reaches. Both nodes share this host; validate refuses /tmp for a multi-node cluster
    (it is node-local on real clusters), so the test uses the host's shared-memory filesystem."""
    path = Path("/dev/shm") / f"adaptune-jobtest-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _files(
    tmp_path: Path, tiny_model: Path, storage: Path, max_steps: int, max_failures: int = 1, num_workers: int = 2
) -> tuple[Path, Path]:
    cfg = sweep_config(tiny_model, train={"max_steps": max_steps, "eval_every": 5})
    cfg["name"] = "job"
    cfg["search"] = {"space": {"lora.r": {"grid": [4, 8]}}, "algorithm": "grid", "scheduler": "none"}
    sweep = write_yaml(tmp_path / "sweep.yaml", cfg)
    cluster = write_yaml(
        tmp_path / "cluster.yaml",
        {
            "capacity": {"nodes": 2, "cpus": 4},
            "trial": {"num_workers": num_workers, "cpus_per_worker": 2, "max_failures": max_failures},
            "deepspeed": {"zero_stage": 2},
            "storage_path": str(storage),
        },
    )
    return sweep, cluster


def _submit(cluster: dict, job_id: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess:
    """The documented command line: `ray job submit --working-dir . -- adaptune sweep ...` (the entrypoint names
    this environment's Python, which has adaptune installed, as an image would)."""
    runtime_env = {"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "180", "TOKENIZERS_PARALLELISM": "false"}}
    cmd = [
        RAY,
        "job",
        "submit",
        f"--address={cluster['dashboard']}",
        f"--submission-id={job_id}",
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--entrypoint-num-cpus=0",
        *([] if wait else ["--no-wait"]),
        "--",
        sys.executable,
        "-m",
        "adaptune",
        "--debug",  # a failure in the job's logs comes with its traceback
        "sweep",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=cluster["env"], cwd=REPO)


def _job(cluster: dict, verb: str, job_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", verb, f"--address={cluster['dashboard']}", job_id],
        capture_output=True,
        text=True,
        timeout=600,
        env=cluster["env"],
    )


def _mlflow(storage: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{storage / 'mlflow.db'}"
    mlc = MlflowClient(tracking_uri=uri)
    experiment = mlc.get_experiment_by_name("job").experiment_id
    (parent,) = mlc.search_runs([experiment], "tags.`adaptune.kind` = 'sweep'")
    children = mlc.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, children


def test_a_submitted_sweep_spans_both_nodes_stops_with_ray_job_stop_and_resumes(
    two_nodes, tiny_model, tmp_path, shared_storage
):
    """One sweep submitted, stopped with `ray job stop` at its first checkpoint (a resumable sweep, its runs
    KILLED), then resumed by a second submission that succeeds: its logs show progress and the winner, each
    trial's two workers ran on the two nodes, and results and MLflow runs are on the shared storage."""
    sweep, cluster = _files(tmp_path, tiny_model, shared_storage, max_steps=20)
    job_id = f"adaptune-test-{uuid.uuid4().hex[:8]}"
    r = _submit(two_nodes, job_id, str(sweep), "--cluster", str(cluster), wait=False)
    assert r.returncode == 0, r.stderr[-3000:]
    deadline = time.monotonic() + 900
    while not list(shared_storage.glob("job/sweep-*/trials/*/checkpoint_*")):
        assert time.monotonic() < deadline, _job(two_nodes, "logs", job_id).stdout[-3000:]
        time.sleep(2)

    stop = _job(two_nodes, "stop", job_id)
    assert stop.returncode == 0, stop.stderr[-2000:]
    assert "stopped" in _job(two_nodes, "status", job_id).stdout.lower()
    logs = _job(two_nodes, "logs", job_id).stdout
    assert "resume with: adaptune sweep" in logs, logs[-3000:]  # stopped cleanly, not SIGKILLed
    parent, children = _mlflow(shared_storage)
    assert parent.info.status == "KILLED" and children
    assert all(c.info.status in ("KILLED", "FINISHED") for c in children), [c.info.status for c in children]

    (sweep_dir,) = (shared_storage / "job").glob("sweep-*")
    resumed = _submit(two_nodes, f"{job_id}-resume", str(sweep), "--cluster", str(cluster), "--resume", sweep_dir.name)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert "sweep: " in resumed.stdout and "winner   " in resumed.stdout  # the job's logs: progress, the result
    assert "succeeded" in _job(two_nodes, "status", f"{job_id}-resume").stdout.lower()
    results = json.loads((sweep_dir / "results.json").read_text())
    assert [(t["status"], t["steps"]) for t in results["trials"]] == [("finished", 20), ("finished", 20)]
    for trial in results["trials"]:
        state = json.loads((Path(trial["adapter"]).parent / "trainer_state.json").read_text())
        assert len(set(state["nodes"])) == 2, state["nodes"]  # the trial's two workers ran on the two nodes
    again, children = _mlflow(shared_storage)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}


def test_a_sweep_whose_trials_all_fail_is_a_failed_job(two_nodes, tiny_model, tmp_path, shared_storage):
    """Weights cut short after their header (a partial copy): the plan reads only headers and passes, every
    trial then fails to load the model, and the job's status says FAILED, with the reason in its logs."""
    model = tmp_path / "partial-model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    (header_size,) = struct.unpack("<Q", weights.read_bytes()[:8])
    os.truncate(weights, 8 + header_size + 64)
    # No retries: a trial restarted on the same partial weights fails the same way again.
    # One worker a trial (spanning nodes is the other test's): both trials fail at once.
    sweep, cluster = _files(tmp_path, model, shared_storage, max_steps=10, max_failures=0, num_workers=1)
    job_id = f"adaptune-test-{uuid.uuid4().hex[:8]}"
    r = _submit(two_nodes, job_id, str(sweep), "--cluster", str(cluster))
    assert r.returncode != 0, r.stdout[-3000:]
    assert "failed" in _job(two_nodes, "status", job_id).stdout.lower()
    logs = _job(two_nodes, "logs", job_id).stdout
    assert "winner   none: every trial failed; the first:" in logs, logs[-3000:]
    # Each failure reaches the job's log as one line: the trial, the cause, where its traceback and the
    # workers' output are; the tracebacks themselves are in those files, not interleaved here.
    failed = [line for line in logs.splitlines() if line.startswith("adaptune: sweep: ") and " failed: " in line]
    assert len(failed) == 2, logs[-3000:]
    assert all("; the traceback is in " in line and "/job/logs/sweep-" in line for line in failed), failed
    assert "Traceback" not in logs, logs[-3000:]
    (sweep_dir,) = (shared_storage / "job").glob("sweep-*")
    results = json.loads((sweep_dir / "results.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["failed", "failed"]
    parent, children = _mlflow(shared_storage)
    assert parent.info.status == "FAILED", parent.info.status
    assert {c.info.status for c in children} == {"FAILED"}
