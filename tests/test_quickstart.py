"""The README's main-job command, run as a new user would: `bash scripts/quickstart.sh` on the embedded
default (a local Ray started in-process, no RAY_ADDRESS), shortened through overrides."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration


def test_quickstart_script_trains_on_the_embedded_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run(
        [
            "bash",
            "scripts/quickstart.sh",
            "train.max_steps=20",
            "train.eval_every=10",
            f"cluster.storage_path={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "search_spaces/quickstart.yaml: ok" in r.stdout
    assert (REPO / "demo-model" / "model.safetensors").is_file()
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["step", "train_loss", "eval_loss"])
    assert [line.split()[0] for line in lines[header + 2 : header + 4]] == ["10", "20"]
    adapter = next(line.split()[-1] for line in lines if line.startswith("adapter "))
    assert adapter.startswith(str(tmp_path / "quickstart" / "train-"))
    assert os.path.isfile(os.path.join(adapter, "adapter_model.safetensors"))
