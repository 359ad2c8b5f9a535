"""The test tiers. Every test carries exactly one tier marker (registered in pyproject.toml):

- `unit`: no Ray, no server, no training run: the package's functions and the CLI's refusals, on the tiny
  demo model at most (`bash scripts/test.sh --fast`, i.e. `pytest -m unit`);
- `integration`: real components together: a Ray cluster, DeepSpeed workers, an MLflow server on PostgreSQL,
  training runs (`pytest -m integration`);
- `system`: what a user does end to end and what goes wrong around it: the quickstart script, `ray job submit`
  on a two-node cluster, faults (killed workers, a tracking-server outage, full storage) and hostile input
  (`pytest -m system`).

conftest.py's collection hook calls `check`, which fails the run when a test has no tier or more than one;
`TierDurations` is the plugin that prints, at the end of every run, each tier's test count and summed duration.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

TIERS = ("unit", "integration", "system")
TIER_OF = pytest.StashKey[dict[str, str]]()  # node id -> tier, for every collected test
PLUGIN = "adaptune-tier-durations"


def check(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Record each test's tier; fail the run naming every test that has none or more than one.

    Raises:
        pytest.UsageError: Some test has zero or several of the markers in TIERS.
    """
    tier_of, problems = {}, []
    for item in items:
        found = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS}, key=TIERS.index)
        if len(found) == 1:
            tier_of[item.nodeid] = found[0]
        else:
            problems.append(f"  {item.nodeid}: {', '.join(found) if found else 'no tier marker'}")
    if problems:
        raise pytest.UsageError(
            f"{len(problems)} test(s) without exactly one tier marker ({', '.join(TIERS)}); set "
            "`pytestmark = pytest.mark.<tier>` in the module, or mark each test (see docs/testing.md):\n"
            + "\n".join(problems)
        )
    config.stash[TIER_OF] = tier_of


class TierDurations:
    """Per tier: the tests selected, the tests run and their summed setup + call + teardown time.

    A session fixture's setup counts towards the first test that uses it (the tiny model, the shared Ray
    cluster), its teardown towards the last."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.selected: dict[str, int] = defaultdict(int)
        self.run: dict[str, set[str]] = defaultdict(set)
        self.seconds: dict[str, float] = defaultdict(float)
        self.started = time.monotonic()

    def _tier(self, nodeid: str) -> str | None:
        return self.config.stash.get(TIER_OF, {}).get(nodeid)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:  # what is left after -m / -k deselection
            if tier := self._tier(item.nodeid):
                self.selected[tier] += 1

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if tier := self._tier(report.nodeid):
            self.run[tier].add(report.nodeid)
            self.seconds[tier] += report.duration

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if TIER_OF not in self.config.stash:  # collection failed (check refused it, or an import error)
            return
        tr = terminalreporter
        tr.write_sep("=", "tier durations (setup + call + teardown)")
        for tier in TIERS:
            tr.write_line(
                f"{tier:<12} {self.selected.get(tier, 0):4d} selected {len(self.run.get(tier, ())):4d} run "
                f"{self.seconds.get(tier, 0.0):9.1f} s"
            )
        tr.write_line(f"{'session':<12} wall {time.monotonic() - self.started:.1f} s (collection included)")
