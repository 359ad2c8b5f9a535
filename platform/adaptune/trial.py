"""What owns one trial: a Ray Train `TorchTrainer` with N DeepSpeed workers for one set of hyperparameters,
run to the end, and its outcome read back from the checkpoints it reported."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptune.config import ClusterProfile, SweepConfig

METRIC = "eval_loss"


class TrainingDiverged(RuntimeError):
    """The trial's loss became NaN/inf or exploded; it was stopped at once."""


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a run shares, computed once by the driver."""

    data_dir: str  # the prepared (tokenized) dataset, on storage every node reaches
    target_modules: list[str]
    pad_token_id: int


@dataclass
class TrialOutcome:
    """What a finished trial produced."""

    path: str  # the trial's storage directory
    best: dict[str, Any]  # metrics of the best evaluation
    final: dict[str, Any]  # metrics of the last evaluation
    history: list[dict[str, Any]]  # every evaluation, in order
    adapter_path: str  # adapter of the best evaluation
    restarts: list[int] = field(default_factory=list)  # steps the trial resumed from after worker losses
    quantized_layers: int = 0  # base layers held in 4-/8-bit
    startup: list[dict[str, float]] = field(default_factory=list)  # seconds per start-up phase, per (re)start


def build_trainer(
    sweep: SweepConfig,
    cluster: ClusterProfile,
    inputs: TrialInputs,
    name: str,
    storage_path: str,
    callbacks: list[Any] | None = None,
) -> Any:
    """A `TorchTrainer` for one trial: N workers over gloo (CPU) or NCCL (GPU), restarted from the last
    adapter checkpoint up to `trial.max_failures` times, keeping the best checkpoint and the latest."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from adaptune.train_loop import train_fn_per_worker

    tr = cluster.trial
    resources = {"CPU": tr.cpus_per_worker}
    if tr.use_gpu:
        resources["GPU"] = tr.gpus_per_worker
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "sweep": sweep.model_dump(mode="json"),
            "cluster": cluster.model_dump(mode="json"),
            "data_dir": inputs.data_dir,
            "target_modules": inputs.target_modules,
            "pad_token_id": inputs.pad_token_id,
            "launched_at": time.time(),
        },
        scaling_config=ScalingConfig(num_workers=tr.num_workers, use_gpu=tr.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if tr.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=tr.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order="min"
            ),
            callbacks=callbacks or [],
        ),
    )


def read_outcome(result: Any) -> TrialOutcome:
    """The outcome of a finished `TorchTrainer.fit()`, read from its checkpoints (not `Result.metrics`,
    which Ray leaves empty in some paths). The latest checkpoint's trainer state has the full history."""
    from adaptune.train_loop import ADAPTER_DIR, TRAINER_STATE

    if result.checkpoint is None:
        raise RuntimeError(f"trial at {result.path} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / TRAINER_STATE).read_text(encoding="utf-8"))
    if "diverged" in state:
        raise TrainingDiverged(state["diverged"]["reason"])
    best_ckpt, best = min(
        result.best_checkpoints or [(result.checkpoint, state["history"][-1])], key=lambda cm: cm[1][METRIC]
    )
    return TrialOutcome(
        path=str(result.path),
        best=best,
        final=state["history"][-1],
        history=state["history"],
        adapter_path=str(Path(best_ckpt.path) / ADAPTER_DIR),
        restarts=state["restarts"],
        quantized_layers=state["quantized_layers"],
        startup=state.get("startup", []),
    )


def run_trial(
    sweep: SweepConfig, cluster: ClusterProfile, inputs: TrialInputs, name: str, storage_path: str
) -> TrialOutcome:
    """Train one adapter with the sweep's base values and return what it produced.

    Raises:
        ray.train.TrainingFailedError: when the workers failed more than `trial.max_failures` times.
    """
    trainer = build_trainer(sweep, cluster, inputs, name, storage_path)
    result = trainer.fit()
    return read_outcome(result)


class TrialSkipped(RuntimeError):
    """The sampled combination cannot train (an incompatible setting); the trial is recorded, not run."""


def target_key(target: str | list[str]) -> str:
    """A stable key for a `lora.target_modules` value (a named set or a list)."""
    return target if isinstance(target, str) else json.dumps(sorted(target))


def launch_training(
    config: dict[str, Any],
    sweep: dict[str, Any],
    cluster: dict[str, Any],
    inputs: TrialInputs,
    targets: dict[str, list[str]],
    trials_path: str,
) -> None:
    """The Ray Tune trainable of a sweep: one trial. Applies the sampled values (`config`, dotted keys) to the
    base sweep, then runs a TorchTrainer whose evaluations reach Tune through `TuneReportCallback`.

    The inner run is named after the Tune trial, so a trial restarted by `--resume` continues from the
    checkpoints its earlier attempt left in `trials_path`.
    """
    from pydantic import ValidationError
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from adaptune.search_space import apply_values, resolve_alpha
    from adaptune.validate import check_compatibility

    base = SweepConfig.model_validate(sweep)
    profile = ClusterProfile.model_validate(cluster)
    try:
        trial_sweep = apply_values(base, resolve_alpha(config, base))
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        raise TrialSkipped(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    problems = check_compatibility(trial_sweep, profile, "sampled", "cluster")
    if problems:
        raise TrialSkipped("; ".join(f"{p.key}: {p.message}" for p in problems))
    trial_id = tune.get_context().get_trial_id()
    finished = _finished_run(Path(trials_path) / trial_id, trial_sweep.train.max_steps)
    if finished is not None:
        # Restarted by --resume after finishing (the driver died before Tune saved that): replay, don't retrain.
        for report in finished:
            tune.report(report)
        return
    trial_inputs = TrialInputs(
        inputs.data_dir, targets[target_key(trial_sweep.lora.target_modules)], inputs.pad_token_id
    )
    trainer = build_trainer(
        trial_sweep, profile, trial_inputs, name=trial_id, storage_path=trials_path, callbacks=[TuneReportCallback()]
    )
    trainer.fit()


def checkpoints_on_storage(run_dir: Path) -> dict[int, Path]:
    """A trial's inner-run checkpoints on storage by training step, read from their trainer states.
    A checkpoint directory still being written (no readable state yet) is left out."""
    from adaptune.train_loop import TRAINER_STATE

    out = {}
    for ckpt in sorted(run_dir.glob("checkpoint_*")):
        try:
            out[int(json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))["step"])] = ckpt
        except (OSError, ValueError, KeyError):
            continue
    return out


def _finished_run(run_dir: Path, max_steps: int) -> list[dict[str, Any]] | None:
    """The reports of a trial's inner run that already finished (or diverged), read from its latest
    checkpoint on storage; None when it has not finished."""
    from adaptune.train_loop import TRAINER_STATE

    by_step = checkpoints_on_storage(run_dir)
    if not by_step:
        return None
    latest = by_step[max(by_step)]
    state = json.loads((latest / TRAINER_STATE).read_text(encoding="utf-8"))
    if "diverged" in state:
        return [{"step": state["diverged"]["step"], "eval_loss": float("inf"), "diverged": 1}]
    if state["step"] < max_steps:
        return None
    # each evaluation's checkpoint, so the winner's adapter path is exact
    return [{**h, "checkpoint_path": str(by_step.get(h["step"], latest))} for h in state["history"]]
