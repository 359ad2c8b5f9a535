"""What the sweep prints: the registry line of a version that holds no alias has no empty parentheses."""

from __future__ import annotations

import pytest

from adaptune.driver.report import format_sweep
from adaptune.records import SweepOutcome
from adaptune.tracking.registry import Registration

pytestmark = pytest.mark.unit


def _outcome(aliases: list[str]) -> SweepOutcome:
    row = {"trial": "t1", "lora.r": 8, "eval_loss": 1.5, "steps": 30, "wall_s": 9.0, "status": "finished"}
    row |= {"reason": "", "adapter": "/runs/t1/checkpoint_000002/adapter"}
    return SweepOutcome(
        "sweep-1", "/runs", "eval_loss", [row], row, False, registration=Registration("m", "3", aliases)
    )


def test_the_registry_line_shows_aliases_only_when_the_version_has_some():
    lines = format_sweep(_outcome([])).splitlines()
    assert "registry m version 3" in lines and not any("()" in line for line in lines)
    assert "registry m version 3 (@challenger, @champion)" in format_sweep(_outcome(["challenger", "champion"]))


def _rows() -> list[dict]:
    def row(trial: str, loss: float, status: str = "finished", adapter: str | None = "/a") -> dict:
        return {"trial": trial, "eval_loss": loss, "steps": 30, "wall_s": 9.0, "status": status, "reason": ""} | {
            "adapter": adapter
        }

    return [row("t1", 1.5), row("t2", 1.2), row("t3", 1.3, "stopped early"), row("t4", 1.1, "failed", None)]


def test_finalists_are_the_best_trials_that_can_win_best_first():
    from adaptune.config import SearchConfig
    from adaptune.driver.sweep import pick_finalists

    rows = _rows()
    assert [r["trial"] for r in pick_finalists(rows, SearchConfig(finalists=2))] == ["t2", "t3"]  # t4 failed
    assert [r["trial"] for r in pick_finalists(rows, SearchConfig(finalists=9))] == ["t2", "t3", "t1"]
    assert [r["trial"] for r in pick_finalists(rows, SearchConfig(finalists=2, mode="max"))] == ["t1", "t3"]
    assert pick_finalists(rows, SearchConfig(finalists=0)) == []


def test_the_held_out_note_says_when_the_test_split_disagrees_and_the_table_shows_test_scores():
    from adaptune.driver.sweep import held_out_note
    from adaptune.names import TEST_METRIC

    t1, t2, t3, _ = rows = _rows()
    t2[TEST_METRIC], t3[TEST_METRIC] = 1.25, 1.31
    agree = held_out_note([t2, t3], t2, "eval_loss", 40)
    assert (
        agree == "winner t2 test eval_loss 1.2500 on 40 held-out rows not used to choose (validation eval_loss 1.2000)"
    )
    t3[TEST_METRIC] = 1.21
    disagree = held_out_note([t2, t3], t2, "eval_loss", 40)
    assert disagree.endswith(
        "; the test split disagrees: finalist t3 scores better there (test eval_loss 1.2100), the winner is chosen "
        "on validation"
    )
    outcome = SweepOutcome("sweep-1", "/runs", "eval_loss", rows, t2, False, held_out=disagree)
    text = format_sweep(outcome)
    header = text.splitlines()[0]
    assert "test eval_loss" in header and f"test     {disagree}" in text
    line = next(x for x in text.splitlines() if x.split()[:1] == ["t1"])
    assert " - " in line  # not a finalist: no test score
    assert "test eval_loss" not in format_sweep(SweepOutcome("s", "/r", "eval_loss", _rows(), None, False))


def test_the_pareto_set_is_every_trial_no_other_beats_on_both_quality_and_cost():
    from adaptune.config import SearchConfig
    from adaptune.driver.sweep import mark_pareto

    rows = _rows()  # eval_loss t1 1.5, t2 1.2, t3 1.3 (stopped early), t4 1.1 (failed: cannot win)
    for r, cost in zip(rows, (10.0, 40.0, 20.0, 5.0), strict=True):
        r["worker_s"] = cost
    mark_pareto(rows, SearchConfig())
    # t1 cheapest of those that can win, t2 best, t3 between (better than t1, cheaper than t2); t4 failed
    assert {r["trial"]: r["pareto"] for r in rows} == {"t1": True, "t2": True, "t3": True, "t4": False}
    rows[2]["eval_loss"] = 1.6  # t3 now worse than t1 and dearer
    mark_pareto(rows, SearchConfig())
    assert [r["trial"] for r in rows if r["pareto"]] == ["t1", "t2"]
    mark_pareto(rows, SearchConfig(mode="max"))  # higher is better: t3 (1.6) best, t1 cheapest
    assert [r["trial"] for r in rows if r["pareto"]] == ["t1", "t3"]
    rows[0]["worker_s"] = None  # no cost figure: nothing to compare it on
    mark_pareto(rows, SearchConfig())
    assert rows[0]["pareto"] is None


def test_the_table_shows_scores_cost_and_the_pareto_set_and_not_as_searched_values():
    from adaptune.config import SearchConfig
    from adaptune.driver.sweep import mark_pareto

    rows = _rows()
    for r, cost in zip(rows, (10.0, 40.0, 20.0, 5.0), strict=True):
        r |= {"worker_s": cost, "rouge_l": 0.25, "tokens_trained": 1000, "adapter_mb": 0.1, "test_rouge_l": 0.2}
    mark_pareto(rows, SearchConfig())
    out = format_sweep(SweepOutcome("s", "/runs", "eval_loss", rows, rows[1], False, scores=("rouge_l",)))
    header = out.splitlines()[0].split()
    assert header[:5] == ["trial", "best", "eval_loss", "rouge_l", "steps"]  # no cost or test column as a value
    assert header[-3:] == ["worker_s", "pareto", "status"]
    assert "pareto   t1, t2, t3: no other trial both better by eval_loss and cheaper in worker-seconds" in out


def test_ties_go_to_the_cheaper_trial_and_a_generated_metric_is_compared_on_its_test_score():
    from adaptune.config import SearchConfig
    from adaptune.driver.sweep import held_out_note, mark_pareto, pick_winner
    from adaptune.names import TEST_METRIC

    rows = _rows()[:3]
    for r, cost in zip(rows, (30.0, 20.0, 10.0), strict=True):
        r |= {"exact_match": 0.5, "worker_s": cost}  # equal scores, as 8 prompts often give
    search = SearchConfig(metric="exact_match", mode="max")
    winner = pick_winner(rows, search)
    assert winner["trial"] == "t3"  # the cheapest of the equals
    mark_pareto(rows, search)
    assert [r["trial"] for r in rows if r["pareto"]] == ["t3"]
    t1, t2, t3 = rows
    for r, test in ((t1, 0.25), (t2, 0.75), (t3, 0.5)):
        r |= {TEST_METRIC: 1.0, "test_exact_match": test}
    note = held_out_note([t3, t2, t1], t3, "exact_match", 40, 8, "max")
    assert note.endswith(
        "finalist t2 scores better there (test exact_match 0.7500), the winner is chosen on validation"
    )
