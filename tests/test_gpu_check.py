"""bench/gpu_check.py, the check prepared for a GPU machine, in its CPU smoke mode: adaptune's worker code (model
load, 4-bit quantization, LoRA, the DeepSpeed engine, bitsandbytes' optimizer, the train step) and the plain PEFT
loop beside it run end to end, without Ray or MLflow (the GPU machine has neither), so the script does not rot
while no GPU is at hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .support import REPO

pytestmark = pytest.mark.integration  # real DeepSpeed (gloo) and bitsandbytes 4-bit, no Ray

# Ray and MLflow made unimportable, as on the GPU machine, then the script run as its own __main__.
WITHOUT_RAY = (
    "import runpy, sys; sys.modules.update(ray=None, mlflow=None); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_the_gpu_check_runs_end_to_end_in_its_cpu_smoke_mode_without_ray_or_mlflow(tmp_path):
    out = tmp_path / "measured.json"
    script = str(REPO / "bench" / "gpu_check.py")
    r = subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, script, "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == [
        "| plain PEFT + torch, LoRA",
        "| adaptune, LoRA",
        "| plain PEFT + torch, QLoRA",
        "| adaptune, QLoRA",
    ], r.stdout
    assert "QLoRA / LoRA peak memory (adaptune): **" in r.stdout
    measured = json.loads(out.read_text())
    for case in ("plain LoRA", "adaptune LoRA", "plain QLoRA", "adaptune QLoRA"):
        assert measured[case]["tokens_per_s"] > 0 and measured[case]["peak_mb"] > 0, measured[case]
    assert measured["adaptune LoRA"]["trainable"] > 0
