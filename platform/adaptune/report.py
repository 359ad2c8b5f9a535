"""What the user reads at the end of a run: plain-text tables of evaluations and results."""

from __future__ import annotations

from typing import Any

from adaptune.data import DataManifest
from adaptune.trial import TrialOutcome


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A fixed-width text table; `columns` are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([format(row[k], spec) if row.get(k) is not None else "-" for k, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


EVAL_COLUMNS = [
    ("step", "step", "d"),
    ("train_loss", "train_loss", ".4f"),
    ("eval_loss", "eval_loss", ".4f"),
    ("perplexity", "perplexity", ".2f"),
    ("tokens_per_s", "tokens/s", ".0f"),
    ("step_time_s", "step_s", ".3f"),
    ("peak_memory_mb", "peak_MB", ".0f"),
]


def format_trial(manifest: DataManifest, outcome: TrialOutcome) -> str:
    """The evaluations of one trial, its best metrics, and where its adapter is."""
    best = outcome.best
    lines = [
        table(outcome.history, EVAL_COLUMNS),
        "",
        f"data digest      {manifest.digest}",
        f"best eval_loss   {best['eval_loss']:.4f} at step {best['step']} (perplexity {best['perplexity']:.2f}; "
        f"base model before training: {best['base_eval_loss']:.4f})",
        f"trainable params {best['trainable_params']:,} ({100 * best['trainable_fraction']:.3f}% of the model)",
    ]
    if outcome.restarts:
        lines.append(f"restarts         resumed from step(s) {', '.join(map(str, outcome.restarts))}")
    lines.append(f"adapter          {outcome.adapter_path}")
    return "\n".join(lines)
