"""Search spaces as data: dotted keys into the sweep schema mapped to distributions, checked before Ray starts,
and turned into Ray Tune sampling objects. Checking imports no Ray; `build_param_space` does."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from adaptune.config import SYNONYMS, SweepConfig
from adaptune.errors import Problem, short_repr
from adaptune.records import REPORTED_METRICS, generated_metrics

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "qrandint")
ALPHA_PER_RANK = "multiple_of_rank"  # lora.alpha: {multiple_of_rank: 2} or {multiple_of_rank: {choice: [1, 2]}}
SEARCHABLE = ("lora", "quantization", "train")  # data is prepared once per sweep, the model is the sweep's
# A search may optimise any metric an evaluation reports (records.REPORTED_METRICS, and the generated answers'
# scores: records.generated_metrics).


def searchable_keys(model: type[BaseModel] = SweepConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key a search space may name."""
    keys = []
    for name, field in model.model_fields.items():
        if not prefix and name not in SEARCHABLE:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += searchable_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def apply_values(base: SweepConfig, values: dict[str, Any]) -> SweepConfig:
    """The base config with dotted-key values substituted, validated by the schema (raises ValidationError)."""
    data = base.model_dump(mode="json")
    for key, value in values.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return SweepConfig.model_validate(data)


def _spec(key: str, spec: Any, source: str) -> tuple[str, list[Any], list[Problem]]:
    """(distribution name, its arguments, problems) of one `{name: args}` entry."""
    where = f"search.space.{key}"
    name: str = ""
    args: Any = []

    def bad(message: str, fix: str) -> tuple[str, list[Any], list[Problem]]:
        return name, args, [Problem(source, where, message, fix)]

    if not isinstance(spec, dict) or len(spec) != 1:
        return bad(
            f"expected one distribution like {{choice: [...]}} (got {short_repr(spec)})",
            f"Use one of {', '.join(DISTRIBUTIONS)}",
        )
    ((name, args),) = spec.items()
    if name not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(name), DISTRIBUTIONS, n=1)
        return bad(
            f"unknown distribution {short_repr(name)}",
            f"Did you mean `{close[0]}`?" if close else f"Use one of {', '.join(DISTRIBUTIONS)}",
        )
    if not isinstance(args, list) or not args:
        return bad(f"{name} needs a non-empty list (got {short_repr(args)})", f"Write {name}: [..]")
    if name in ("choice", "grid"):
        return name, args, []
    arity = 3 if name == "qrandint" else 2
    shape = "[low, high, q]" if arity == 3 else "[low, high]"
    if len(args) != arity or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        return bad(f"{name} needs {shape} numbers (got {short_repr(args)})", f"Write {name}: {shape}")
    low, high = args[0], args[1]
    if not low < high:
        return bad(f"{name} range is empty or reversed (got low={low}, high={high})", "Put the lower bound first")
    if name == "loguniform" and low <= 0:
        return bad(f"loguniform needs a positive lower bound (got {low})", "Use uniform, or a lower bound > 0")
    if name in ("randint", "qrandint") and not all(isinstance(a, int) for a in args):
        return bad(f"{name} needs whole numbers (got {short_repr(args)})", "Use uniform for real numbers")
    return name, args, []


def _probe_values(name: str, args: list[Any]) -> list[Any]:
    """Values that must each be valid for the key: every listed one, or both ends of a range."""
    if name in ("choice", "grid"):
        return list(args)
    if name == "randint":
        return [args[0], args[1] - 1]  # Tune's randint excludes the upper bound
    return [args[0], args[1]]


def check_space(base: SweepConfig, space: dict[str, Any], source: str) -> list[Problem]:
    """Every problem in a search space, one line each: unknown keys (with suggestions), malformed
    distributions, reversed ranges, and values the schema itself refuses."""
    problems: list[Problem] = []
    known = searchable_keys()
    for key, spec in space.items():
        where = f"search.space.{key}"
        if key not in known:
            top = key.split(".", 1)[0]
            if top in ("data", "model", "name"):
                problems.append(
                    Problem(
                        source,
                        where,
                        f"{top} settings cannot be searched",
                        "The data is prepared once per sweep; run one sweep per model/data choice",
                    )
                )
                continue
            parent, _, leaf = key.rpartition(".")
            synonym = f"{parent}.{SYNONYMS.get(leaf)}"
            close = [synonym] if synonym in known else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            fix = f"Did you mean `{close[0]}`?" if close else f"Searchable keys start with {', '.join(SEARCHABLE)}"
            problems.append(Problem(source, where, "unknown key", fix))
            continue
        if key == "lora.alpha" and isinstance(spec, dict) and set(spec) == {ALPHA_PER_RANK}:
            factor = spec[ALPHA_PER_RANK]
            if isinstance(factor, int | float) and not isinstance(factor, bool):
                if factor <= 0:
                    problems.append(
                        Problem(
                            source,
                            where,
                            f"{ALPHA_PER_RANK} must be positive (got {factor})",
                            "Use a factor like 1 or 2",
                        )
                    )
                continue
            name, args, found = _spec(f"{key}.{ALPHA_PER_RANK}", factor, source)
            problems += found
            if not found and any(not isinstance(v, int | float) or v <= 0 for v in _probe_values(name, args)):
                problems.append(
                    Problem(
                        source,
                        where,
                        f"{ALPHA_PER_RANK} factors must be positive numbers (got {short_repr(args)})",
                        "Use factors like [1, 2, 4]",
                    )
                )
            continue
        name, args, found = _spec(key, spec, source)
        problems += found
        if found:
            continue
        for value in _probe_values(name, args):
            try:
                apply_values(base, {key: value})
            except ValidationError as e:
                err = e.errors(include_url=False)[0]
                msg = err["msg"].removeprefix("Value error, ").split(". ")[0]
                problems.append(
                    Problem(
                        source,
                        where,
                        f"value {short_repr(value)} is not allowed: {msg}",
                        "Change the distribution's values or bounds",
                    )
                )
                break
    return problems


