"""The demo data is drawn from its fact table (`demo/facts.yaml`): the committed file is exactly what the
generator writes, later drops are disjoint from it, and both documented commands write the same rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adaptune.demo.rows import FIELDS, generate_rows, table, write_jsonl

from .support import DEMO_DATA, REPO

pytestmark = pytest.mark.unit


def test_the_committed_demo_data_is_what_the_fact_table_generates(tmp_path):
    write_jsonl(generate_rows(400), tmp_path / "faq.jsonl")
    assert (tmp_path / "faq.jsonl").read_bytes() == DEMO_DATA.read_bytes()
    facts = table().facts
    assert len(facts) > 40 and all(f.questions and f.answers for f in facts)
    answers = {a for f in facts for a in f.answers}
    assert {json.loads(line)["output"] for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()} <= answers


def test_a_later_drop_is_new_rows_of_the_same_kind():
    first, later = generate_rows(400), generate_rows(100, start=400)
    assert not {(r["instruction"], r["input"]) for r in first} & {(r["instruction"], r["input"]) for r in later}
    assert all(list(r) == list(FIELDS) for r in later)


@pytest.mark.parametrize("how", [["platform/adaptune/demo/rows.py"], ["-m", "adaptune.demo.rows"]])
def test_the_documented_commands_write_the_same_rows(tmp_path, how):
    out = tmp_path / "drop.jsonl"
    env = {"PYTHONPATH": str(REPO / "platform"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, *how, "--out", str(out), "--rows", "5", "--start", "400"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == generate_rows(5, start=400)
