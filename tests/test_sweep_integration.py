"""The sweep for real: `adaptune sweep` on a real Ray cluster (2 CPUs: exactly two 1-worker trials at once),
each trial a DeepSpeed ZeRO-2 TorchTrainer inside a Ray Tune trial. The search itself (ASHA, divergence, the
winner) reads the session's search sweep, which the MLflow module reads too."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from adaptune.names import STOP_REQUEST

from .support import Background, cluster_config, committed_state, run_cli, sweep_config, write_yaml
from .support.ray_nodes import alive_actors

pytestmark = pytest.mark.integration


def _write(tmp_path: Path, tiny_model: Path, search: dict, answering: dict | None = None, **train) -> tuple[Path, Path]:
    cfg = sweep_config(tiny_model, train={"max_steps": 30, "eval_every": 5, **train}, eval=answering or {})
    cfg["search"] = search
    sweep = write_yaml(tmp_path / "sweep.yaml", cfg)
    cluster = write_yaml(tmp_path / "cluster.yaml", cluster_config(tmp_path / "runs"))
    return sweep, cluster


def _results(tmp_path: Path) -> dict:
    (sweep_dir,) = (tmp_path / "runs" / "test").glob("sweep-*")
    return json.loads((sweep_dir / "results.json").read_text())


def test_asha_sweep_stops_trials_early_survives_divergence_and_names_the_best(search_sweep):
    """The session's search sweep (support.search_sweep): six Optuna trials under ASHA, two 1-worker trials at a
    time on a cluster that holds exactly two, a starting point with a learning rate far too high."""
    r, results = search_sweep["r"], search_sweep["results"]
    trials = results["trials"]
    assert len(trials) == 6 and len({t["trial"] for t in trials}) == 6
    statuses = [t["status"] for t in trials]
    assert "stopped early" in statuses, statuses
    (bad,) = [t for t in trials if t["train.learning_rate"] == 10.0]
    assert bad["status"] in ("stopped early", "diverged"), bad
    assert bad["steps"] < 30 and results["winner"]["trial"] != bad["trial"]
    trained = [t for t in trials if t["eval_loss"] is not None]
    assert results["winner"]["eval_loss"] == min(t["eval_loss"] for t in trained)
    assert Path(results["winner"]["adapter"], "adapter_model.safetensors").is_file()
    # Two trials at a time, never more, and the full cluster did not deadlock (the sweep ended).
    running = [int(m) for m in re.findall(r"\| (\d+) running", r.stderr)]
    assert max(running) == 2, [line for line in r.stderr.splitlines() if "sweep:" in line]
    # Every ended trial's workers were told to stop (Tune alone leaves a trial ASHA stopped training to
    # max_steps; test_train_integration shows the workers stopping).
    for t in trials:
        assert (search_sweep["sweep_dir"] / "trials" / t["trial"] / STOP_REQUEST).is_file(), t
    # What the user sees: the table, the winner, and the same results as CSV.
    assert "best eval_loss" in r.stdout and f"winner   {results['winner']['trial']}" in r.stdout
    csv_text = (search_sweep["sweep_dir"] / "results.csv").read_text()
    assert csv_text.count("\n") == 7 and "stopped early" in csv_text


def _trial_states(sweep_dir: Path) -> dict[str, dict]:
    """Latest trainer state per trial (by the inner run's name, the Tune trial id)."""
    out = {}
    for trial in (sweep_dir / "trials").glob("*"):
        checkpoints = sorted(p for p in trial.glob("checkpoint_*") if p.is_dir())
        if checkpoints and (checkpoints[-1] / "trainer_state.json").is_file():
            out[trial.name] = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return out


def _committed_states(sweep_dir: Path) -> dict[str, dict]:
    """Per trial, the trainer state it would resume from (see support.committed_state)."""
    states = {d.name: committed_state(d) for d in (sweep_dir / "trials").glob("*") if d.is_dir()}
    return {name: state for name, state in states.items() if state is not None}


def _each_checkpointed_evaluation_is_in_mlflow_once(tmp_path: Path, sweep_dir: Path) -> None:
    """Every evaluation in a trial's final checkpointed history is in its MLflow run's eval_loss history, once:
    an evaluation that reached the checkpoint but not Tune before the interrupt was lost from MLflow."""
    from mlflow import MlflowClient

    mlc = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlc.get_experiment_by_name("test")
    runs = mlc.search_runs([exp.experiment_id], f"tags.`adaptune.sweep_id` = '{sweep_dir.name}'")
    by_trial = {r.data.tags["adaptune.trial_id"]: r for r in runs if "adaptune.trial_id" in r.data.tags}
    for trial, state in _trial_states(sweep_dir).items():
        logged = sorted(m.step for m in mlc.get_metric_history(by_trial[trial].info.run_id, "eval_loss"))
        assert logged == [h["step"] for h in state["history"]], (trial, logged)


def test_a_sweep_stopped_by_ctrl_c_and_then_by_a_killed_driver_resumes_each_time(ray_cluster, tiny_model, tmp_path):
    """One sweep interrupted twice, the two ways a driver ends early. Ctrl-C while its first two trials train: it
    exits 130 and prints the command that resumes it. That command resumes it; its driver is then killed (no
    clean shutdown, no saved results) once one trial has finished and another is partway. `--resume` finishes
    it: every grid point once, finished trials not trained again, interrupted ones continued from their last
    committed checkpoint each time, every trial's MLflow run found again."""
    sweep, cluster = _write(
        tmp_path,
        tiny_model,
        {
            "space": {"lora.r": {"grid": [4, 8, 16, 32]}},
            "algorithm": "grid",
            "scheduler": "none",
        },
        max_steps=40,
    )
    runs = tmp_path / "runs" / "test"
    first = Background("sweep", str(sweep), "--cluster", str(cluster), logs=tmp_path / "first")
    first.wait_until(lambda: any(runs.glob("sweep-*/trials/*/checkpoint_2*")))
    first.signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    code, out, err = first.finish(600)
    assert code == 130, err[-3000:]
    (sweep_dir,) = runs.glob("sweep-*")
    resume = f"resume with: adaptune sweep {sweep} --cluster {cluster} --resume {sweep_dir.name}"
    assert resume in err
    assert json.loads((sweep_dir / "results.json").read_text())["interrupted"] is True

    second = Background(*resume.removeprefix("resume with: adaptune ").split(), logs=tmp_path / "second")

    def one_done_one_early() -> bool:
        states = _committed_states(sweep_dir)
        return any(s["step"] == 40 for s in states.values()) and any(s["step"] <= 10 for s in states.values())

    second.wait_until(one_done_one_early)
    second.signal(signal.SIGKILL)  # the driver dies: no clean shutdown, no saved results
    second.finish(60)
    # Ray tears the dead driver's actors down owner by owner, and a trial's workers may train on for a few
    # seconds: what was interrupted is what the trials had committed once their workers were gone.
    deadline = time.monotonic() + 180
    while alive_actors("RayTrainWorker"):
        assert time.monotonic() < deadline, "the killed driver's trial workers are still alive after 180 s"
        time.sleep(2)
    committed = _committed_states(sweep_dir)  # what Ray Train resumes a trial from
    written = _trial_states(sweep_dir)  # the newest checkpoint on disk, committed or not
    done = [k for k, s in written.items() if s["step"] == 40]  # finished: replayed on resume, not retrained
    partial = [k for k, s in committed.items() if s["step"] < 40 and k not in done]
    assert done and partial, {k: (s["step"], committed.get(k, {}).get("step")) for k, s in written.items()}
    r = run_cli("sweep", str(sweep), "--cluster", str(cluster), "--resume", timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    results = _results(tmp_path)
    assert results["interrupted"] is False
    assert sorted(t["lora.r"] for t in results["trials"]) == [4, 8, 16, 32]  # each exactly once
    assert all(t["status"] == "finished" and t["steps"] == 40 for t in results["trials"])
    after = _trial_states(sweep_dir)
    # The Ctrl-C resume: the two trials that were training went on from a checkpoint (a restart each).
    assert sum(1 for s in after.values() if s["restarts"]) >= 2, {k: s["restarts"] for k, s in after.items()}
    for k in done:  # finished trials were not run again
        assert len(after[k]["history"]) == len(written[k]["history"]) and after[k]["restarts"] == written[k]["restarts"]
    for k in partial:  # the interrupted trial continued from its last committed checkpoint
        restarts = after[k]["restarts"]
        assert after[k]["step"] == 40 and restarts == [*committed[k]["restarts"], committed[k]["step"]], restarts
    # ... and in MLflow (the embedded store): the resumed sweep found its parent run and each trial's run again.
    from mlflow import MlflowClient

    mlc = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlc.get_experiment_by_name("test")
    (parent,) = mlc.search_runs(
        [exp.experiment_id], f"tags.`adaptune.sweep_id` = '{sweep_dir.name}' and tags.`adaptune.kind` = 'sweep'"
    )
    children = mlc.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["adaptune.trial_id"] for c in children) == sorted(t["trial"] for t in results["trials"])
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    _each_checkpointed_evaluation_is_in_mlflow_once(tmp_path, sweep_dir)


def test_trials_that_stop_improving_end_converged_alongside_asha(ray_cluster, tiny_model, tmp_path):
    """The search on a score of generated answers (`token_f1`, higher is better), which ASHA and early stopping
    then work on: `train.early_stopping` that no gain can satisfy (min_delta 10, patience 2) ends each trial at
    its third evaluation unless ASHA stops it first: `converged`, not `stopped early`, in the printed table,
    results.json and .csv, and MLflow (a finished run, tagged with the reason); a converged trial can win."""
    sweep, cluster = _write(
        tmp_path,
        tiny_model,
        {
            "space": {"lora.r": {"grid": [4, 8]}},
            "algorithm": "grid",
            "scheduler": "asha",
            "asha": {"grace_period": 1, "reduction_factor": 2},
            "metric": "token_f1",
            "mode": "max",
        },
        answering={"samples": 4, "max_new_tokens": 8},
        max_steps=40,
        early_stopping={"patience": 2, "min_delta": 10.0},
    )
    r = run_cli("sweep", str(sweep), "--cluster", str(cluster), timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    results = _results(tmp_path)
    trials = results["trials"]
    assert {t["status"] for t in trials} <= {"converged", "stopped early"} and all(t["steps"] <= 15 for t in trials)
    converged = [t for t in trials if t["status"] == "converged"]
    assert converged, trials  # of two trials reaching each round together, ASHA keeps the better one going
    for t in converged:
        assert t["steps"] == 15, t
        assert (
            t["reason"] == "token_f1 did not improve by more than 10 in 2 evaluation round(s) after step 5 "
            "(train.early_stopping)"
        ), t["reason"]
    assert all(t["adapter"] for t in converged)  # a converged trial's adapter can win (the best by token_f1 does)
    assert results["winner"]["token_f1"] == max(t["token_f1"] for t in trials)
    assert "best token_f1" in r.stdout  # the table's metric column
    # No test split: the output says what the winner's figure is.
    assert "test     the winner's token_f1 is a validation score, on the set it was chosen on" in r.stdout
    assert results["held_out"].startswith("the winner's token_f1 is a validation score")
    assert " converged " in r.stdout and re.search(r"\| .*[1-9]\d* converged", r.stderr)  # the table; progress counts
    (sweep_dir,) = (tmp_path / "runs" / "test").glob("sweep-*")
    assert "converged" in (sweep_dir / "results.csv").read_text()
    from mlflow import MlflowClient

    mlc = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlc.get_experiment_by_name("test")
    by_trial = {
        run.data.tags["adaptune.trial_id"]: run
        for run in mlc.search_runs([exp.experiment_id], "tags.`adaptune.kind` = 'trial'")
    }
    for t in converged:
        run = by_trial[t["trial"]]
        assert run.info.status == "FINISHED" and run.data.tags["adaptune.status"] == "converged"
        assert run.data.tags["adaptune.converged"] == t["reason"]
        assert "adaptune.stopped_early" not in run.data.tags


def test_a_trial_returns_only_once_tune_has_taken_its_train_runs_last_report(ray_cluster, tmp_path):
    """Ray 2.60 hangs a trial whose training returns while the Train controller's last report still waits for
    the trial's main thread (busy with the previous one): the main thread then blocks forever putting it behind
    Tune's own final result. `launch_training` waits for Tune to take every report first (support.tune_handover
    reproduces the race with Tune's own queue actor and a slow result callback; without the wait it hangs)."""
    import subprocess
    import sys

    from .support import REPO
    from .support.tune_handover import REPORTS

    r = subprocess.run(
        [sys.executable, "-m", "tests.support.tune_handover", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"last step {REPORTS}" in r.stdout, r.stdout[-2000:]
