"""Shared fixtures: one tiny model and one real Ray cluster per test session, and a driver for the real CLI."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama-style model with a tokenizer trained on the demo data, briefly pre-trained."""
    from adaptune.demo import build_demo_model

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
    from adaptune.driver import WORKER_GROUP_START_TIMEOUT_S

    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(WORKER_GROUP_START_TIMEOUT_S),
    }
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
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
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops every process it started
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


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
