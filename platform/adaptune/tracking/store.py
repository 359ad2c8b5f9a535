"""The MLflow client every part of adaptune talks to a store through, given its URI explicitly.

MLflow's process-wide tracking and registry URIs are never left set: the few calls MLflow offers only in its
module API (logging a model) run inside `module_api`, which sets them for that call alone and then restores
both the module's state and the environment exactly (MLflow's own setter would export them to every
subprocess, and its restore would drop a user's MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def client(uri: str) -> Any:
    """An `MlflowClient` for the tracking store and Model Registry at `uri`."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlc: Any, name: str, artifact_location: str | None) -> str:
    """The id of the experiment `name`, created (with `artifact_location`, when given) if it does not exist."""
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlc.create_experiment(name, artifact_location=artifact_location)


@contextmanager
def module_api(uri: str) -> Iterator[None]:
    """MLflow's module-level API (`mlflow.start_run`, `mlflow.pyfunc.log_model`) pointed at `uri` for the
    duration of the block only."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    saved = (tracking_state._tracking_uri, registry_state._registry_uri, {v: os.environ.get(v) for v in _URI_VARS})
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield
    finally:
        tracking_state.set_tracking_uri(saved[0])
        registry_state._registry_uri = saved[1]
        _restore_env(saved[2])


@contextmanager
def client_settings(settings: dict[str, str]) -> Iterator[None]:
    """MLflow client settings that it reads from the environment at each request (`MLFLOW_HTTP_REQUEST_*`),
    for the duration of the block only."""
    saved = {var: os.environ.get(var) for var in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        _restore_env(saved)


def _restore_env(saved: dict[str, str | None]) -> None:
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
