"""What a retrain and a rollback record in MLflow: the retrain run (its drop, training set and frozen set as
params and dataset inputs; its scores, decision and merge as metrics and tags) and a rollback's run. The sweep a
retrain runs is nested under its retrain run."""

from __future__ import annotations

from typing import Any

from adaptune.config import ClusterProfile
from adaptune.names import (
    KIND_RETRAIN,
    KIND_ROLLBACK,
    TAG_CHALLENGER_VERSION,
    TAG_CHAMPION_AFTER,
    TAG_DECISION,
    TAG_DECISION_WHY,
    TAG_FROZEN_LOSS,
    TAG_GUARD_PREFIX,
    TAG_KIND,
    TAG_MERGED_TO,
    TAG_PARENT,
    TAG_REGISTERED_MODEL,
    TAG_RESTORED_VERSION,
    TAG_RETRAIN_DECISION,
    TAG_RETRAIN_ID,
    TAG_RETRAIN_REASON,
    TAG_RETRAIN_RUN,
    TAG_ROLLBACK_REASON,
    TAG_ROLLED_BACK_VERSION,
    TAG_SWEEP_RUN,
)
from adaptune.tracking.runs import dataset_input
from adaptune.tracking.server import embedded_artifacts
from adaptune.tracking.store import experiment_id


class RetrainRun:
    """The MLflow run of one retrain, in the sweep's experiment."""

    def __init__(self, mlc: Any, uri: str, experiment: str, cluster: ClusterProfile, model: str, retrain_id: str):
        self.mlc, self.model = mlc, model
        exp = experiment_id(mlc, experiment, embedded_artifacts(cluster, uri))
        tags = {TAG_KIND: KIND_RETRAIN, TAG_REGISTERED_MODEL: model, TAG_RETRAIN_ID: retrain_id}
        self.run_id = mlc.create_run(exp, run_name=retrain_id, tags=tags).info.run_id

    def sweep_tags(self) -> dict[str, str]:
        """Tags that nest the retrain's sweep under this run."""
        return {TAG_PARENT: self.run_id, TAG_RETRAIN_RUN: self.run_id}

    def log_inputs(self, params: dict[str, Any], training: list[Any], frozen: tuple[str, str]) -> None:
        """The round's settings as params; each training snapshot and the frozen set (path, digest) as datasets."""
        from mlflow.entities import Param

        self.mlc.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        datasets = [dataset_input(s.path, f"drop-{s.digest[:12]}", s.digest, "training", s.rows) for s in training]
        datasets.append(dataset_input(frozen[0], "frozen-eval", frozen[1], "evaluation"))
        self.mlc.log_inputs(self.run_id, datasets=datasets)

    def decided(self, decision: str) -> None:
        self.mlc.set_tag(self.run_id, TAG_DECISION, decision)

    def record_decision(
        self,
        challenger: str,
        decision: str,
        why: str,
        scores: dict[str, float],
        champion_after: str | None,
        sweep_run_id: str,
        guards: dict[str, dict[str, float]] | None = None,
    ) -> None:
        """The decision on the challenger's version, and the scores (frozen set, each guard set) and decision on
        the retrain run."""
        for key, value in {
            TAG_RETRAIN_DECISION: decision,
            TAG_RETRAIN_REASON: why,
            TAG_FROZEN_LOSS: f"{scores['challenger']:.6g}",
            TAG_RETRAIN_RUN: self.run_id,
        }.items():
            self.mlc.set_model_version_tag(self.model, challenger, key, value)
        for name, value in scores.items():
            self.mlc.log_metric(self.run_id, f"{name}_frozen_eval_loss", value)
        if "champion" in scores:
            self.mlc.log_metric(self.run_id, "improvement", scores["champion"] - scores["challenger"])
        for i, (path, by_name) in enumerate((guards or {}).items()):  # guard<i>_<name>_eval_loss, its path a tag
            self.mlc.set_tag(self.run_id, f"{TAG_GUARD_PREFIX}{i}", path)
            for name, value in by_name.items():
                self.mlc.log_metric(self.run_id, f"guard{i}_{name}_eval_loss", value)
        for key, value in {
            TAG_DECISION: decision,
            TAG_DECISION_WHY: why,
            TAG_CHALLENGER_VERSION: challenger,
            TAG_CHAMPION_AFTER: champion_after or "",
            TAG_SWEEP_RUN: sweep_run_id,
        }.items():
            self.mlc.set_tag(self.run_id, key, value)

    def merged_to(self, path: str) -> None:
        self.mlc.set_tag(self.run_id, TAG_MERGED_TO, path)

    def end(self, status: str) -> None:
        self.mlc.set_terminated(self.run_id, status)


def champion_params(mlc: Any, model: str, version: str) -> dict[str, str]:
    """The params of the trial run that trained `version` of `model`."""
    return mlc.get_run(mlc.get_model_version(model, version).run_id).data.params


def record_rollback(mlc: Any, model: str, demoted: str, restored: str, reason: str, rollback_id: str) -> str:
    """A finished run recording a rollback, in the experiment of the restored version's run. Returns its id."""
    source = mlc.get_run(mlc.get_model_version(model, restored).run_id)
    exp = experiment_id(mlc, mlc.get_experiment(source.info.experiment_id).name, None)
    run = mlc.create_run(
        exp,
        run_name=rollback_id,
        tags={
            TAG_KIND: KIND_ROLLBACK,
            TAG_REGISTERED_MODEL: model,
            TAG_ROLLED_BACK_VERSION: demoted,
            TAG_RESTORED_VERSION: restored,
            TAG_ROLLBACK_REASON: reason,
        },
    )
    mlc.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
