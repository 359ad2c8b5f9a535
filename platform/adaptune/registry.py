"""The MLflow Model Registry: a sweep's winner becomes a new version with the alias `challenger` (and
`champion` when the model has none); people move `champion` in the UI; `NAME@champion`, `NAME/VERSION` or a
run id name an adapter to merge, and the merged model is registered as `<name>-merged`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adaptune.errors import ConfigError, Problem

log = logging.getLogger("adaptune")

CHAMPION, CHALLENGER = "champion", "challenger"
MERGED_SUFFIX = "-merged"
TAG_SWEEP_RUN = "adaptune.sweep_run_id"
TAG_TRIAL_RUN = "adaptune.trial_run_id"
TAG_DIGEST = "adaptune.dataset_digest"
TAG_BASE = "adaptune.base_model"  # hub:<id>@<revision> | storage:<path under storage_path> | path:<absolute path>
TAG_BASE_FINGERPRINT = "adaptune.base_model_fingerprint"  # architecture.model_fingerprint of a local base
TAG_METRIC = "adaptune.metric"
TAG_VALUE = "adaptune.metric_value"
TAG_ADAPTER_VERSION = "adaptune.adapter_version"
TAG_ADAPTER_MODEL = "adaptune.adapter_model"


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
) -> Registration:
    """Register the winning adapter as a new version of `name`, alias `challenger`, and `champion` if the model
    has none yet, tagged with the base model it needs (`base_reference`). A resumed sweep that already
    registered its winner gets that version back."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description="LoRA adapters registered by adaptune sweeps.")
    for mv in mlc.search_model_versions(f"name = '{name}'"):
        if mv.tags.get(TAG_SWEEP_RUN) == parent_run_id:
            return Registration(name, version_str(mv.version), sorted(mv.aliases))
    mv = mlflow.register_model(
        f"models:/{model_id}",
        name,
        tags={
            TAG_SWEEP_RUN: parent_run_id,
            TAG_TRIAL_RUN: trial_run_id,
            TAG_DIGEST: digest,
            TAG_BASE: base["base_model_ref"],
            **({TAG_BASE_FINGERPRINT: base["base_model_fingerprint"]} if "base_model_fingerprint" in base else {}),
            TAG_METRIC: metric,
            TAG_VALUE: f"{value:.6g}",
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


# --------------------------------------------------------------------------------------------------
# The base model an adapter needs, as a reference another machine can resolve
# --------------------------------------------------------------------------------------------------


def base_reference(model_path: str, revision: str | None, storage_root: Path) -> dict[str, str]:
    """How a registered adapter names its base model: a hub id with its revision; a local model under the
    storage root by its path there (every node and the machine that merges reach the same storage); any other
    local model by its absolute path. A local base also gets its fingerprint, so a copy found elsewhere can be
    checked to be the same model."""
    from adaptune.architecture import model_fingerprint
    from adaptune.config import model_source

    source = model_source(model_path)
    local = Path(source)
    if not local.is_dir():
        return {"base_model": source, "base_model_ref": f"hub:{source}@{revision or 'main'}"}
    root = storage_root.resolve()
    ref = f"storage:{local.relative_to(root)}" if root in local.parents else f"path:{local}"
    return {"base_model": source, "base_model_ref": ref, "base_model_fingerprint": model_fingerprint(local)}


def resolve_base(config: dict[str, Any], storage_root: Path, source: str) -> str:
    """The base model to load on this machine for an adapter's model config (see `base_reference`): a base under
    the storage root is looked up under this machine's storage root first, then at the path it had where it was
    trained. A local base found must have the recorded fingerprint.

    Raises:
        ConfigError: the base is nowhere to be found here, or a different model is at its path.
    """
    from adaptune.architecture import model_fingerprint

    ref = str(config.get("base_model_ref") or "")
    kind, _, where = ref.partition(":")
    if kind == "hub" or (not ref and not Path(config["base_model"]).is_absolute()):
        return str(config["base_model"])
    tried = ([str(storage_root.resolve() / where)] if kind == "storage" else []) + [str(config["base_model"])]
    found = next((p for p in tried if Path(p, "config.json").is_file()), None)
    if found is None:
        raise ConfigError(
            Problem(
                source,
                "base model",
                f"the adapter's base model {ref or config['base_model']} is not on this machine (looked in "
                f"{', '.join(tried)})",
                "Copy the base model to one of those paths (a base under storage_path is found under this "
                "machine's storage_path), or run the merge where it was trained",
            )
        )
    want = config.get("base_model_fingerprint")
    if want and model_fingerprint(Path(found)) != want:
        raise ConfigError(
            Problem(
                source,
                "base model",
                f"{found} is not the model the adapter was trained on (its config and weights differ from the "
                "fingerprint recorded at training)",
                "Put the training base model there, or merge where it was trained",
            )
        )
    return found


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
    model_id = run.data.tags.get("adaptune.adapter_model_id")
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


def download_adapter(adapter: ResolvedAdapter, dst: Path) -> tuple[Path, dict[str, Any]]:
    """The adapter's files and its model config (base model, revision) from MLflow."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=adapter.model_uri, dst_path=str(dst)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    pyfunc = mlmodel["flavors"]["python_function"]
    config = pyfunc.get("config") or {}  # the model_config it was logged with
    artifacts = pyfunc.get("artifacts", {})
    if "adapter" not in artifacts or "base_model" not in config:
        raise ConfigError(
            Problem(
                adapter.model_uri,
                adapter.ref,
                "not an adaptune adapter (no adapter artifact)",
                "Name an adapter logged by an adaptune sweep",
            )
        )
    return local / artifacts["adapter"]["path"], config


def log_merged(mlc: Any, adapter: ResolvedAdapter, out_dir: Path, report: Any) -> Registration:
    """Log the merged model to MLflow (a run beside the adapter's) and register it as `<name>-merged`, tagged
    with the adapter version it came from."""
    import mlflow

    from adaptune.tracking import MLFLOW_MODEL_CODE, model_requirements, text_signature

    source_run = mlc.get_run(adapter.run_id)
    name = (adapter.name or source_run.info.run_name) + MERGED_SUFFIX
    mlflow.set_experiment(experiment_id=source_run.info.experiment_id)
    run_name = f"merge {adapter.name}/{adapter.version}" if adapter.name else f"merge run {adapter.run_id}"
    with mlflow.start_run(run_name=run_name, tags={"adaptune.kind": "merge"}) as run:
        mlflow.log_params(
            {
                "adapter": adapter.ref,
                "adapter.model_uri": adapter.model_uri,
                "adapter.version": adapter.version,
                "merge.tolerance": report.tolerance,
            }
        )
        mlflow.log_metric("merge_max_abs_diff", report.max_abs_diff)
        info = mlflow.pyfunc.log_model(
            name="merged",
            python_model=str(MLFLOW_MODEL_CODE),
            artifacts={"model": str(out_dir)},
            signature=text_signature(),
            pip_requirements=model_requirements(),
        )
    tags = {TAG_ADAPTER_MODEL: adapter.model_uri, "adaptune.merge_run_id": run.info.run_id}
    if adapter.version:
        tags[TAG_ADAPTER_VERSION] = adapter.version
        tags["adaptune.adapter_registered_model"] = adapter.name
    mv = mlflow.register_model(f"models:/{info.model_id}", name, tags=tags)
    log.info("mlflow: registered merged model %s version %s", name, mv.version)
    return Registration(name, version_str(mv.version), [])


# --------------------------------------------------------------------------------------------------
# Retraining: promotion by the frozen set, and rollback
# --------------------------------------------------------------------------------------------------

PREVIOUS_CHAMPION = "previous-champion"
ROLLED_BACK = "rolled-back"
TAG_DECISION = "adaptune.retrain.decision"  # promoted | kept-champion | first-champion | failed
TAG_DECISION_REASON = "adaptune.retrain.reason"
TAG_FROZEN_LOSS = "adaptune.frozen_eval_loss"
TAG_RETRAIN_RUN = "adaptune.retrain_run_id"


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
        TAG_DECISION: "failed",
        TAG_DECISION_REASON: reason[:4000],
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
