"""The rules of retraining without Ray or MLflow: the lock, the promotion margin, the champion's starting point,
drops and snapshots, and the frozen set's overlap check in `adaptune validate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptune.config import SweepConfig
from adaptune.demo.rows import generate_rows, write_jsonl
from adaptune.errors import DataError
from adaptune.names import FIRST_CHAMPION, KEPT_CHAMPION, PROMOTED
from adaptune.retrain.rules import champion_point, decide
from adaptune.retrain.state import (
    RetrainBusy,
    RetrainLock,
    Round,
    append_history,
    champion_snapshots,
    newest_drop,
    read_drop,
    read_history,
    snapshot_drop,
    training_set,
)

from .support import DEMO_DATA, REPO, run_cli, sweep_config, write_yaml

pytestmark = pytest.mark.unit

FROZEN = REPO / "data" / "demo" / "frozen_eval.jsonl"


def _lock(path, ttl=60.0, rid="retrain-a"):
    return RetrainLock(path, ttl, {"retrain_id": rid, "registered_model": "bot"})


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    path = tmp_path / "lock"
    with _lock(path):
        with pytest.raises(RetrainBusy) as e:
            _lock(path, rid="retrain-b").acquire()
        assert f"another retrain of bot is running: retrain-a (pid {os.getpid()}" in str(e.value)
        assert str(path) in str(e.value)
    assert not path.exists()  # released
    with _lock(path, rid="retrain-b"):
        assert json.loads(path.read_text())["retrain_id"] == "retrain-b"


def test_the_lock_is_taken_over_when_its_holder_stopped_renewing_it(tmp_path):
    path = tmp_path / "lock"
    dead = {"retrain_id": "retrain-dead", "lock_id": "x", "pid": 1, "started_at": 0, "renewed_at": time.time() - 120}
    path.write_text(json.dumps(dead))
    with _lock(path, ttl=60):
        assert json.loads(path.read_text())["retrain_id"] == "retrain-a"
    # A lock renewed recently is respected, however old its retrain.
    path.write_text(json.dumps({**dead, "renewed_at": time.time() - 5}))
    with pytest.raises(RetrainBusy, match="retrain-dead"):
        _lock(path, ttl=60).acquire()


def test_a_running_holder_keeps_renewing_its_lock(tmp_path):
    path = tmp_path / "lock"
    with _lock(path, ttl=0.6):
        first = json.loads(path.read_text())["renewed_at"]
        time.sleep(1.0)  # longer than the ttl: without renewal a second retrain would take over now
        assert json.loads(path.read_text())["renewed_at"] > first
        with pytest.raises(RetrainBusy):
            _lock(path, ttl=0.6, rid="retrain-b").acquire()


def test_a_killed_retrain_leaves_a_lock_that_expires(tmp_path):
    """A process holding the lock is SIGKILLed: the next retrain is refused until the ttl passes, then runs."""
    path = tmp_path / "lock"
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[2]);"
        "from adaptune.retrain.round import RetrainLock;"
        "RetrainLock(__import__('pathlib').Path(sys.argv[1]), 1.5, {'retrain_id': 'retrain-killed', "
        "'registered_model': 'bot'}).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), str(REPO / "platform")], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    holder.kill()
    holder.wait()
    with pytest.raises(RetrainBusy, match="retrain-killed"):
        _lock(path, ttl=1.5).acquire()
    time.sleep(1.6)
    with _lock(path, ttl=1.5):
        assert json.loads(path.read_text())["retrain_id"] == "retrain-a"


@pytest.mark.parametrize(
    ("champion", "challenger", "decision"),
    [
        (None, 2.0, FIRST_CHAMPION),
        (2.0, 1.98, PROMOTED),  # exactly the margin
        (2.0, 1.995, KEPT_CHAMPION),  # better, by less than the margin
        (2.0, 2.3, KEPT_CHAMPION),
    ],
)
def test_promotion_needs_the_margin(champion, challenger, decision):
    got, why = decide(champion, challenger, 0.01)
    assert got == decision
    if decision == KEPT_CHAMPION:
        assert f"{challenger:.4f}" in why and "margin is 0.01" in why


def test_a_challenger_that_forgets_a_guard_set_is_kept_out_whatever_it_gains_on_the_frozen_set():
    guards = {
        "old/drop-1": {"champion": 1.50, "challenger": 1.51},
        "general/tasks": {"champion": 2.0, "challenger": 2.2},
    }
    got, why = decide(2.0, 1.5, 0.01, guards, tolerance=0.02)
    assert got == KEPT_CHAMPION
    assert "beats the champion's 2.0000 by 0.5000" in why and "but it forgets guard set general/tasks" in why
    assert "worse by 0.2000 > guard_tolerance 0.02" in why and "old/drop-1 (" not in why  # within the tolerance
    # every guard set is named with both scores
    assert "guard old/drop-1: eval_loss 1.5100 against the champion's 1.5000" in why
    assert "guard general/tasks: eval_loss 2.2000 against the champion's 2.0000" in why
    guards["general/tasks"]["challenger"] = 2.015  # within the tolerance: promoted
    got, why = decide(2.0, 1.5, 0.01, guards, tolerance=0.02)
    assert got == PROMOTED and "guard general/tasks: eval_loss 2.0150 against the champion's 2.0000" in why
    got, why = decide(None, 1.5, 0.01, {"g": {"challenger": 3.0}}, tolerance=0.02)  # no champion to compare with
    assert got == FIRST_CHAMPION and "guard g: eval_loss 3.0000)" in why


def test_the_champions_values_start_the_search_when_the_space_can_take_them():
    space = {
        "lora.r": {"choice": [8, 16]},
        "lora.alpha": {"multiple_of_rank": {"choice": [1, 2]}},
        "lora.target_modules": {"choice": ["attention", ["q_proj", "v_proj"]]},
        "train.learning_rate": {"loguniform": [1e-4, 1e-3]},
        "lora.dropout": {"uniform": [0.0, 0.1]},
    }
    params = {
        "lora.r": "16",
        "lora.alpha": "32.0",
        "lora.target_modules": '["q_proj", "v_proj"]',
        "train.learning_rate": "0.0005",
        "lora.dropout": "0.3",  # outside the space now: left out
    }
    assert champion_point(params, space) == {
        "lora.r": 16,
        "lora.alpha_per_rank": 2,
        "lora.target_modules": ["q_proj", "v_proj"],
        "train.learning_rate": 0.0005,
    }


def test_drops_are_snapshotted_once_and_history_finds_the_champions_data(tmp_path, tiny_model):
    sweep = SweepConfig.model_validate(sweep_config(tiny_model))
    a, b = tmp_path / "drops" / "2026-11-01", tmp_path / "drops" / "2026-11-02"
    write_jsonl(generate_rows(20), a / "faq.jsonl")
    write_jsonl(generate_rows(30, start=20), b / "faq.jsonl")
    assert newest_drop(str(tmp_path / "drops")) == str(b)
    store = tmp_path / "store"
    snap_a = snapshot_drop(str(a), *read_drop(str(a)), sweep, store)
    assert snap_a.rows == 20 and snapshot_drop(str(a), *read_drop(str(a)), sweep, store) == snap_a
    (a / "faq.jsonl").write_text("changed after the fact\n")  # the snapshot keeps what was trained on
    assert next(Path(snap_a.path).iterdir()).read_text().count("\n") == 20
    snap_b = snapshot_drop(str(b), *read_drop(str(b)), sweep, store)
    both = training_set([snap_a, snap_b], tmp_path / "training")
    assert sorted(p.name for p in both.iterdir()) == [f"000-{snap_a.digest[:12]}", f"001-{snap_b.digest[:12]}"]
    history = tmp_path / "history.jsonl"
    entry = Round("retrain-1", snap_b, [snap_a, snap_b], "1", "2", PROMOTED, "2", {"challenger": 1.0})
    append_history(history, entry)
    assert read_history(history) == [entry]
    assert champion_snapshots(read_history(history), "2") == [snap_a, snap_b]
    assert champion_snapshots(read_history(history), "1") == []


def test_a_bad_row_in_a_drop_is_named(tmp_path, tiny_model):
    sweep = SweepConfig.model_validate(sweep_config(tiny_model))
    drop = tmp_path / "drop.jsonl"
    drop.write_text('{"instruction": "Q", "output": "A"}\n{"instruction": "Q2"}\n')
    with pytest.raises(DataError, match=r"drop.jsonl: line 2: missing column 'output'"):
        snapshot_drop(str(drop), *read_drop(str(drop)), sweep, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_validate_refuses_a_frozen_set_that_overlaps_the_training_data(tmp_path, tiny_model):
    cfg = sweep_config(tiny_model)
    frozen = tmp_path / "frozen.jsonl"
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[5:7]]
    write_jsonl(generate_rows(10, start=5000) + rows, frozen)
    sweep = write_yaml(tmp_path / "sweep.yaml", {**cfg, "retrain": {"frozen_eval_path": str(frozen)}})
    r = run_cli("validate", str(sweep))
    assert r.returncode == 2
    assert (
        f"{frozen}: retrain.frozen_eval_path: line 11 asks what {DEMO_DATA} line 6 asks, and 1 more of its rows are "
        "in the training data" in r.stderr
    )
    ok = write_yaml(tmp_path / "ok.yaml", {**cfg, "retrain": {"frozen_eval_path": str(FROZEN)}})
    assert run_cli("validate", str(ok)).returncode == 0


def test_retrain_needs_a_frozen_set(tmp_path, tiny_model):
    sweep = write_yaml(tmp_path / "sweep.yaml", sweep_config(tiny_model))
    r = run_cli("retrain", str(sweep), "--data", str(DEMO_DATA), f"cluster.storage_path={tmp_path / 'runs'}")
    assert r.returncode == 2
    assert f"{sweep}: retrain.frozen_eval_path: retraining needs a frozen evaluation set" in r.stderr


def test_a_drop_that_holds_frozen_rows_is_refused_before_anything_trains(tmp_path, tiny_model):
    """Checked against the drop as given, before anything reaches MLflow (and again against the training set the
    drop makes): a frozen row in the drop is named, nothing is trained or recorded, and the lock is released."""
    sweep = write_yaml(
        tmp_path / "sweep.yaml", {**sweep_config(tiny_model), "retrain": {"frozen_eval_path": str(FROZEN)}}
    )
    drop = tmp_path / "drops" / "2026-11-22" / "faq.jsonl"
    frozen_rows = [json.loads(line) for line in FROZEN.read_text().splitlines()[:3]]
    write_jsonl(generate_rows(30, start=400) + frozen_rows, drop)
    runs = tmp_path / "runs"
    r = run_cli("retrain", str(sweep), "--data", str(drop.parents[1]), "--newest-drop", f"cluster.storage_path={runs}")
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"{FROZEN}: retrain.frozen_eval_path: line 1 asks what " in r.stderr
    assert f"{drop} line 31 asks, and 2 more of its rows are in the training data" in r.stderr
    home = runs / "retrain" / "test"
    assert not (home / "lock").exists() and not (home / "history.jsonl").exists()
    assert not (runs / "mlflow.db").exists() and not (home / "snapshots").exists()
