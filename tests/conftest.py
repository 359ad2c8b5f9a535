"""Shared fixtures: one tiny model and one real Ray cluster per test session, an MLflow server; the hooks that
give every test exactly one tier and order the run. Helpers live in tests/support/, not here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import DEMO_DATA, free_port, tiers
from .support.ray_nodes import RAY, ray_env, stop_ray


def pytest_configure(config):
    config.pluginmanager.register(tiers.TierDurations(config), tiers.PLUGIN)


def pytest_collection_modifyitems(config, items):
    """Every test has exactly one tier (unit, integration, system) or the run fails (tests/support/tiers.py).

    Tests that do not use the shared Ray cluster run first. Some of them start a Ray of their own (the
    quickstart's in-process local Ray), and two Ray instances on one host stall each other's scheduling:
    the shared cluster, once started, lives until the session ends."""
    tiers.check(config, items)
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))  # stable: order kept otherwise


@pytest.fixture(autouse=True)
def _mlflow_uris_stay_in_their_test():
    """A test that uses MLflow's module API itself (`mlflow.set_tracking_uri()` to load a registered model) also
    sets MLFLOW_TRACKING_URI in os.environ, which every later CLI run of the session would inherit (and track to
    that server instead of its own store): give the variables back after each test. adaptune never sets them."""
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
            "--num-cpus=2",  # one per core of these machines
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
    from .support.mlflow_server import mlflow_server as start

    with start(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def search_sweep(ray_cluster, tiny_model, mlflow_server, tmp_path_factory):
    """The suite's one search sweep (see support.search_sweep), shared by the sweep and MLflow modules."""
    from .support.search_sweep import run_search_sweep

    return run_search_sweep(tmp_path_factory.mktemp("search-sweep"), tiny_model, mlflow_server.uri)


@pytest.fixture
def one_rank_group():
    """A real gloo process group of one rank, as a trial's worker has (world size 1)."""
    import torch.distributed as dist

    from .support import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
