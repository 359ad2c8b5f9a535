"""Shared fixtures: one tiny model and one real Ray cluster per test session, and a driver for the real CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "demo" / "company_faq.jsonl"


def pytest_collection_modifyitems(config, items):
    """Tests that do not use the shared Ray cluster run first. Some of them start a Ray of their own (the
    quickstart's in-process local Ray), and two Ray instances on one host stall each other's scheduling:
    the shared cluster, once started, lives until the session ends."""
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))  # stable: order kept otherwise


RAY = str(Path(sys.executable).with_name("ray"))


def ray_env(**extra: str) -> dict[str, str]:
    """Environment for `ray start` and its clients: token auth on, as on a production cluster. `ray start`
    refuses token auth until a token exists (a local `ray.init()` creates one, `ray start` does not), so make
    ~/.ray/auth_token the way the Ray docs say to if this machine has none yet."""
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=120)
    return {**os.environ, "RAY_AUTH_MODE": "token", **extra}


def stop_ray(*nodes: subprocess.Popen, address: str) -> None:
    """Stop `ray start --block` processes and every process under them (GCS, raylet, agents, workers, job
    drivers), and return only once all are gone: a Ray process left behind stalls the next Ray on this host.
    Like `ray stop`, drop the machine's record of the cluster at `address` (/tmp/ray/ray_current_cluster).

    SIGTERM lets `ray start --block` stop its node cleanly; the family is listed before that, since a worker
    whose raylet has exited is re-parented and no longer found under it. Whatever outlives 60 s is killed.
    """
    import psutil

    family: list[psutil.Process] = []
    for node in nodes:
        try:
            root = psutil.Process(node.pid)
            family += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for node in nodes:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            pass
    _, alive = psutil.wait_procs(family, timeout=60)
    for proc in alive:
        proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=30)
    assert not alive, f"Ray processes survived SIGKILL: {alive}"
    for node in nodes:
        node.wait(10)  # reap
    from ray._private.utils import get_ray_address_file

    record = Path(get_ray_address_file(None))
    if record.exists() and record.read_text().strip().endswith(f":{address.rsplit(':', 1)[-1]}"):
        record.unlink()


def alive_actors(class_name: str) -> list[int]:
    """Process ids of the live Ray actors of a class on the cluster RAY_ADDRESS names (Ray's state API).

    Asked from a fresh process: Ray reads RAY_AUTH_MODE once per process, and this one may have used Ray
    before the shared cluster set it."""
    query = (
        "import json; from ray.util.state import list_actors; "
        f"print(json.dumps([a.pid for a in list_actors(filters=[('class_name', '=', {class_name!r}), "
        "('state', '=', 'ALIVE')], timeout=60)]))"
    )
    r = subprocess.run([sys.executable, "-c", query], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 900, env: dict[str, str] | None = None):
    """Run `python -m adaptune ARGS` as a user would, returning the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "adaptune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def committed_state(run_dir: Path) -> dict[str, Any] | None:
    """The trainer state of the latest checkpoint Ray Train has committed to a run's snapshot: what a restarted
    run resumes from. A checkpoint directory written but not committed yet is not resumed from (the run starts
    over), so tests that kill something wait for this, not for a directory."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being rewritten as we read
        return None
    if not latest:
        return None
    return json.loads((run_dir / latest["checkpoint_dir_name"] / "trainer_state.json").read_text())


class Background:
    """`python -m adaptune ARGS` running in its own session, output to files (a pipe nobody reads would fill up
    with Ray's logs and block it)."""

    def __init__(self, *args: str, logs: Path):
        self.out, self.err = logs / "stdout.txt", logs / "stderr.txt"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adaptune", *args],
            cwd=REPO,
            env=os.environ.copy(),
            stdout=self.out.open("w"),
            stderr=self.err.open("w"),
            start_new_session=True,
        )

    def wait_until(self, condition, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"exited early: {self.err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "timed out waiting"
            time.sleep(0.5)

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 900) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode, self.out.read_text(), self.err.read_text()


@pytest.fixture(autouse=True)
def _mlflow_uris_stay_in_their_test():
    """`mlflow.set_tracking_uri()` also sets MLFLOW_TRACKING_URI in os.environ, which every later CLI run of the
    session would inherit (and track to that server instead of its own store): give the variables back after
    each test."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {n: os.environ.get(n) for n in names}
    yield
    for n, v in saved.items():
        if v is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = v
    # ... and MLflow's own module-level URIs, which outlive the variables: a registry URI set by one test (an
    # embedded store) would take a later test's `mlflow.register_model` to that store instead of its server.
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        registry_utils._registry_uri = None
        tracking_utils._tracking_uri = None


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama-style model with a tokenizer trained on the demo data, briefly pre-trained."""
    from adaptune.demo.build import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("tiny") / "model", DEMO_DATA, pretrain_steps=150)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from adaptune.data import load_tokenizer

    return load_tokenizer(str(tiny_model))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real single-node Ray cluster (`ray start --head`) on free ports, shared by the session.

    Ray's default GCS port 6379 is taken by Redis on these machines, hence the free port. Clients find it
    through RAY_ADDRESS; `ray start` enables token auth, so clients run with RAY_AUTH_MODE=token.
    """
    port = free_port()
    from adaptune.driver.run import WORKER_GROUP_START_TIMEOUT_S

    env = ray_env(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=str(WORKER_GROUP_START_TIMEOUT_S))
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    proc = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=4",
            "--disable-usage-stats",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    probe = f"import ray; ray.init(address='{address}', logging_level='ERROR'); print(ray.cluster_resources()['CPU'])"
    deadline = time.monotonic() + 120
    while True:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"Ray head did not come up: {log.read_text()[-2000:]}\n{r.stderr[-2000:]}")
        time.sleep(2)
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token")
    try:
        yield address
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop_ray(proc, address=address)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback with a fresh PostgreSQL database and proxied artifacts, shared by the
    session, stopped by its process id and its database dropped at the end."""
    from .mlflow_server import mlflow_server as start

    with start(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def sweep_config(model_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small sweep on the demo data for the tiny model; `sections` are merged over the defaults."""
    cfg: dict[str, Any] = {
        "name": "test",
        "model": {"path": str(model_dir)},
        "data": {"path": str(DEMO_DATA), "val_fraction": 0.1, "max_seq_length": 192},
        "lora": {"r": 8, "alpha": 16, "target_modules": "attention"},
        "train": {"learning_rate": 3e-3, "max_steps": 30, "micro_batch_size": 8, "eval_every": 10, "warmup_ratio": 0.1},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def cluster_config(storage: Path, **trial: Any) -> dict[str, Any]:
    return {
        "capacity": {"cpus": 4},
        "trial": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2, **trial},
        "deepspeed": {"zero_stage": 2},
        "storage_path": str(storage),
    }
