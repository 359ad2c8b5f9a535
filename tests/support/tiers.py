"""The test tiers. Every test carries exactly one tier marker (registered in pyproject.toml):

- `unit`: no Ray, no server, no training run: the package's functions and the CLI's refusals, on the tiny
  demo model at most (`bash scripts/test.sh --fast`, i.e. `pytest -m unit`);
- `integration`: real components together: a Ray cluster, DeepSpeed workers, an MLflow server on PostgreSQL,
  training runs (`pytest -m integration`);
- `system`: what a user does end to end and what goes wrong around it: the quickstart script, `ray job submit`
  on a two-node cluster, faults (killed workers, a tracking-server outage, full storage) and hostile input
  (`pytest -m system`).

conftest.py's collection hook calls `check`, which fails the run when a test has no tier or more than one.
"""

from __future__ import annotations

import pytest

TIERS = ("unit", "integration", "system")
TIER_OF = pytest.StashKey[dict[str, str]]()  # node id -> tier, for every collected test


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
