"""bench/run_all.py: docs/benchmarks.md's generated section is rebuilt between its markers from bench/results/."""

from __future__ import annotations

import importlib.util

import pytest

from .support import REPO

pytestmark = pytest.mark.unit


def _run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", REPO / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = _run_all()
BEGIN, END = run_all.BEGIN, run_all.END

DOCS = f"""# Benchmarks

Intro that stays.

## Results

{BEGIN}
old table
| a | b |
{END}

## More

Text after, with a stray <!-- comment --> that stays.
"""


def test_rewrite_replaces_only_what_is_between_the_markers():
    out = run_all.rewrite_section(DOCS, "\n## New figures\n\n| x | y |\n|---|---|\n\n")
    head, rest = out.split(BEGIN)
    inside, tail = rest.split(END)
    assert head == DOCS.split(BEGIN)[0]
    assert tail == DOCS.split(END)[1]
    assert inside == "\n## New figures\n\n| x | y |\n|---|---|\n"
    assert "old table" not in out
    # Rebuilding from the same results changes nothing.
    assert run_all.rewrite_section(out, "## New figures\n\n| x | y |\n|---|---|") == out


@pytest.mark.parametrize(
    "text, found",
    [
        ("# no markers at all\n", "found 0 and 0"),
        (f"only the start {BEGIN}\n", "found 1 and 0"),
        (f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n", "found 2 and 2"),
        (f"{END}\nbackwards\n{BEGIN}\n", "found 1 and 1, in the wrong order"),
    ],
)
def test_markers_missing_repeated_or_reversed_are_a_clear_error(text, found):
    message = f"docs/benchmarks\\.md must hold {BEGIN} once, followed by {END} once \\({found}"
    with pytest.raises(ValueError, match=message):
        run_all.rewrite_section(text, "content")


def test_docs_section_is_the_results_files_in_bench_order(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    (tmp_path / "mlflow_load.md").write_text("C\n")
    (tmp_path / "overhead.md").write_text("\nA\n\n")
    (tmp_path / "memory.md").write_text("B")
    (tmp_path / "notes.txt").write_text("not a results file")
    assert run_all.section() == "A\n\nB\n\nC"


def test_the_docs_show_the_committed_results():
    """docs/benchmarks.md's section is exactly what run_all builds from bench/results/ (run `bench/run_all.py
    --docs-only` after changing a results file)."""
    text = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert run_all.rewrite_section(text, run_all.section()) == text