def target_candidates(sweep: SweepConfig) -> list[str | list[str]]:
    """Every `lora.target_modules` value a sweep may train with: the base value and any searched ones."""
    spec = sweep.search.space.get("lora.target_modules")
    values = list(next(iter(spec.values()))) if isinstance(spec, dict) and len(spec) == 1 else []
    return [sweep.lora.target_modules, *[v for v in values if isinstance(v, str | list)]]


def finite_values(space: dict[str, Any], key: str) -> list[Any] | None:
    """The values a `choice`/`grid` entry can take, or None when the key is not searched that way."""
    spec = space.get(key)
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("choice", "grid"):
        return list(next(iter(spec.values())))
    return None


def expected_trials(search: Any) -> int:
    """How many trials a sweep's search runs: num_samples (default 8; 1 for a grid) times every grid entry's
    values (and every `choice` entry's, under algorithm: grid), as Tune counts them."""
    grid = search.algorithm == "grid"
    total = search.num_samples or (1 if grid else 8)
    for spec in search.space.values():
        if isinstance(spec, dict) and len(spec) == 1:
            ((name, args),) = spec.items()
            if name == "grid" or (name == "choice" and grid):
                total *= len(args)
    return total


def build_param_space(space: dict[str, Any], grid: bool = False) -> dict[str, Any]:
    """The Ray Tune `param_space` for a checked search space, keyed by dotted key. With `grid`, `choice`
    entries are searched exhaustively too.

    `lora.alpha: {multiple_of_rank: k}` becomes a Tune search over the factor under the key
    `lora.alpha_per_rank`; `resolve_alpha` turns it into alpha for each sampled trial.
    """
    from ray import tune

    def one(spec: dict[str, Any]) -> Any:
        ((name, args),) = spec.items()
        if name == "choice" and not grid:
            return tune.choice(args)
        if name in ("grid", "choice"):
            return tune.grid_search(args)
        if name == "uniform":
            return tune.uniform(*args)
        if name == "loguniform":
            return tune.loguniform(*args)
        if name == "randint":
            return tune.randint(*args)
        return tune.qrandint(*args)

    params: dict[str, Any] = {}
    for key, spec in space.items():
        if key == "lora.alpha" and set(spec) == {ALPHA_PER_RANK}:
            factor = spec[ALPHA_PER_RANK]
            params["lora.alpha_per_rank"] = factor if isinstance(factor, int | float) else one(factor)
        else:
            params[key] = one(spec)
    return params


def resolve_alpha(sampled: dict[str, Any], base: SweepConfig) -> dict[str, Any]:
    """Sampled values as schema keys: `lora.alpha_per_rank` becomes `lora.alpha = factor * r`."""
    values = dict(sampled)
    factor = values.pop("lora.alpha_per_rank", None)
    if factor is not None:
        values["lora.alpha"] = float(factor) * values.get("lora.r", base.lora.r)
    return values


def check_search(base: SweepConfig, source: str) -> list[Problem]:
    """The whole `search` section: the space, the metric, the starting points, the algorithm's needs."""
    s = base.search
    problems = check_space(base, s.space, source)
    scores = generated_metrics(base)  # the generated answers' scores, when trials generate answers
    if s.metric in scores and s.mode != "max":
        problems.append(
            Problem(
                source,
                "search.metric",
                f"{s.metric!r} scores generated answers, higher is better, but search.mode is {s.mode!r}",
                "Set search.mode: max",
            )
        )
    elif s.metric in base.eval.scorers and not scores:
        why = "text data has no reference answers" if base.data.format == "text" else "eval.samples is 0"
        problems.append(
            Problem(
                source,
                "search.metric",
                f"{s.metric!r} scores generated answers, but no answers are generated ({why})",
                "Set eval.samples above 0 with instruction or chat data, or search on eval_loss",
            )
        )
    elif s.metric not in (*REPORTED_METRICS, *scores):
        known = (*REPORTED_METRICS, *scores)
        close = difflib.get_close_matches(s.metric, known, n=1)
        fix = f"Did you mean `{close[0]}`?" if close else f"Use one of {', '.join(known)}"
        problems.append(Problem(source, "search.metric", f"the trainer does not report {s.metric!r}", fix))
    grids = [k for k, spec in s.space.items() if isinstance(spec, dict) and "grid" in spec]
    if grids and s.algorithm == "optuna":
        problems.append(
            Problem(
                source,
                "search.algorithm",
                f"optuna cannot search grid entries ({', '.join(grids)})",
                "Use choice for them, or algorithm: grid",
            )
        )
    for i, point in enumerate(s.points_to_evaluate):
        where = f"search.points_to_evaluate[{i}]"
        unknown = [k for k in point if k not in s.space and k != "lora.alpha_per_rank"]
        if unknown:
            problems.append(
                Problem(
                    source, where, f"{', '.join(unknown)} not in search.space", "Give values only for searched keys"
                )
            )
            continue
        try:
            apply_values(base, resolve_alpha(point, base))
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            problems.append(
                Problem(source, where, f"{'.'.join(map(str, err['loc']))}: {err['msg']}", "Fix the starting point")
            )
    return problems
