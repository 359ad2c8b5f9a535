"""MLflow for real: the session's Optuna sweep (support.search_sweep) on a real Ray cluster reporting to a real
`mlflow server` backed by PostgreSQL; the held-out test scores; the registry's aliases; a person moving
`champion` to another version; `adaptune merge` of the champion; and the MLflow UI in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support import REPO, run_cli
from .support.search_sweep import EVAL_EVERY, EVAL_SAMPLES, MODEL, USER_SCORER, user_scorer_fails_on

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "test-artifacts"
SCORES = ("exact_match", "token_f1", "rouge_l")  # eval.scorers' default


@pytest.fixture
def sweep_run(search_sweep):
    """The session's search sweep (support.search_sweep): six Optuna trials under ASHA, tracked by the shared
    MLflow server."""
    return search_sweep


def test_parent_run_has_one_child_per_trial_with_params_metrics_and_status(sweep_run, tiny_model):
    results, mlc, parent, children = (sweep_run[k] for k in ("results", "mlc", "parent", "children"))
    trials = {t["trial"]: t for t in results["trials"]}
    assert len(trials) == 6
    by_trial = {c.data.tags["adaptune.trial_id"]: c for c in children}
    assert sorted(by_trial) == sorted(trials), "exactly one child run per trial"
    expected_status = {"finished": "FINISHED", "stopped early": "KILLED", "diverged": "FAILED"}
    seen_failures: set[bool] = set()
    for trial_id, row in trials.items():
        run = by_trial[trial_id]
        p = run.data.params
        assert p["lora.r"] == str(row["lora.r"]) and p["lora.target_modules"] == row["lora.target_modules"]
        assert float(p["train.learning_rate"]) == pytest.approx(row["train.learning_rate"])
        assert p["deepspeed.zero_stage"] == "2" and p["trial.num_workers"] == "1" and p["quantization.mode"] == "none"
        assert p["lora.alpha"] and p["lora.target_modules.resolved"]
        assert run.info.status == expected_status[row["status"]], (trial_id, row["status"], run.info.status)
        if row["status"] == "stopped early":
            assert run.data.tags["adaptune.stopped_early"] == "true"
        if row["status"] == "diverged":  # the starting point with a learning rate far too high
            assert run.data.tags["adaptune.failure_reason"].startswith("loss became NaN/inf or exploded")
            continue
        history = mlc.get_metric_history(run.info.run_id, "eval_loss")
        evaluations = list(range(EVAL_EVERY, row["steps"] + 1, EVAL_EVERY))
        assert sorted(m.step for m in history) == evaluations  # once per evaluation
        assert min(m.value for m in history) == pytest.approx(row["eval_loss"])
        reported = ("perplexity", "train_loss", "tokens_per_s", "peak_memory_mb", "trainable_params")
        assert set(reported) <= set(run.data.metrics), run.data.metrics
        if row["adapter"] is None:  # a stopped trial whose recorded best checkpoint Ray's retention removed
            assert row["status"] == "stopped early" and row["reason"].startswith("no adapter: the checkpoint of")
            assert run.data.tags["adaptune.failure_reason"] == row["reason"]
            continue
        assert "adapter_size_mb" in run.data.metrics and run.data.tags.get("adaptune.adapter_model_id")
        # What it cost, and whether it is in the Pareto set (no other trial both better and cheaper).
        assert run.data.metrics["worker_s"] == pytest.approx(row["worker_s"]) and row["worker_s"] > 0
        assert run.data.metrics["tokens_trained"] == row["tokens_trained"] > 0
        assert row["adapter_mb"] > 0 and row["trainable_params"] > 0 and row["peak_memory_mb"] > 0
        assert run.data.tags["adaptune.pareto"] == str(row["pareto"]).lower()
        # The generated answers' scores at every evaluation, and the kept evaluation's answers as a table.
        for score in SCORES:
            assert sorted(m.step for m in mlc.get_metric_history(run.info.run_id, score)) == evaluations, score
            assert 0.0 <= row[score] <= 1.0, row
        table = json.loads(Path(mlc.download_artifacts(run.info.run_id, "eval/answers.json")).read_text())
        assert {"step", "prompt", "reference", "answer", *SCORES} <= set(table["columns"]), table["columns"]
        assert len(table["data"]) == EVAL_SAMPLES
        # the user's scorer: missing exactly where it raised, present elsewhere
        for answer in (dict(zip(table["columns"], r, strict=True)) for r in table["data"]):
            failed = user_scorer_fails_on(answer["prompt"])
            assert (answer[USER_SCORER] is None) == failed, answer
            seen_failures.add(failed)

    assert seen_failures == {True, False}  # some answers the user's scorer failed on, some it scored
    # The workers' warnings about it are in the sweep's log file (named on the terminal's first line), not on it.
    err = sweep_run["r"].stderr
    assert "Traceback" not in err and f"scorer '{USER_SCORER}'" not in err
    (log_line,) = [line for line in err.splitlines() if line.startswith("adaptune: log ")]
    logs = Path(log_line.split()[2].rstrip(":")).read_text(encoding="utf-8")
    assert f"eval: scorer '{USER_SCORER}' failed on answer" in logs and "that score is missing" in logs

    # The parent: config, results and plots as artifacts, the data with our digest, versions, the winner.
    pid = parent.info.run_id
    files = {a.path for d in ("config", "results", "plots") for a in mlc.list_artifacts(pid, d)}
    assert {
        "config/sweep.yaml",
        "config/cluster.yaml",
        "config/search_space.yaml",
        "results/results.csv",
        "plots/eval_loss_curves.png",
        "plots/eval_loss_by_value.png",
        "plots/quality_vs_cost.png",
    } <= files, files
    manifest = json.loads(Path(mlc.download_artifacts(pid, "data/manifest.json")).read_text())
    (dataset,) = mlc.get_run(pid).inputs.dataset_inputs
    assert dataset.dataset.digest == manifest["digest"][:36] and parent.data.params["data.digest"] == manifest["digest"]
    assert parent.data.params["model.path"] == str(tiny_model.resolve())
    assert parent.data.params["version.ray"].startswith("2.") and "version.deepspeed" in parent.data.params
    assert parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.tags["adaptune.winner_trial"] == results["winner"]["trial"]
    front = [t["trial"] for t in results["trials"] if t["pareto"]]
    assert results["winner"]["trial"] in front  # nothing is better than the winner, so nothing better and cheaper
    assert parent.data.tags["adaptune.pareto"] == ",".join(front)
    assert mlc.get_run(pid).info.status == "FINISHED"


def test_finalists_are_scored_on_the_held_out_test_split_next_to_validation(sweep_run):
    """The three best trials are the finalists (search.finalists defaults to 3), scored on the 40 test rows,
    which took no part in choosing; the scores are in the results, on each finalist's run, on the parent and on
    the registered version; the others have none; the winner is still the validation pick."""
    results, mlc, parent, children = (sweep_run[k] for k in ("results", "mlc", "parent", "children"))
    trained = sorted((t for t in results["trials"] if t["adapter"]), key=lambda t: t["eval_loss"])
    finalists, others = trained[:3], trained[3:]
    assert len(finalists) == 3 and all(t["test_eval_loss"] > 0 for t in finalists)
    assert all(t.get("test_eval_loss") is None for t in [*others, *(t for t in results["trials"] if not t["adapter"])])
    winner = results["winner"]
    assert winner["trial"] == finalists[0]["trial"]  # chosen on validation
    note = results["held_out"]
    assert note.startswith(f"winner {winner['trial']} test eval_loss {winner['test_eval_loss']:.4f} on 40 held-out")
    assert f"test     {note}" in sweep_run["r"].stdout and "test eval_loss" in sweep_run["r"].stdout
    by_trial = {c.data.tags["adaptune.trial_id"]: c for c in children}
    for t in finalists:
        assert by_trial[t["trial"]].data.metrics["test_eval_loss"] == pytest.approx(t["test_eval_loss"])
    assert all("test_eval_loss" not in by_trial[t["trial"]].data.metrics for t in others)
    p = mlc.get_run(parent.info.run_id)
    assert p.data.tags["adaptune.held_out"] == note
    assert p.data.metrics["winner_test_eval_loss"] == pytest.approx(winner["test_eval_loss"])
    tag = mlc.get_model_version(MODEL, "1").tags["adaptune.test_eval_loss"]
    assert float(tag) == pytest.approx(winner["test_eval_loss"], rel=1e-5)


def test_winner_is_registered_as_challenger_and_first_champion_and_loads_as_a_text_model(sweep_run, mlflow_server):
    import mlflow

    results, mlc, parent = sweep_run["results"], sweep_run["mlc"], sweep_run["parent"]
    model = mlc.get_registered_model(MODEL)
    assert model.aliases == {"challenger": "1", "champion": "1"}
    mv = mlc.get_model_version(MODEL, "1")
    assert mv.tags["adaptune.sweep_run_id"] == parent.info.run_id
    assert float(mv.tags["adaptune.metric_value"]) == pytest.approx(results["winner"]["eval_loss"], rel=1e-5)
    assert mv.tags["adaptune.dataset_digest"] == parent.data.params["data.digest"]
    winner = results["winner"]["trial"]
    assert mv.run_id == next(c.info.run_id for c in sweep_run["children"] if c.data.tags["adaptune.trial_id"] == winner)
    out = sweep_run["r"].stdout
    assert "sweep run" in out and f"{MODEL} version 1 (@challenger, @champion)" in out

    mlflow.set_tracking_uri(mlflow_server.uri)
    generate = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = generate.predict(["How do I reset the Nimbus Router X2?"], params={"max_new_tokens": 8})
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)


def test_moving_champion_makes_merge_merge_that_version(sweep_run, mlflow_server, tmp_path):
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    results, mlc = sweep_run["results"], sweep_run["mlc"]
    # What a person does in the UI: register another trial's adapter, then move @champion to it.
    other = next(
        c
        for c in sweep_run["children"]
        if c.data.tags["adaptune.trial_id"] != results["winner"]["trial"] and "adaptune.adapter_model_id" in c.data.tags
    )
    mlflow.set_tracking_uri(mlflow_server.uri)
    v2 = mlflow.register_model(f"models:/{other.data.tags['adaptune.adapter_model_id']}", MODEL)
    mlc.set_registered_model_alias(MODEL, "champion", v2.version)

    out = tmp_path / "merged"
    r = run_cli("merge", f"{MODEL}@champion", "--out", str(out), "--tracking-uri", mlflow_server.uri)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{MODEL} version {v2.version}" in r.stdout and "largest logit difference" in r.stdout

    merged_versions = mlc.search_model_versions(f"name = '{MODEL}-merged'")
    assert [m.tags["adaptune.adapter_version"] for m in merged_versions] == [str(v2.version)]
    assert sorted(p.suffix for p in out.glob("*.safetensors")) and not list(out.glob("*.bin"))

    # The merged model, loaded with plain transformers, is base + the champion's adapter (not version 1's).
    def adapter_logits(version: str, ids: torch.Tensor) -> torch.Tensor:
        uri = f"models:/{MODEL}/{version}"
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / version)))
        base = AutoModelForCausalLM.from_pretrained(_base(local), dtype=torch.float32)
        with torch.no_grad():
            return PeftModel.from_pretrained(base, str(local / "artifacts" / "adapter")).eval()(ids).logits

    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = merged(ids).logits
    assert torch.allclose(got, adapter_logits(v2.version, ids), atol=1e-3)
    assert not torch.allclose(got, adapter_logits("1", ids), atol=1e-3)

    # Unknown aliases and versions list what exists.
    r = run_cli("merge", f"{MODEL}@production", "--out", str(tmp_path / "x"), "--tracking-uri", mlflow_server.uri)
    assert r.returncode == 2 and "@challenger -> version 1" in r.stderr and "@champion" in r.stderr, r.stderr
    r = run_cli("merge", f"{MODEL}/99", "--out", str(tmp_path / "x"), "--tracking-uri", mlflow_server.uri)
    assert r.returncode == 2 and "Versions: 1, 2" in r.stderr, r.stderr
    r = run_cli("merge", "no-such-model@champion", "--out", str(tmp_path / "x"), "--tracking-uri", mlflow_server.uri)
    assert r.returncode == 2 and MODEL in r.stderr, r.stderr


def _base(local: Path) -> str:
    import yaml

    return yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["config"]["base_model"]


def test_mlflow_ui_shows_the_sweep_with_its_trials(sweep_run, mlflow_server):
    from .support.mlflow_ui import check_experiment_page

    ARTIFACTS.mkdir(exist_ok=True)
    text = check_experiment_page(
        mlflow_server.uri,
        sweep_run["experiment"].experiment_id,
        sweep_run["parent"].info.run_name,
        [c.info.run_name for c in sweep_run["children"]],
        ARTIFACTS / "mlflow-experiment-page.png",
    )
    assert sweep_run["parent"].info.run_name in text


def test_mlflow_ui_compares_two_trials_answers_to_the_same_prompt(sweep_run, mlflow_server):
    """The Evaluation view of the experiment (headless Chromium): the trials' answers tables grouped by prompt,
    two trials' answers to the same validation prompt side by side, as someone picking a winner sees them."""
    from .support.mlflow_ui import check_answers_view

    mlc, results = sweep_run["mlc"], sweep_run["results"]
    by_trial = {c.data.tags["adaptune.trial_id"]: c for c in sweep_run["children"]}
    shown = [t["trial"] for t in results["trials"] if t["adapter"]][:2]
    assert len(shown) == 2, results["trials"]
    tables = {}
    for trial in shown:
        path = mlc.download_artifacts(by_trial[trial].info.run_id, "eval/answers.json")
        table = json.loads(Path(path).read_text())
        assert table["columns"][:2] == ["prompt", "answer"]  # what the view groups by and compares
        tables[trial] = {row[0]: row[1] for row in table["data"]}
    prompt = next(iter(tables[shown[0]]))
    assert all(prompt in t for t in tables.values())  # the same fixed prompts for every trial
    ARTIFACTS.mkdir(exist_ok=True)
    runs = {by_trial[t].info.run_id: (by_trial[t].info.run_name, tables[t][prompt]) for t in shown}
    text = check_answers_view(
        mlflow_server.uri,
        sweep_run["experiment"].experiment_id,
        sweep_run["parent"].info.run_name,
        runs,
        prompt,
        ARTIFACTS / "mlflow-answers-compare.png",
    )
    assert "eval/answers.json" in text


def test_adaptune_ui_serves_the_embedded_store_of_a_storage_path_with_spaces(tmp_path):
    """The line a run prints to open the UI, run as a shell would split it, serves that store."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from mlflow import MlflowClient

    from adaptune.config import ClusterProfile
    from adaptune.tracking.server import tracking_uri, ui_command

    from .support import free_port

    store = tmp_path / "company runs" / "q4 sweep"
    uri = tracking_uri(ClusterProfile(storage_path=str(store)))
    store.mkdir(parents=True)
    MlflowClient(tracking_uri=uri).create_experiment("q4-shop")
    words = shlex.split(ui_command(uri))  # what a shell makes of it
    assert words == ["adaptune", "ui", str(store)]
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "adaptune", *words[1:], "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, names = time.monotonic() + 90, None
        while time.monotonic() < deadline and ui.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(url, timeout=5) as answer:
                    names = [e["name"] for e in json.loads(answer.read())["experiments"]]
                break
            except OSError:
                time.sleep(1)
        assert names is not None and "q4-shop" in names, names
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        out, _ = ui.communicate(timeout=30)
    assert out.splitlines()[0] == f"MLflow UI on {uri} at http://127.0.0.1:{port} (Ctrl-C stops it)", out[-2000:]
