"""Scheduled retraining for real, against the shared Ray cluster and `mlflow server`: round 1 makes the first
champion, round 2 brings more data of the same kind, round 3 damaged data, round 4 round 3's data again, round 5
a new task that forgets the old one; a second retrain started while round 2 runs is refused; rollback restores the
previous champion."""

from __future__ import annotations

import json
import random
import subprocess
import time

import pytest

from adaptune.demo.rows import generate_rows, write_jsonl

from .support import DEMO_DATA, REPO, Background, cluster_config, run_cli, sweep_config, write_yaml

pytestmark = pytest.mark.integration

MODEL = "retrain-bot"
FROZEN = REPO / "data" / "demo" / "frozen_eval.jsonl"
# Two adapters of equal quality differ by a few hundredths on the 80-row frozen set with the tiny model, so the
# margin that means "measurably better" here is 0.1 nats per response token.
MARGIN = 0.1


def _aliases(mlc) -> dict[str, str]:
    return {a: str(v) for a, v in mlc.get_registered_model(MODEL).aliases.items()}


@pytest.fixture(scope="module", params=["server", "embedded"])
def rounds(request, ray_cluster, tiny_model, tmp_path_factory):
    """All five rounds, one after the other, as a schedule would run them; what each printed and left behind.
    Against an `mlflow server` on PostgreSQL; and rounds 1 and 2 (what each store does differently: the first
    champion, a promotion, the merged model, then rollback) on the embedded SQLite store a new user gets (which
    hands model versions back as ints). Rounds 3 to 5 decide through the same registry calls as round 2."""
    from mlflow import MlflowClient

    work = tmp_path_factory.mktemp(f"retrain-{request.param}")
    cfg = sweep_config(tiny_model, train={"max_steps": 30, "eval_every": 10, "learning_rate": 3e-3})
    cfg["name"] = "retrain-sweep"
    cfg["search"] = {"space": {"lora.r": {"choice": [4, 8]}}, "algorithm": "random", "scheduler": "none"}
    cfg["mlflow"] = {"experiment": "retrain-tests", "registered_model": MODEL}
    cfg["retrain"] = {"frozen_eval_path": str(FROZEN), "margin": MARGIN, "num_samples": 1, "data_mode": "combine"}
    sweep = str(write_yaml(work / "sweep.yaml", cfg))
    if request.param == "server":
        uri = request.getfixturevalue("mlflow_server").uri
        profile = {**cluster_config(work / "runs"), "mlflow": {"tracking_uri": uri}}
    else:
        uri, profile = f"sqlite:///{(work / 'runs').resolve() / 'mlflow.db'}", cluster_config(work / "runs")
    cluster = str(write_yaml(work / "cluster.yaml", profile))
    mlc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    drops = work / "drops"  # the schedule's convention: one dated directory per drop

    def retrain(*args: str):
        return run_cli("retrain", sweep, "--cluster", cluster, *args, timeout=1500)

    out: dict = {"mlc": mlc, "work": work, "sweep": sweep, "cluster": cluster, "merged": work / "merged-champion"}
    # Round 1: the demo data, deliberately under-trained (10 steps at a low rate), so that round 2 can do better.
    out[1] = retrain("--data", str(DEMO_DATA), "retrain.max_steps=10", "train.learning_rate=1e-3")
    out["aliases1"] = _aliases(mlc) if out[1].returncode == 0 else {}

    # Round 2: 400 new rows of the same kind, found as the newest drop; a second retrain is tried meanwhile.
    write_jsonl(generate_rows(400, start=400), drops / "2026-11-02" / "faq.jsonl")
    (work / "round2").mkdir()
    merge = f"retrain.merge_dir={work / 'merged-champion'}"  # a promoted champion is merged for serving
    args = ("retrain", sweep, "--cluster", cluster, "--data", str(drops), "--newest-drop", merge)
    running = Background(*args, logs=work / "round2")
    lock = work / "runs" / "retrain" / MODEL / "lock"
    deadline = time.monotonic() + 300
    while not lock.exists() and running.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    out["lock"] = json.loads(lock.read_text()) if lock.exists() else None
    out["concurrent"] = retrain("--data", str(drops / "2026-11-02"))
    out[2] = subprocess.CompletedProcess(["retrain"], *running.finish(1500))
    out["aliases2"] = _aliases(mlc)
    if request.param == "embedded":
        return out

    # Round 3: damaged data, every response shuffled onto another row's question, trained on alone (`replace`, a
    # broken export). The tiny model learns mostly the responses' language, not which answer goes with which
    # question, so this damage costs it little; what keeps the champion is that the challenger is not better by
    # the margin (see the README).
    damaged = generate_rows(400, start=800)
    responses = [r["output"] for r in damaged]
    random.Random(0).shuffle(responses)
    rows = [{**r, "output": o} for r, o in zip(damaged, responses, strict=True)]
    write_jsonl(rows, drops / "2026-11-03" / "faq.jsonl")
    # Round 2's drop, which round 3 does not train on (replace) and the champion did, guards against forgetting.
    guard = f"retrain.guard_eval_paths=[{drops / '2026-11-02' / 'faq.jsonl'}]"
    out[3] = retrain("--data", str(drops), "--newest-drop", "retrain.data_mode=replace", guard)
    out["aliases3"] = _aliases(mlc)

    # Round 4: round 3's drop again.
    out["runs_before4"] = len(_retrain_runs(mlc))
    out[4] = retrain("--data", str(drops / "2026-11-03"))
    out["aliases4"] = _aliases(mlc)
    out["runs_after4"] = len(_retrain_runs(mlc))
    out["versions4"] = sorted(str(mv.version) for mv in mlc.search_model_versions(f"name = '{MODEL}'"))

    # Round 5: the company's data moves to a new task (sums), and its frozen set with it; the old frozen set (the
    # FAQ) becomes a guard set. The challenger, trained on the sums alone (`replace`), beats the champion on them
    # by far, and has forgotten the FAQ it was not trained on: it must be kept out.
    sums = _sum_rows(480)
    write_jsonl(sums[:400], drops / "2026-11-04" / "sums.jsonl")
    write_jsonl(sums[400:], work / "sums-frozen.jsonl")
    new_task = (f"retrain.frozen_eval_path={work / 'sums-frozen.jsonl'}", f"retrain.guard_eval_paths=[{FROZEN}]")
    out[5] = retrain("--data", str(drops), "--newest-drop", "retrain.data_mode=replace", *new_task)
    out["aliases5"] = _aliases(mlc)
    return out


