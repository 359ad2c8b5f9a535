"""The pure rules of a retrain: the champion's values as the sweep's starting point, the sweep a retrain runs,
and the decision by the margin. No I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from adaptune.config import SweepConfig, _problems_from_validation
from adaptune.errors import ConfigError
from adaptune.names import FIRST_CHAMPION, KEPT_CHAMPION, PROMOTED
from adaptune.preflight.search_space import ALPHA_PER_RANK

# --------------------------------------------------------------------------------------------------
# The sweep: warm-started from the champion, with the retrain budget
# --------------------------------------------------------------------------------------------------


def champion_point(params: dict[str, str], space: dict[str, Any]) -> dict[str, Any]:
    """The champion's values of the searched keys (from its trial run's params), as a starting point; a value
    the space cannot take (the space changed since) is left out."""
    point: dict[str, Any] = {}
    for key, spec in space.items():
        ((kind, args),) = spec.items()
        if key == "lora.alpha" and kind == ALPHA_PER_RANK:
            if isinstance(args, int | float) or "lora.alpha" not in params or "lora.r" not in params:
                continue
            ratio = float(params["lora.alpha"]) / float(params["lora.r"])
            key, value = "lora.alpha_per_rank", ratio
            ((kind, args),) = args.items()
            if kind in ("choice", "grid"):  # the listed factor the ratio is, as listed (an int stays an int)
                value = next((a for a in args if abs(float(a) - ratio) <= 1e-6), None)
        elif key in params:
            value = yaml.safe_load(params[key]) if params[key] != "None" else None
        else:
            continue
        if kind in ("choice", "grid"):
            if value not in args:
                continue
        elif not (isinstance(value, int | float) and args[0] <= value <= args[1]):
            continue
        point[key] = value
    return point


def retrain_sweep(sweep: SweepConfig, training_dir: Path, point: dict[str, Any], source: str) -> SweepConfig:
    """The sweep a retrain runs: its training set, the retrain budget, the champion's values first."""
    data = sweep.model_dump(mode="json")
    data["data"]["path"] = str(training_dir)
    r = sweep.retrain
    if r.num_samples is not None:
        data["search"]["num_samples"] = r.num_samples
    if r.max_steps is not None:
        data["train"]["max_steps"] = r.max_steps
        data["train"]["eval_every"] = min(sweep.train.eval_every, r.max_steps)
    if point:
        rest = [p for p in data["search"]["points_to_evaluate"] if p != point]
        data["search"]["points_to_evaluate"] = [point, *rest]
    data["mlflow"]["register_winner"] = True
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems_from_validation(e, SweepConfig, source, {})) from None


Guards = dict[str, dict[str, float]]  # guard set path -> {"champion": loss, "challenger": loss}


def decide(
    champion: float | None, challenger: float, margin: float, guards: Guards | None = None, tolerance: float = 0.0
) -> tuple[str, str]:
    """Promote only a challenger whose frozen-set loss is lower than the champion's by at least `margin`, and
    which forgets no guard set: on each its loss may exceed the champion's by at most `tolerance`. The reason
    names every guard set with both scores."""
    guards = guards or {}
    listed = "; ".join(
        f"guard {path}: eval_loss {s['challenger']:.4f}"
        + (f" against the champion's {s['champion']:.4f}" if "champion" in s else "")
        for path, s in guards.items()
    )
    tail = f" ({listed})" if listed else ""
    if champion is None:
        return FIRST_CHAMPION, f"no champion yet: the challenger (frozen eval_loss {challenger:.4f}) becomes it{tail}"
    gain = champion - challenger
    if gain < margin:
        return KEPT_CHAMPION, (
            f"frozen eval_loss {challenger:.4f} against the champion's {champion:.4f}: "
            + (f"better by only {gain:.4f}" if gain > 0 else f"worse by {-gain:.4f}")
            + f", the margin is {margin:g}{tail}"
        )
    beats = f"frozen eval_loss {challenger:.4f} beats the champion's {champion:.4f} by {gain:.4f} >= margin {margin:g}"
    forgotten = [
        f"{path} (eval_loss {s['challenger']:.4f} against the champion's {s['champion']:.4f}, worse by "
        f"{s['challenger'] - s['champion']:.4f} > guard_tolerance {tolerance:g})"
        for path, s in guards.items()
        if "champion" in s and s["challenger"] - s["champion"] > tolerance
    ]
    if forgotten:
        return KEPT_CHAMPION, f"{beats}, but it forgets guard set {'; '.join(forgotten)}{tail}"
    return PROMOTED, f"{beats}{tail}"
