"""The README's main-job command, run as a new user would: `bash scripts/quickstart.sh` on the embedded
default (a local Ray started in-process, no RAY_ADDRESS), shortened through overrides."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .support import REPO

pytestmark = pytest.mark.system


@pytest.fixture
def stale_ray_record():
    """What a `ray start` ended without `ray stop` leaves behind: /tmp/ray/ray_current_cluster naming a cluster
    that is gone. Ray's processes look there for the state API; the local Ray must not be misled by it."""
    from ray._private.utils import get_ray_address_file

    from .support import free_port

    record = Path(get_ray_address_file(None))
    saved = record.read_text() if record.exists() else None
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(f"127.0.0.1:{free_port()}")
    yield
    if saved is None:
        record.unlink(missing_ok=True)
    else:
        record.write_text(saved)


def test_quickstart_script_sweeps_registers_and_merges_on_the_embedded_default(tmp_path, stale_ray_record):
    """Two trials one after the other on a 2-CPU machine: the second starts only if the first gave back its
    workers' CPUs, with a stale record of another cluster on the machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI")}
    env["MERGED_DIR"] = str(tmp_path / "merged")

    def run(*command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)

    storage = f"cluster.storage_path={tmp_path}"
    r = run(
        "bash",
        "scripts/quickstart.sh",
        "search.num_samples=2",
        "train.max_steps=20",
        "train.eval_every=10",
        storage,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "search_spaces/quickstart.yaml: ok" in r.stdout
    assert (REPO / "demo-model" / "model.safetensors").is_file()
    assert "best eval_loss" in r.stdout and "winner " in r.stdout
    (sweep_dir,) = (tmp_path / "quickstart").glob("sweep-*")
    results = json.loads((sweep_dir / "results.json").read_text())
    assert len(results["trials"]) == 2
    # The untouched base model is evaluated by the first trial; the second reads its eval_loss from storage.
    states = [json.loads(p.read_text()) for p in sweep_dir.glob("trials/*/checkpoint_*/trainer_state.json")]
    by_trial = {s["base_eval"]: s["base_eval_loss"] for s in states}
    assert sorted(by_trial) == ["computed", "read"] and len(set(by_trial.values())) == 1, by_trial
    # One trial on deck (search.trials_on_deck): the second trial's process started while the first trained, and
    # its workers trained only once the first's had finished (one trial's workers at a time on 2 CPUs).
    latest: dict[str, dict] = {}
    for path in sweep_dir.glob("trials/*/checkpoint_*/trainer_state.json"):
        state, trial = json.loads(path.read_text()), path.parent.parent.name
        if state["step"] >= latest.get(trial, {}).get("step", -1):
            latest[trial] = state

    def steps(timeline: list) -> list[tuple[float, float]]:
        return [(start, start + seconds) for name, start, seconds in timeline if name == "optimizer steps"]

    first, second = sorted((state["timeline"] for state in latest.values()), key=lambda t: steps(t)[0][0])
    assert first[0][0] == second[0][0] == "trial process start", first[0]
    assert second[0][1] < max(start + seconds for _, start, seconds in first), "the second started after the first"
    assert steps(second)[0][0] >= steps(first)[-1][1], (first, second)  # never two trials' workers at once
    # The first trial is the quickstart's known-good starting point.
    assert any(t["lora.r"] == 8 and t["train.learning_rate"] == 3e-3 for t in results["trials"])
    assert os.path.isfile(os.path.join(results["winner"]["adapter"], "adapter_model.safetensors"))
    assert f"adapter  {results['winner']['adapter']}" in r.stdout
    # The quickstart holds out a test split (data.test_fraction): the winner has a score it was not chosen on.
    assert f"test     winner {results['winner']['trial']} test eval_loss" in r.stdout, r.stdout[-3000:]

    # MLflow: the embedded store beside the runs, the winner registered as both aliases, the champion merged.
    store = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert "registry quickstart version 1 (@challenger, @champion)" in r.stdout
    assert "merged   quickstart@champion (quickstart version 1)" in r.stdout
    assert "registry quickstart-merged version 1" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == f"ui       adaptune ui {tmp_path.resolve()}"

    # The terminal holds adaptune's lines only: its log lines, the results table, the merge. What Ray, DeepSpeed
    # and the libraries printed is in the log files the runs named at their start.
    noise = [line for line in r.stderr.splitlines() if not line.startswith("adaptune: ")]
    assert not noise, "\n".join(noise[:40])
    logs = [Path(line.split()[2].rstrip(":")) for line in r.stderr.splitlines() if line.startswith("adaptune: log ")]
    if logs and logs[0] == REPO / "demo-model" / "build.log":  # a fresh clone: the demo model was built first
        logs = logs[1:]
    assert [p.parent for p in logs] == [tmp_path.resolve() / "quickstart" / "logs", tmp_path.resolve() / "logs"], logs
    assert logs[0].name == f"{sweep_dir.name}.log" and logs[1].name.startswith("merge-")
    sweep_log = logs[0].read_text(encoding="utf-8")
    assert "pid=" in sweep_log and "adaptune: sweep: " in sweep_log  # Ray's workers' output, and adaptune's
    # The sweep's table and summary, printed again from its storage by `adaptune results`, line for line.
    again = run(".venv/bin/adaptune", "results", storage, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    shown = again.stdout.strip("\n").splitlines()  # the table's header starts with spaces
    out = r.stdout.splitlines()
    assert shown and shown == out[out.index(shown[0]) : out.index(shown[0]) + len(shown)], again.stdout
    head, tail = out[: out.index(shown[0])], out[out.index(shown[0]) + len(shown) :]
    assert len(head) == 3 and head[0].startswith("setup: ok") and head[1].startswith("demo model "), head
    assert head[2].startswith("search_spaces/quickstart.yaml: ok"), head
    assert [line.split()[0] for line in tail] == ["merged", "check", "registry", "ui"], tail
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.config.model_type == "llama"
    # A version by number on the embedded store (MLflow's SQLite store returns versions as ints).
    by_version = run(
        ".venv/bin/adaptune",
        "merge",
        "quickstart/1",
        "--out",
        str(tmp_path / "v1"),
        "--no-register",
        storage,
        timeout=600,
    )
    assert by_version.returncode == 0, by_version.stderr[-3000:]
    assert "merged   quickstart/1 (quickstart version 1)" in by_version.stdout
    from mlflow import MlflowClient

    mlc = MlflowClient(tracking_uri=store, registry_uri=store)
    experiment = mlc.get_experiment_by_name("quickstart").experiment_id
    (parent,) = mlc.search_runs([experiment], "tags.`adaptune.kind` = 'sweep'")
    assert parent.info.run_name == sweep_dir.name and parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith((tmp_path.resolve() / "mlartifacts").as_uri())
