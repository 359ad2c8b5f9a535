"""The README's main-job command, run as a new user would: `bash scripts/quickstart.sh` on the embedded
default (a local Ray started in-process, no RAY_ADDRESS), shortened through overrides."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import REPO

pytestmark = pytest.mark.integration


def test_quickstart_script_sweeps_on_the_embedded_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run(
        [
            "bash",
            "scripts/quickstart.sh",
            "search.num_samples=2",
            "train.max_steps=20",
            "train.eval_every=10",
            f"cluster.storage_path={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "search_spaces/quickstart.yaml: ok" in r.stdout
    assert (REPO / "demo-model" / "model.safetensors").is_file()
    assert "best eval_loss" in r.stdout and "winner " in r.stdout
    (sweep_dir,) = (tmp_path / "quickstart").glob("sweep-*")
    results = json.loads((sweep_dir / "results.json").read_text())
    assert len(results["trials"]) == 2
    # The first trial is the quickstart's known-good starting point.
    assert any(t["lora.r"] == 8 and t["train.learning_rate"] == 3e-3 for t in results["trials"])
    assert os.path.isfile(os.path.join(results["winner"]["adapter"], "adapter_model.safetensors"))
    assert f"adapter  {results['winner']['adapter']}" in r.stdout
