"""The sweep's MLflow tracking against the embedded store, in this process: an evaluation that reached a trial's
checkpoint but never reached Tune (a sweep interrupted while the trial evaluated, then resumed from that
checkpoint) is logged at the end of the sweep, once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptune.config import ClusterProfile, SweepConfig
from adaptune.driver.sweep import checkpointed_history, merge_histories
from adaptune.names import TRAINER_STATE
from adaptune.tracking.runs import SweepTracker

pytestmark = pytest.mark.unit


def _evaluation(step: int) -> dict:
    return {"step": step, "eval_loss": 3.0 - step / 100, "perplexity": 20.0}


def _checkpoint(run_dir: Path, index: int, step: int, steps: list[int]) -> None:
    ckpt = run_dir / f"checkpoint_{index:06d}"
    ckpt.mkdir(parents=True)
    state = {"step": step, "history": [_evaluation(s) for s in steps]}
    (ckpt / TRAINER_STATE).write_text(json.dumps(state), encoding="utf-8")


def test_an_evaluation_only_the_checkpoint_has_reaches_mlflow_once(tmp_path):
    sweep = SweepConfig(
        name="t",
        model={"path": "model"},
        data={"path": "data.jsonl"},
        search={"space": {"lora.r": {"choice": [4, 8]}}},
    )
    tracker = SweepTracker(sweep, ClusterProfile(storage_path=str(tmp_path)), "sweep-1", targets={})
    tracker.parent_id = tracker.mlc.create_run(tracker.experiment_id, run_name="sweep-1").info.run_id
    run_id = tracker.child("trial_1", {"lora.r": 4})
    reported = [_evaluation(10), _evaluation(30)]  # what Tune heard: step 20 was cut off by Ctrl-C
    for result in reported:
        tracker.log_result(run_id, result)
    trial_dir = tmp_path / "trials" / "trial_1"
    _checkpoint(trial_dir, 0, 10, [10])
    _checkpoint(trial_dir, 1, 20, [10, 20])  # resumed from here
    _checkpoint(trial_dir, 2, 30, [10, 20, 30])

    histories = {"trial_1": merge_histories(reported, checkpointed_history(trial_dir))}
    rows = [{"trial": "trial_1", "lora.r": 4}]
    assert [h["step"] for h in histories["trial_1"]] == [10, 20, 30]
    assert tracker.backfill(rows, histories) == 1
    assert tracker.backfill(rows, histories) == 0  # once
    logged = tracker.mlc.get_metric_history(run_id, "eval_loss")
    assert sorted((m.step, round(m.value, 6)) for m in logged) == [(10, 2.9), (20, 2.8), (30, 2.7)]


def test_steps_a_stopped_trial_ran_past_its_last_report_are_not_part_of_its_record():
    """ASHA stopped the trial after its step-10 report; its workers had time to evaluate and checkpoint step 20."""
    merged = merge_histories([_evaluation(10)], [_evaluation(10), _evaluation(20)])
    assert [h["step"] for h in merged] == [10]


def test_a_sweep_recorded_end_to_end_on_the_embedded_store_leaves_mlflow_globals_alone(tmp_path, monkeypatch):
    """The seam on an in-process SQLite store: the parent run with its params, config and dataset; a trial's run
    with its params, step metrics, adapter model, test score and final status; a stopped trial KILLED and tagged;
    a converged one FINISHED with its reason; the results, winner and held-out note on the parent; the winner
    registered with its test score, found again by NAME@champion and downloaded back
    (what merge and retrain scoring read). MLflow's process-wide URIs and the environment are as they were
    before, throughout."""
    import os

    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    from adaptune import names
    from adaptune.data import DataManifest
    from adaptune.driver.sweep import write_results
    from adaptune.tracking.models import download_adapter
    from adaptune.tracking.registry import register_winner, resolve_ref

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (tracking_state._tracking_uri, registry_state._registry_uri)
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    sweep = SweepConfig(
        name="shop",
        model={"path": "org/base"},
        data={"path": str(data)},
        search={"space": {"lora.r": {"choice": [4, 8]}}},
    )
    tracker = SweepTracker(sweep, ClusterProfile(storage_path=str(tmp_path)), "sweep-1", targets={})
    counts = {"train": 8, "validation": 2, "test": 0}
    manifest = DataManifest(
        "k", "d" * 64, {}, {}, counts, counts, {}, {}, {}, "instruction", 64, False, 0, str(tmp_path / "prepared")
    )
    parent = tracker.open(manifest, str(tmp_path / "sweep.yaml"), None, resuming=False)
    for trial, r in (("t1", 4), ("t2", 8), ("t3", 4)):
        run_id = tracker.child(trial, {"lora.r": r})
        for step in (10, 20):
            tracker.log_result(run_id, {"step": step, "eval_loss": r / 10 - step / 100, "train_loss": 1.0})
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / names.ADAPTER_CONFIG).write_text("{}", encoding="utf-8")
    rows = [
        {"trial": "t1", "lora.r": 4, "eval_loss": 0.2, "status": names.FINISHED, "reason": "", "adapter": str(adapter)},
        {"trial": "t2", "lora.r": 8, "eval_loss": 0.6, "status": names.STOPPED_EARLY, "reason": "", "adapter": None},
        {"trial": "t3", "lora.r": 4, "eval_loss": 0.4, "status": names.CONVERGED, "reason": "flat", "adapter": None},
    ]
    rows[0][names.TEST_METRIC] = 0.25
    write_results(rows, rows[0], tmp_path, held_out="winner t1 test eval_loss 0.2500")
    models = tracker.close(rows, rows[0], tmp_path, interrupted=False, held_out="winner t1 test eval_loss 0.2500")
    registration = register_winner(
        tracker.mlc,
        "shop",
        models["t1"],
        parent,
        tracker.children["t1"],
        "d" * 64,
        tracker.base,
        "eval_loss",
        0.2,
        0.25,
    )
    resolved = resolve_ref(tracker.mlc, "shop@champion", tracker.uri)
    downloaded, model_config = download_adapter(tracker.uri, resolved.model_uri, resolved.ref, tmp_path / "back")
    assert (tracking_state._tracking_uri, registry_state._registry_uri) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ

    mlc = tracker.mlc
    p = mlc.get_run(parent)
    assert p.info.status == "FINISHED" and p.data.params["search.metric"] == "eval_loss"
    assert p.data.tags[names.TAG_WINNER_TRIAL] == "t1" and p.data.metrics["best_eval_loss"] == 0.2
    assert {a.path for a in mlc.list_artifacts(parent, "results")} == {"results/results.csv", "results/results.json"}
    assert p.data.tags[names.TAG_HELD_OUT] == "winner t1 test eval_loss 0.2500"
    assert p.data.metrics["winner_test_eval_loss"] == 0.25
    t1, t2, t3 = (mlc.get_run(tracker.children[t]) for t in ("t1", "t2", "t3"))
    assert t1.data.metrics[names.TEST_METRIC] == 0.25 and names.TEST_METRIC not in t2.data.metrics
    assert t3.info.status == "FINISHED" and t3.data.tags[names.TAG_STATUS] == "converged"
    assert t3.data.tags[names.TAG_CONVERGED] == "flat" and names.TAG_REASON not in t3.data.tags
    assert mlc.get_model_version("shop", "1").tags[names.TAG_TEST_VALUE] == "0.25"
    assert t1.data.tags[names.TAG_PARENT] == parent and t1.data.params["lora.r"] == "4"
    assert [m.step for m in mlc.get_metric_history(t1.info.run_id, "eval_loss")] == [10, 20]
    assert t1.info.status == "FINISHED" and t1.data.tags[names.TAG_MODEL_ID] == models["t1"]
    assert t2.info.status == "KILLED" and t2.data.tags[names.TAG_STOPPED_EARLY] == "true"
    assert registration.version == "1" and sorted(registration.aliases) == ["challenger", "champion"]
    assert resolved.model_uri == f"models:/{models['t1']}" and resolved.run_id == t1.info.run_id
    assert (downloaded / names.ADAPTER_CONFIG).is_file() and model_config["base_model"] == "org/base"


def test_live_logging_gives_up_on_a_server_gone_mid_request_after_its_few_retries(caplog):
    """What the sweep's live logging runs under (`client_settings(LIVE_RETRIES)`): MLflow's real client against
    a port nobody listens on (a server gone between the probe and the request) retries twice, not its default
    seven with exponential backoff (minutes of Tune's event loop standing still, measured), and the settings
    are the user's again afterwards."""
    import logging
    import os

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from adaptune.tracking.runs import LIVE_RETRIES
    from adaptune.tracking.store import client_settings

    from .support import free_port

    mlc = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    before = {k: os.environ.get(k) for k in LIVE_RETRIES}
    with caplog.at_level(logging.WARNING, logger="urllib3"), client_settings(LIVE_RETRIES):
        with pytest.raises(MlflowException):
            mlc.get_experiment("0")
    retries = [r for r in caplog.records if "Retrying (Retry(" in r.getMessage()]
    assert len(retries) == int(LIVE_RETRIES["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), [r.getMessage() for r in retries]
    assert {k: os.environ.get(k) for k in LIVE_RETRIES} == before