def _sum_rows(n: int) -> list[dict[str, str]]:
    """n instruction rows of another task than the FAQ, each a different sum."""
    pairs = random.Random(5).sample([(a, b) for a in range(100) for b in range(100)], n)
    return [
        {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."} for a, b in pairs
    ]


def _retrain_runs(mlc) -> list:
    exp = mlc.get_experiment_by_name("retrain-tests")
    return mlc.search_runs([exp.experiment_id], "tags.`adaptune.kind` = 'retrain'", order_by=["start_time ASC"])


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    return r.stdout


def _run_of(rounds, n: int):
    """The n-th MLflow retrain run (rounds 1-3 and 5 each made one, in order)."""
    return _retrain_runs(rounds["mlc"])[n - 1]


def test_round1_makes_the_first_champion_and_records_its_data_and_score(rounds):
    out = _ok(rounds[1])
    assert rounds["aliases1"] == {"champion": "1", "challenger": "1"}
    assert "decision first-champion" in out
    run = _run_of(rounds, 1)
    assert run.info.status == "FINISHED" and run.data.tags["adaptune.decision"] == "first-champion"
    assert run.data.metrics["challenger_frozen_eval_loss"] > 0 and "champion_frozen_eval_loss" not in run.data.metrics
    inputs = {d.dataset.name: d for d in rounds["mlc"].get_run(run.info.run_id).inputs.dataset_inputs}
    (drop,) = [d for name, d in inputs.items() if name.startswith("drop-")]
    assert json.loads(drop.dataset.profile)["num_rows"] == 400
    assert run.data.params["drop.digest"].startswith(drop.dataset.digest)
    assert {t.key: t.value for t in inputs["frozen-eval"].tags}["mlflow.data.context"] == "evaluation"
    # The sweep ran nested under the retrain run, from the sweep file's values (no champion to start from yet).
    (sweep_run,) = rounds["mlc"].search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert sweep_run.data.tags["adaptune.kind"] == "sweep"


def test_a_second_retrain_is_refused_while_one_runs(rounds):
    r = rounds["concurrent"]
    assert r.returncode == 1, r.stderr[-2000:]
    holder = rounds["lock"]
    assert holder and holder["registered_model"] == MODEL
    assert f"another retrain of {MODEL} is running: {holder['retrain_id']}" in r.stderr
    assert f"pid {holder['pid']}" in r.stderr


def test_round2_promotes_if_and_only_if_better_on_the_frozen_set(rounds):
    out = _ok(rounds[2])
    run = _run_of(rounds, 2)
    champion, challenger = (run.data.metrics[f"{k}_frozen_eval_loss"] for k in ("champion", "challenger"))
    assert run.data.params["champion_before"] == "1" and run.data.tags["adaptune.challenger_version"] == "2"
    # combine: the champion's snapshot (the demo data) and the new drop
    inputs = rounds["mlc"].get_run(run.info.run_id).inputs.dataset_inputs
    assert sorted(json.loads(d.dataset.profile)["num_rows"] for d in inputs if d.dataset.name.startswith("drop-")) == [
        400,
        400,
    ]
    assert (
        f"champion version 1: eval_loss {champion:.4f}" in out
        and f"challenger version 2: eval_loss {challenger:.4f}" in out
    )
    # Round 1 trained 10 steps at a low rate, round 2 30 steps on twice the data: it must have done better.
    assert challenger <= champion - MARGIN, (champion, challenger)
    assert rounds["aliases2"] == {"champion": "2", "previous-champion": "1", "challenger": "2"}
    assert run.data.tags["adaptune.decision"] == "promoted"
    # ... and merged into its base model, registered as <model>-merged from version 2
    merged = rounds["merged"]
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert f"merged   {merged}, registered as {MODEL}-merged version 1" in out
    mv = rounds["mlc"].get_model_version(f"{MODEL}-merged", "1")
    assert mv.tags["adaptune.adapter_version"] == "2" and run.data.tags["adaptune.merged_to"] == str(merged)
    # The sweep started from the champion's values.
    (sweep_run,) = rounds["mlc"].search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    (trial,) = rounds["mlc"].search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'"
    )
    first = rounds["mlc"].get_run(rounds["mlc"].get_model_version(MODEL, "1").run_id)
    assert trial.data.params["lora.r"] == first.data.params["lora.r"]


