"""Typed records where data crosses a process boundary: what the driver hands every trial's Ray Train workers
(`PreparedRun`, `TrialSpec`), what one evaluation reports (`Evaluation`), and what a trial and a sweep produced
(`TrialOutcome`, `SweepOutcome`, `TrialRow`'s columns).

`Evaluation` is the one list of metrics: the metrics `search.metric` may name, the step metrics MLflow logs and
the columns of a trial's table all derive from its fields, plus one score per `eval.scorers` name
(`generated_metrics`) when trials generate answers. Light: imports only the schema and `names`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from adaptune.config import ClusterProfile, SweepConfig
from adaptune.names import target_key

# --------------------------------------------------------------------------------------------------
# Driver -> workers
# --------------------------------------------------------------------------------------------------


# One phase of a trial's wall time: (name, wall-clock start, seconds). A trial's phases are kept in its trainer
# state (`timeline`), in order: where its time went (bench/goodput.py reads them).
Phase = tuple[str, float, float]


@dataclass(frozen=True)
class PreparedRun:
    """What every trial of a run shares, computed once by the driver before any trial starts."""

    data_dir: str  # the prepared (tokenized) dataset, on storage every node reaches
    pad_token_id: int
    targets: dict[str, list[str]]  # module suffixes of every target setting the run may sample, by `target_key`
    scorer_code: tuple[str, str] | None = None  # (file name, source) of eval.scorers_file, read once

    def spec(
        self,
        sweep: SweepConfig,
        cluster: ClusterProfile,
        launched_at: float,
        timeline: tuple[Phase, ...] = (),
        stop_file: str | None = None,
    ) -> TrialSpec:
        """The spec of one trial with settings `sweep` (the run's base values, or sampled values applied);
        `timeline`: the phases the trial's own process went through before it launched its workers; `stop_file`:
        see `TrialSpec`."""
        return TrialSpec(
            sweep,
            cluster,
            self.data_dir,
            self.targets[target_key(sweep.lora.target_modules)],
            self.pad_token_id,
            launched_at,
            self.scorer_code,
            timeline,
            stop_file,
        )


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial's Ray Train workers need, validated once by the driver side: workers read it as given
    (Ray pickles it into each worker; nothing is re-parsed there)."""

    sweep: SweepConfig  # the trial's own settings (sampled values applied)
    cluster: ClusterProfile
    data_dir: str
    target_modules: list[str]  # resolved for this trial's `lora.target_modules`
    pad_token_id: int
    launched_at: float  # wall time `fit()` was called: the workers' start-up is measured from it
    scorer_code: tuple[str, str] | None = None  # eval.scorers_file's (name, source): workers need no copy of it
    timeline: tuple[Phase, ...] = ()  # the trial process's phases before `fit()` (its start, its set-up)
    stop_file: str | None = None  # once it exists, the trial has been ended by the sweep: workers stop training


# --------------------------------------------------------------------------------------------------
# One evaluation
# --------------------------------------------------------------------------------------------------


def _metric(header: str = "", spec: str = "", logged: bool = True) -> Any:
    """A field of `Evaluation`: `logged` as an MLflow step metric; shown as a trial-table column `header` with
    format `spec` when a header is given."""
    return field(metadata={"header": header, "spec": spec, "logged": logged})


@dataclass(frozen=True)
class Evaluation:
    """What a trial reports at each evaluation round (to Ray Tune, into its checkpoint's history, to MLflow)."""

    step: int = _metric("step", "d", logged=False)  # MLflow's step of the other metrics
    train_loss: float = _metric("train_loss", ".4f")  # mean over the steps since the last evaluation
    eval_loss: float = _metric("eval_loss", ".4f")  # token-weighted over the whole validation split
    perplexity: float = _metric("perplexity", ".2f")
    base_eval_loss: float = _metric(logged=False)  # the untouched base model's eval_loss: the bar to clear
    tokens_per_s: float = _metric("tokens/s", ".0f")
    step_time_s: float = _metric("step_s", ".3f")
    learning_rate: float = _metric()
    peak_memory_mb: float = _metric("peak_MB", ".0f")
    optimizer_state_mb: float = _metric("opt_MB", ".2f")  # optimizer state held by all workers together
    generation_s: float = _metric("gen_s", ".2f")  # seconds spent generating this evaluation's answers (eval)
    trainable_params: int = _metric()
    tokens_trained: int = _metric("tokens", "d")  # non-padding tokens through the model in training, all workers
    pad_share: float = _metric("pad", ".2f")  # padding's share of the training batches' token slots so far
    trainable_fraction: float = _metric()
    epoch: float = _metric()
    diverged: int = _metric(logged=False)  # 1 on the last report of a trial whose loss diverged
    converged: int = _metric(logged=False)  # 1 on the last report of a trial ended by train.early_stopping

    def report(self) -> dict[str, Any]:
        return asdict(self)


def diverged_report(step: int, metric: str, mode: str) -> dict[str, Any]:
    """The last report of a trial whose loss diverged: the worst possible eval_loss and `metric` (in `mode`), so
    neither Tune, ASHA nor the checkpoint kept by score ever prefers it."""
    return {"step": step, "eval_loss": float("inf"), metric: float("inf" if mode == "min" else "-inf"), "diverged": 1}


def converged_reason(sweep: SweepConfig, best_step: int) -> str:
    """Why a trial ended as converged (`train.early_stopping`), for its results row, log and MLflow run."""
    rule, search = sweep.train.early_stopping, sweep.search
    assert rule.patience is not None
    by = f" by more than {rule.min_delta:g}" if rule.min_delta else ""
    return (
        f"{search.metric} did not improve{by} in {rule.patience} evaluation round(s) after step {best_step} "
        "(train.early_stopping)"
    )


def generated_metrics(sweep: SweepConfig) -> tuple[str, ...]:
    """The scores an evaluation reports besides `Evaluation`'s fields: one per `eval.scorers` name, the mean over
    the evaluation's generated answers (higher is better), when the sweep's trials generate answers."""
    return tuple(sweep.eval.scorers) if sweep.eval.generates(sweep.data.format) else ()


REPORTED_METRICS = tuple(f.name for f in fields(Evaluation))  # what search.metric may name, besides eval.scorers
STEP_METRICS = tuple(f.name for f in fields(Evaluation) if f.metadata["logged"])  # logged to MLflow at each step
EVAL_COLUMNS = [(f.name, f.metadata["header"], f.metadata["spec"]) for f in fields(Evaluation) if f.metadata["header"]]


# --------------------------------------------------------------------------------------------------
# What a trial and a sweep produced
# --------------------------------------------------------------------------------------------------


@dataclass
class TrialOutcome:
    """What a finished trial produced (`adaptune train`)."""

    path: str  # the trial's storage directory
    best: dict[str, Any]  # the best evaluation (by search.metric and search.mode)
    final: dict[str, Any]  # the last evaluation
    history: list[dict[str, Any]]  # every evaluation, in order
    adapter_path: str  # adapter of the best evaluation
    restarts: list[int] = field(default_factory=list)  # steps the trial resumed from after worker losses
    quantized_layers: int = 0  # base layers held in 4-/8-bit
    startup: list[dict[str, float]] = field(default_factory=list)  # seconds per start-up phase, per (re)start
    converged: str | None = None  # why train.early_stopping ended it before max_steps, if it did


# The fixed columns of a sweep's results row, besides the sampled values and the best `search.metric`:
ROW_COLUMNS = ("trial", "steps", "wall_s", "status", "reason", "adapter")
# What a trial cost, in its results row besides wall_s: worker-seconds (wall time x workers; GPU-seconds on GPUs),
# tokens trained, peak memory, adapter size, trainable parameters; and whether it is in the sweep's Pareto set
# (no other trial both better by search.metric and cheaper in worker-seconds).
COST_COLUMNS = (
    "worker_s",
    "gpu_s",
    "tokens_trained",
    "peak_memory_mb",
    "optimizer_state_mb",
    "adapter_mb",
    "trainable_params",
    "pad_share",
)
PARETO = "pareto"
# Names a user scorer (eval.scorers) may not take: the answers table's columns, a results row's, and the keys Ray
# Tune adds to every result, besides the reported metrics.
TAKEN_NAMES = (
    "prompt",
    "reference",
    "answer",
    *ROW_COLUMNS,
    *COST_COLUMNS,
    PARETO,
    "trial_id",
    "done",
    "config",
    "training_iteration",
    "timestamp",
    "time_total_s",
    "checkpoint_dir_name",
)


@dataclass
class SweepOutcome:
    """What a sweep produced: one row per trial (`ROW_COLUMNS`, the sampled values, the best metric)."""

    sweep_id: str
    path: str
    metric: str
    rows: list[dict[str, Any]]
    winner: dict[str, Any] | None
    interrupted: bool
    tracking_uri: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    registration: Any = None  # tracking.registry.Registration of the winner, when registered
    ui: str = ""  # how to open the MLflow UI on the runs
    tracking_note: str | None = None  # tracking-server outages during the sweep and what was logged late
    held_out: str | None = None  # the winner's test figure (or that it has only a validation one)
    scores: tuple[str, ...] = ()  # the generated answers' scores (`generated_metrics`), columns of `rows`
