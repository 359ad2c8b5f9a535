"""adaptune models in MLflow: a trial's adapter (or a merged model) logged as a pyfunc model from code
(`model_code.py`: prompts in, text out), the base model an adapter needs named so another machine can find it,
and an adapter downloaded back for merging or scoring."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from adaptune.config import model_source
from adaptune.errors import ConfigError, Problem
from adaptune.names import MODEL_CONFIG
from adaptune.preflight.architecture import model_fingerprint
from adaptune.tracking.store import module_api

MODEL_CODE = Path(__file__).with_name("model_code.py")  # the file MLflow stores and runs when loading


def log_text_model(
    uri: str, run_id: str, name: str, artifacts: dict[str, str], model_config: dict[str, Any] | None = None, **kw: Any
) -> str:
    """Log a pyfunc text model (adapter or merged model, by the artifact given) to the run `run_id` of the store
    at `uri`. Returns its model id."""
    import mlflow

    with module_api(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            model_config=model_config,
            signature=text_signature(),
            pip_requirements=model_requirements(),
            **kw,
        )
    return info.model_id


def text_signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from adaptune.tracking.model_code import DEFAULT_MAX_NEW_TOKENS  # imports MLflow: kept out of light paths

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # a list of prompts (or a one-column DataFrame)
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
    )


def model_requirements() -> list[str]:
    """What loading a logged model needs, pinned to the versions that wrote it."""
    return [f"{lib}=={version(lib)}" for lib in ("mlflow", "torch", "transformers", "peft", "safetensors")]


def version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------------
# The base model an adapter needs, as a reference another machine can resolve
# --------------------------------------------------------------------------------------------------


def base_reference(model_path: str, revision: str | None, storage_root: Path) -> dict[str, str]:
    """How a registered adapter names its base model: a hub id with its revision; a local model under the
    storage root by its path there (every node and the machine that merges reach the same storage); any other
    local model by its absolute path. A local base also gets its fingerprint, so a copy found elsewhere can be
    checked to be the same model."""
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
    ref = str(config.get("base_model_ref") or "")
    kind, _, where = ref.partition(":")
    if kind == "hub" or (not ref and not Path(config["base_model"]).is_absolute()):
        return str(config["base_model"])
    tried = ([str(storage_root.resolve() / where)] if kind == "storage" else []) + [str(config["base_model"])]
    found = next((p for p in tried if Path(p, MODEL_CONFIG).is_file()), None)
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
# An adapter back from MLflow
# --------------------------------------------------------------------------------------------------


def download_adapter(uri: str, model_uri: str, ref: str, dst: Path) -> tuple[Path, dict[str, Any]]:
    """The adapter's files and its model config (base model, revision) from MLflow."""
    import mlflow

    with module_api(uri):  # a models:/ URI is resolved through MLflow's process-wide URIs
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    pyfunc = mlmodel["flavors"]["python_function"]
    config = pyfunc.get("config") or {}  # the model_config it was logged with
    artifacts = pyfunc.get("artifacts", {})
    if "adapter" not in artifacts or "base_model" not in config:
        raise ConfigError(
            Problem(
                model_uri,
                ref,
                "not an adaptune adapter (no adapter artifact)",
                "Name an adapter logged by an adaptune sweep",
            )
        )
    return local / artifacts["adapter"]["path"], config