SERVER_ONLY = pytest.mark.parametrize("rounds", ["server"], indirect=True)


@SERVER_ONLY
def test_round3_damaged_data_leaves_the_champion_and_says_why_the_challenger_lost(rounds):
    out = _ok(rounds[3])
    run = _run_of(rounds, 3)
    champion, challenger = (run.data.metrics[f"{k}_frozen_eval_loss"] for k in ("champion", "challenger"))
    assert challenger > champion - MARGIN, (champion, challenger)
    assert rounds["aliases3"] == {"champion": "2", "previous-champion": "1", "challenger": "3"}
    assert run.data.tags["adaptune.decision"] == "kept-champion" and "decision kept-champion" in out
    mv = rounds["mlc"].get_model_version(MODEL, "3")
    assert mv.tags["adaptune.retrain.decision"] == "kept-champion"
    assert f"the champion's {champion:.4f}" in mv.tags["adaptune.retrain.reason"]
    # The guard set (round 2's drop) scored for both, named with both scores in the output, the reason and MLflow.
    # (Which does better there is the tiny model's business: it learns mostly the language, which damage keeps.)
    guard = str(rounds["work"] / "drops" / "2026-11-02" / "faq.jsonl")
    assert run.data.tags["adaptune.guard0"] == guard
    g_champion, g_challenger = (run.data.metrics[f"guard0_{k}_eval_loss"] for k in ("champion", "challenger"))
    assert g_champion > 0 and g_challenger > 0
    named = f"guard {guard}: eval_loss {g_challenger:.4f} against the champion's {g_champion:.4f}"
    assert named in mv.tags["adaptune.retrain.reason"] and named in run.data.tags["adaptune.decision_reason"]
    assert f"guard    {guard}: eval_loss champion version 2: {g_champion:.4f}, challenger version 3:" in out


