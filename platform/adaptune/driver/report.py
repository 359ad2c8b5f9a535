"""What the user reads at the end of a run: plain-text tables of evaluations and results."""

from __future__ import annotations

from typing import Any

from adaptune.data import DataManifest
from adaptune.names import TEST_METRIC
from adaptune.records import (
    COST_COLUMNS,
    EVAL_COLUMNS,
    PARETO,
    REPORTED_METRICS,
    ROW_COLUMNS,
    SweepOutcome,
    TrialOutcome,
)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A fixed-width text table; `columns` are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([format(row[k], spec) if row.get(k) is not None else "-" for k, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_trial(manifest: DataManifest, outcome: TrialOutcome) -> str:
    """The evaluations of one trial, its best metrics, and where its adapter is."""
    best = outcome.best
    # the generated answers' scores (eval): what the trainer state's evaluations hold besides Evaluation's fields
    scores = [(k, k, ".3f") for k in outcome.final if k not in REPORTED_METRICS]
    lines = [
        table(outcome.history, EVAL_COLUMNS + scores),
        "",
        f"data digest      {manifest.digest}",
        f"best eval_loss   {best['eval_loss']:.4f} at step {best['step']} (perplexity {best['perplexity']:.2f}; "
        f"base model before training: {best['base_eval_loss']:.4f})",
        f"trainable params {best['trainable_params']:,} ({100 * best['trainable_fraction']:.3f}% of the model)",
    ]
    if outcome.converged:
        lines.append(f"converged        {outcome.converged}")
    if outcome.restarts:
        lines.append(f"restarts         resumed from step(s) {', '.join(map(str, outcome.restarts))}")
    lines.append(f"adapter          {outcome.adapter_path}")
    return "\n".join(lines)


def format_sweep(outcome: SweepOutcome) -> str:
    """The results table of a sweep, the winner and its adapter, and where the results files are."""
    metric = outcome.metric
    scores = [k for k in outcome.scores if k != metric]  # the generated answers' other scores
    tested_scores = {f"test_{k}" for k in outcome.scores}  # a finalist's, in results.json and MLflow
    fixed = {metric, TEST_METRIC, *ROW_COLUMNS, *scores, *tested_scores, *COST_COLUMNS, PARETO}
    costed = any(r.get("worker_s") is not None for r in outcome.rows)
    tested = any(r.get(TEST_METRIC) is not None for r in outcome.rows)  # finalists scored on the test split
    sampled = sorted({k for r in outcome.rows for k in r} - fixed)

    def cell(v: Any) -> Any:
        if isinstance(v, float) and not v.is_integer():
            return f"{v:.3g}"
        return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else v

    rows = [
        {
            **{k: cell(r.get(k)) for k in sampled},
            "trial": r["trial"],
            metric: r[metric],
            **{k: r.get(k) for k in scores},
            TEST_METRIC: r.get(TEST_METRIC),
            "steps": r["steps"],
            "wall_s": r["wall_s"],
            "worker_s": r.get("worker_s"),
            PARETO: "*" if r.get(PARETO) else "",
            "status": r["status"] + (f" ({r['reason']})" if r["reason"] else ""),
        }
        for r in outcome.rows
    ]
    columns = (
        [("trial", "trial", "")]
        + [(k, k, "") for k in sampled]
        + [
            (metric, f"best {metric}", ".4f"),
            *[(k, k, ".3f") for k in scores],
            *([(TEST_METRIC, "test eval_loss", ".4f")] if tested else []),
            ("steps", "steps", ""),
            ("wall_s", "wall_s", ""),
            *([("worker_s", "worker_s", ""), (PARETO, PARETO, "")] if costed else []),
            ("status", "status", ""),
        ]
    )
    lines = [table(rows, columns), ""]
    if outcome.winner:
        w = outcome.winner
        lines += [f"winner   {w['trial']}: {metric} {w[metric]:.4f}", f"adapter  {w['adapter']}"]
        if outcome.held_out:
            lines.append(f"test     {outcome.held_out}")
        front = [r["trial"] for r in outcome.rows if r.get(PARETO)]
        if front:
            lines.append(
                f"pareto   {', '.join(front)}: no other trial both better by {metric} and cheaper in worker-seconds"
            )
    elif outcome.rows and all(r["status"] == "failed" for r in outcome.rows):
        first = (outcome.rows[0]["reason"] or "").strip().splitlines()
        lines.append(f"winner   none: every trial failed; the first: {first[-1] if first else 'no reason recorded'}")
    else:
        lines.append("winner   none: no trial trained to an evaluation")
    lines.append(f"results  {outcome.path}/results.csv, results.json")
    if outcome.parent_run_id:
        lines.append(
            f"mlflow   {outcome.tracking_uri}: experiment {outcome.experiment_id}, sweep run {outcome.parent_run_id}"
        )
    if outcome.tracking_note:
        lines.append(f"tracking {outcome.tracking_note}")
    if outcome.registration is not None:
        reg = outcome.registration
        held = f" ({', '.join('@' + a for a in reg.aliases)})" if reg.aliases else ""  # a resumed sweep's may be none
        lines.append(f"registry {reg.name} version {reg.version}{held}")
    if outcome.ui:
        lines.append(f"ui       {outcome.ui}")
    return "\n".join(lines)


def format_retrain(outcome: Any) -> str:
    """The retrain's decision, both frozen-set scores and the data that went in (a RetrainOutcome)."""
    o = outcome
    drop = f"{o.drop.source} (digest {o.drop.digest[:12]}, {o.drop.rows} rows)"
    lines = [f"retrain  {o.retrain_id} of {o.registered_model}: drop {drop}"]
    if o.snapshots:
        shown = ", ".join(f"{s.digest[:12]} ({s.rows} rows)" for s in o.snapshots)
        lines.append(f"data     {len(o.snapshots)} snapshot(s): {shown}; {sum(s.rows for s in o.snapshots)} rows")
    for name in ("champion", "challenger"):
        if name in o.scores:
            version = o.champion_before if name == "champion" else o.challenger
            lines.append(f"frozen   {name} version {version}: eval_loss {o.scores[name]:.4f}")
    for path, scores in (o.guards or {}).items():
        versions = {"champion": o.champion_before, "challenger": o.challenger}
        shown = [f"{n} version {versions[n]}: {scores[n]:.4f}" for n in ("champion", "challenger") if n in scores]
        lines.append(f"guard    {path}: eval_loss {', '.join(shown)}")
    lines.append(f"decision {o.decision}: {o.message}")
    if o.champion_after:
        lines.append(f"champion {o.registered_model}@champion -> version {o.champion_after}")
    if o.merged is not None:
        registration, report = o.merged
        where = f", registered as {registration.name} version {registration.version}" if registration else ""
        lines.append(f"merged   {report.out_dir}{where}")
    if o.run_id:
        lines.append(f"mlflow   retrain run {o.run_id}")
    if o.ui:
        lines.append(f"ui       {o.ui}")
    return "\n".join(lines)
