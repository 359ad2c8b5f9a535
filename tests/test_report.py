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
