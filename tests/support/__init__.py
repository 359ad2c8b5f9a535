"""Helpers the tests share; conftest.py holds only fixtures and hooks.

- this module: the repository's paths, small sweep and cluster configs, and the real CLI (`run_cli`, `Background`);
- `ray_nodes`: `ray start` processes (token auth), stopping them and everything under them, Ray's state API;
- `mlflow_server`: a real `mlflow server` on a fresh PostgreSQL database;
- `mlflow_ui`: checks on the MLflow UI in headless Chromium.
"""

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

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "data" / "demo" / "company_faq.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def sweep_config(model_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small sweep on the demo data for the tiny model; `sections` are merged over the defaults."""
    cfg: dict[str, Any] = {
        "name": "test",
        "model": {"path": str(model_dir)},
        "data": {"path": str(DEMO_DATA), "val_fraction": 0.1, "max_seq_length": 192},
        "lora": {"r": 8, "alpha": 16, "target_modules": "attention"},
        "train": {"learning_rate": 3e-3, "max_steps": 30, "micro_batch_size": 8, "eval_every": 10, "warmup_ratio": 0.1},
        # Generated answers cost each evaluation a few seconds on these CPUs: off here, on where they are tested
        # (the search sweep, the training module's ZeRO-3 and QLoRA trials, the quickstart's defaults).
        "eval": {"samples": 0},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def cluster_config(storage: Path, **trial: Any) -> dict[str, Any]:
    """A profile for the shared test cluster (2 CPUs, one per core): trials of one DeepSpeed worker, two at a
    time. What a second worker adds (data parallelism, ZeRO sharding, a worker lost among several, spanning
    nodes) is tested where it matters, with `num_workers=2`; elsewhere it would only double each trial's
    start-up and compute."""
    return {
        "capacity": {"cpus": 2},
        "trial": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 2, **trial},
        "deepspeed": {"zero_stage": 2},
        "storage_path": str(storage),
    }


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
        logs.mkdir(parents=True, exist_ok=True)
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