@SERVER_ONLY
def test_round4_same_data_again_is_a_no_op(rounds):
    out = _ok(rounds[4])
    assert "no-op" in out and "already trained on" in out
    assert rounds["runs_after4"] == rounds["runs_before4"]
    assert rounds["aliases4"] == rounds["aliases3"]
    assert rounds["versions4"] == ["1", "2", "3"]


@SERVER_ONLY
def test_round5_a_challenger_better_on_the_frozen_set_that_forgets_a_guard_set_is_kept_out(rounds):
    out = _ok(rounds[5])
    run = _run_of(rounds, 4)  # round 4 made no run
    champion, challenger = (run.data.metrics[f"{k}_frozen_eval_loss"] for k in ("champion", "challenger"))
    assert challenger <= champion - MARGIN, (champion, challenger)  # better on the new frozen set, by the margin
    g_champion, g_challenger = (run.data.metrics[f"guard0_{k}_eval_loss"] for k in ("champion", "challenger"))
    assert g_challenger - g_champion > 0.02, (g_champion, g_challenger)  # ... and worse on the FAQ than allowed
    assert rounds["aliases5"] == {"champion": "2", "previous-champion": "1", "challenger": "4"}
    assert run.data.tags["adaptune.decision"] == "kept-champion" and "decision kept-champion" in out
    forgot = (
        f"but it forgets guard set {FROZEN} (eval_loss {g_challenger:.4f} against the champion's {g_champion:.4f}, "
        f"worse by {g_challenger - g_champion:.4f} > guard_tolerance 0.02)"
    )
    reason = rounds["mlc"].get_model_version(MODEL, "4").tags["adaptune.retrain.reason"]
    assert forgot in reason and forgot in run.data.tags["adaptune.decision_reason"] and forgot in out
    assert f"beats the champion's {champion:.4f}" in reason
    assert f"guard    {FROZEN}: eval_loss champion version 2: {g_champion:.4f}, challenger version 4:" in out


def test_rollback_restores_the_previous_champion_and_is_recorded(rounds):
    mlc = rounds["mlc"]
    before = _aliases(mlc)
    r = run_cli("rollback", MODEL, "--cluster", rounds["cluster"], "--reason", "complaints about version 2")
    assert r.returncode == 0, r.stderr[-3000:]
    after = _aliases(mlc)
    assert after["champion"] == before["previous-champion"] == "1"
    assert after["rolled-back"] == "2" and "previous-champion" not in after
    (run,) = mlc.search_runs(
        [mlc.get_experiment_by_name("retrain-tests").experiment_id], "tags.`adaptune.kind` = 'rollback'"
    )
    assert run.data.tags["adaptune.restored_version"] == "1" and run.data.tags["adaptune.reason"].startswith(
        "complaints"
    )
    again = run_cli("rollback", MODEL, "--cluster", rounds["cluster"])
    assert again.returncode == 2 and "nothing to roll back to" in again.stderr
