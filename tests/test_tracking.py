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


def test_the_printed_mlflow_ui_command_works_for_a_store_path_with_spaces(tmp_path):
    import shlex

    from mlflow import MlflowClient

    from adaptune.tracking.server import tracking_uri, ui_command

    store = tmp_path / "company runs" / "q4 sweep"
    uri = tracking_uri(ClusterProfile(storage_path=str(store)))
    store.mkdir(parents=True)
    command = ui_command(uri)
    words = shlex.split(command)  # what a shell makes of it
    assert words[:2] == ["mlflow", "ui"] and words[2:4] == ["--backend-store-uri", uri]
    assert MlflowClient(tracking_uri=words[3]).search_experiments()  # the store opens at that URI


def test_steps_a_stopped_trial_ran_past_its_last_report_are_not_part_of_its_record():
    """ASHA stopped the trial after its step-10 report; its workers had time to evaluate and checkpoint step 20."""
    merged = merge_histories([_evaluation(10)], [_evaluation(10), _evaluation(20)])
    assert [h["step"] for h in merged] == [10]
