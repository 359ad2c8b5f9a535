"""The MLflow Model Registry: a sweep's winner becomes a new version with the alias `challenger` (and
`champion` when the model has none); people move `champion` in the UI; `NAME@champion`, `NAME/VERSION` or a
run id name an adapter to merge, and the merged model is registered as `<name>-merged`. Retraining promotes by
moving `champion` (the version it leaves keeps `previous-champion`) and rolls back the same way.

Every call goes through the explicit client it is given (`store.client`); a version is always text here."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptune.errors import ConfigError, Problem
from adaptune.names import (
    CHALLENGER,
    CHAMPION,
    DECISION_FAILED,
    KIND_MERGE,
    MERGED_SUFFIX,
    PREVIOUS_CHAMPION,
    ROLLED_BACK,
    TAG_ADAPTER_MODEL,
    TAG_ADAPTER_REGISTERED_MODEL,
    TAG_ADAPTER_VERSION,
    TAG_BASE,
    TAG_BASE_FINGERPRINT,
    TAG_DIGEST,
    TAG_KIND,
    TAG_LORA_INIT,
    TAG_MERGE_RUN,
    TAG_METRIC,
    TAG_METRIC_VALUE,
    TAG_MODEL_ID,
    TAG_RETRAIN_DECISION,
    TAG_RETRAIN_REASON,
    TAG_RETRAIN_RUN,
    TAG_SWEEP_RUN,
    TAG_TEST_VALUE,
    TAG_TRIAL_RUN,
)
from adaptune.tracking.models import log_text_model
from adaptune.tracking.store import module_api

log = logging.getLogger("adaptune")


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    aliases: list[str]


def version_str(version: Any) -> str:
    """A model version as adaptune handles it: text. MLflow's stores disagree on the type (the embedded SQLite
    store returns ints, a tracking server strings), so every version read from MLflow passes through here."""
    return str(version)


def register_winner(
    mlc: Any,
    name: str,
    model_id: str,
    parent_run_id: str,
    trial_run_id: str,
    digest: str,
    base: dict[str, str],
    metric: str,
    value: float,
    test_value: float | None = None,
    lora_init: str | None = None,
) -> Registration:
    """Register the winning adapter as a new version of `name`, alias `challenger`, and `champion` if the model
    has none yet, tagged with the base model it needs (`base_reference`) and how it was initialised
    (`lora_init`). A resumed sweep that already registered its winner gets that version back."""
    _ensure_registered_model(mlc, name, "LoRA adapters registered by adaptune sweeps.")
    for mv in mlc.search_model_versions(f"name = '{name}'"):
        if mv.tags.get(TAG_SWEEP_RUN) == parent_run_id:
            return Registration(name, version_str(mv.version), sorted(mv.aliases))
    mv = register_model(
        mlc,
        model_id,
        name,
        {
            TAG_SWEEP_RUN: parent_run_id,
            TAG_TRIAL_RUN: trial_run_id,
            TAG_DIGEST: digest,
            TAG_BASE: base["base_model_ref"],
            **({TAG_BASE_FINGERPRINT: base["base_model_fingerprint"]} if "base_model_fingerprint" in base else {}),
            TAG_METRIC: metric,
            TAG_METRIC_VALUE: f"{value:.6g}",
            **({TAG_TEST_VALUE: f"{test_value:.6g}"} if test_value is not None else {}),
            **({TAG_LORA_INIT: lora_init} if lora_init else {}),
        },
    )
    version = version_str(mv.version)
    aliases = [CHALLENGER]
    mlc.set_registered_model_alias(name, CHALLENGER, version)
    if CHAMPION not in mlc.get_registered_model(name).aliases:
        mlc.set_registered_model_alias(name, CHAMPION, version)
        aliases.append(CHAMPION)
    log.info("mlflow: registered %s version %s (%s)", name, version, ", ".join(aliases))
    return Registration(name, version, aliases)


def register_model(mlc: Any, model_id: str, name: str, tags: dict[str, str]) -> Any:
    """A new version of the registered model `name` from the logged model `model_id` (what
    `mlflow.register_model("models:/<id>", name)` does, through the client: the version records the logged model,
    and the logged model lists the versions made from it). Returns the model version."""
    logged = mlc.get_logged_model(model_id)
    # The registry resolves a `models:/` source through MLflow's process-wide tracking URI: set for this call only
    with module_api(mlc.tracking_uri):
        mv = mlc.create_model_version(
            name, source=f"models:/{model_id}", run_id=logged.source_run_id, tags=tags, model_id=model_id
        )
    made = json.loads(logged.tags.get("mlflow.modelVersions") or "[]")
    made.append({"name": name, "version": version_str(mv.version)})
    mlc.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(made)})
    return mv


def _ensure_registered_model(mlc: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description=description)


# --------------------------------------------------------------------------------------------------
# The base model an adapter needs, as a reference another machine can resolve
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Naming an adapter: NAME@ALIAS, NAME/VERSION or RUN_ID
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedAdapter:
    ref: str
    name: str | None  # registered model, when named through the registry
    version: str | None
    model_uri: str  # what MLflow loads: models:/<model id>
    run_id: str


def resolve_ref(mlc: Any, ref: str, uri: str) -> ResolvedAdapter:
    """The adapter a reference names in the registry at `uri`. Unknown names, versions and aliases get an error
    listing what exists."""
    from mlflow.exceptions import MlflowException

    if "@" in ref or re.fullmatch(r".+/\d+", ref):
        name, alias, version = _split(ref)
        try:
            model = mlc.get_registered_model(name)
        except MlflowException:
            names = sorted(m.name for m in mlc.search_registered_models(max_results=1000))
            raise ConfigError(
                Problem(uri, ref, f"no registered model {name!r}", f"Registered models: {', '.join(names) or 'none'}")
            ) from None
        found = mlc.search_model_versions(f"name = '{name}'")
        versions = sorted((version_str(mv.version) for mv in found), key=int)
        have_aliases = {a: version_str(v) for a, v in model.aliases.items()}
        if alias is not None:
            if alias not in have_aliases:
                have = ", ".join(f"@{a} -> version {v}" for a, v in sorted(have_aliases.items())) or "none"
                raise ConfigError(Problem(uri, ref, f"{name} has no alias {alias!r}", f"Aliases: {have}"))
            version = have_aliases[alias]
        elif str(int(version)) not in versions:  # "01" names version 1
            raise ConfigError(
                Problem(uri, ref, f"{name} has no version {version}", f"Versions: {', '.join(versions) or 'none'}")
            )
        mv = mlc.get_model_version(name, str(int(version)))
        return ResolvedAdapter(ref, name, version_str(mv.version), _model_uri(mv), mv.run_id)
    try:
        run = mlc.get_run(ref)
    except MlflowException:
        raise ConfigError(
            Problem(
                uri,
                ref,
                "not a registered model reference or a run id",
                "Use NAME@ALIAS (e.g. mymodel@champion), NAME/VERSION or the run id of a trial",
            )
        ) from None
    model_id = run.data.tags.get(TAG_MODEL_ID)
    if not model_id:
        raise ConfigError(
            Problem(uri, ref, f"run {ref} ({run.info.run_name}) has no logged adapter", "Name a trial run that trained")
        )
    return ResolvedAdapter(ref, None, None, f"models:/{model_id}", ref)


def _split(ref: str) -> tuple[str, str | None, str | None]:
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        return name, alias, None
    name, version = ref.rsplit("/", 1)
    return name, None, version


def _model_uri(mv: Any) -> str:
    model_id = getattr(mv, "model_id", None)
    return f"models:/{model_id}" if model_id else mv.source


def log_merged(mlc: Any, uri: str, adapter: ResolvedAdapter, out_dir: Path, report: Any) -> Registration:
    """Log the merged model to MLflow (a run beside the adapter's) and register it as `<name>-merged`, tagged
    with the adapter version it came from."""
    from mlflow.entities import Metric, Param

    source_run = mlc.get_run(adapter.run_id)
    name = (adapter.name or source_run.info.run_name) + MERGED_SUFFIX
    run_name = f"merge {adapter.name}/{adapter.version}" if adapter.name else f"merge run {adapter.run_id}"
    run = mlc.create_run(source_run.info.experiment_id, run_name=run_name, tags={TAG_KIND: KIND_MERGE})
    run_id = run.info.run_id
    params = {
        "adapter": adapter.ref,
        "adapter.model_uri": adapter.model_uri,
        "adapter.version": adapter.version,
        "merge.tolerance": report.tolerance,
    }
    mlc.log_batch(
        run_id,
        metrics=[Metric("merge_max_abs_diff", report.max_abs_diff, _now_ms(), 0)],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    status = "FAILED"
    try:
        model_id = log_text_model(uri, run_id, "merged", {"model": str(out_dir)})
        status = "FINISHED"
    finally:
        mlc.set_terminated(run_id, status)
    tags = {TAG_ADAPTER_MODEL: adapter.model_uri, TAG_MERGE_RUN: run_id}
    if adapter.version:
        tags[TAG_ADAPTER_VERSION] = adapter.version
        tags[TAG_ADAPTER_REGISTERED_MODEL] = adapter.name
    _ensure_registered_model(mlc, name, "Models merged from adaptune adapters.")
    mv = register_model(mlc, model_id, name, tags)
    log.info("mlflow: registered merged model %s version %s", name, mv.version)
    return Registration(name, version_str(mv.version), [])


def _now_ms() -> int:

    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------------
# Retraining: promotion by the frozen set, and rollback
# --------------------------------------------------------------------------------------------------


def aliases(mlc: Any, name: str) -> dict[str, str]:
    """alias -> version of a registered model ({} when the model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: version_str(v) for a, v in mlc.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def promote(mlc: Any, name: str, version: str) -> str | None:
    """Move `champion` to `version`; the version it leaves keeps `previous-champion`. Returns that version."""
    previous = aliases(mlc, name).get(CHAMPION)
    if previous is not None and previous != version:
        mlc.set_registered_model_alias(name, PREVIOUS_CHAMPION, previous)
    mlc.set_registered_model_alias(name, CHAMPION, version)
    return previous


def mark_failed(mlc: Any, name: str, version: str, reason: str, retrain_run_id: str) -> None:
    """Record on a registered challenger that its retrain failed before deciding (so nobody reads it as still
    being judged, or as the winner of a round), and take `challenger` off it if the alias still points there."""
    for key, value in {
        TAG_RETRAIN_DECISION: DECISION_FAILED,
        TAG_RETRAIN_REASON: reason[:4000],
        TAG_RETRAIN_RUN: retrain_run_id,
    }.items():
        mlc.set_model_version_tag(name, version, key, value)
    held = aliases(mlc, name)
    if held.get(CHALLENGER) == version and held.get(CHAMPION) != version:
        mlc.delete_registered_model_alias(name, CHALLENGER)


def rollback(mlc: Any, name: str, uri: str) -> tuple[str, str]:
    """Move `champion` back to `previous-champion`. The demoted version gets the alias `rolled-back`, and
    `previous-champion` is removed (a second rollback has nothing to go back to). Returns (from, to).

    Raises:
        ConfigError: no such model, or no previous champion to go back to.
    """
    have = aliases(mlc, name)
    if not have:
        resolve_ref(mlc, f"{name}@{CHAMPION}", uri)  # raises, listing the registered models
    if PREVIOUS_CHAMPION not in have or CHAMPION not in have:
        shown = ", ".join(f"@{a} -> version {v}" for a, v in sorted(have.items())) or "none"
        raise ConfigError(
            Problem(
                uri,
                name,
                f"nothing to roll back to: {name} has no @{PREVIOUS_CHAMPION} (aliases: {shown})",
                f"Move @{CHAMPION} to a version in the MLflow UI instead",
            )
        )
    demoted, restored = have[CHAMPION], have[PREVIOUS_CHAMPION]
    mlc.set_registered_model_alias(name, CHAMPION, restored)
    mlc.set_registered_model_alias(name, ROLLED_BACK, demoted)
    mlc.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    return demoted, restored
