"""The registry verbs on the embedded store a new user gets (MLflow's SQLite store, in this process): version
references, aliases, promotion, rollback, and a retrain that failed after registering its challenger. The same
verbs run against an `mlflow server` in the MLflow, merge and retrain integration tests.

MLflow's SQLite store hands versions back as ints where a server hands back strings; every reference below
failed on it with `sequence item 0: expected str instance, int found` before versions were read as text."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from adaptune import names
from adaptune.errors import ConfigError
from adaptune.tracking import models, registry

pytestmark = pytest.mark.unit

NAME = "support-bot"


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = mlc.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, mlc, experiment


def _winner(mlc, experiment: str, sweep_run: str) -> registry.Registration:
    run = mlc.create_run(experiment)
    model = mlc.create_logged_model(experiment, source_run_id=run.info.run_id, name="adapter")
    base = {"base_model": "org/base", "base_model_ref": "hub:org/base@main"}
    return registry.register_winner(
        mlc, NAME, model.model_id, sweep_run, run.info.run_id, "d" * 64, base, "eval_loss", 1.25
    )


def test_versions_and_aliases_resolve_on_the_embedded_store(store):
    uri, mlc, experiment = store
    first = _winner(mlc, experiment, "sweep-a")
    second = _winner(mlc, experiment, "sweep-b")

    assert (first.version, first.aliases) == ("1", ["challenger", "champion"])
    assert (second.version, second.aliases) == ("2", ["challenger"])
    assert _winner(mlc, experiment, "sweep-b").version == "2"  # a resumed sweep gets its version back
    assert registry.aliases(mlc, NAME) == {"champion": "1", "challenger": "2"}
    for ref, version in (
        (f"{NAME}/1", "1"),
        (f"{NAME}/2", "2"),
        (f"{NAME}@champion", "1"),
        (f"{NAME}@challenger", "2"),
    ):
        resolved = registry.resolve_ref(mlc, ref, uri)
        assert resolved.version == version and resolved.model_uri.startswith("models:/"), ref

    with pytest.raises(ConfigError, match=r"support-bot has no version 7.*Versions: 1, 2"):
        registry.resolve_ref(mlc, f"{NAME}/7", uri)
    with pytest.raises(ConfigError, match=r"no alias 'gold'.*@challenger -> version 2, @champion -> version 1"):
        registry.resolve_ref(mlc, f"{NAME}@gold", uri)


def test_promotion_and_rollback_on_the_embedded_store(store):
    uri, mlc, experiment = store
    _winner(mlc, experiment, "sweep-a")
    _winner(mlc, experiment, "sweep-b")

    assert registry.promote(mlc, NAME, "2") == "1"
    assert registry.aliases(mlc, NAME) == {"champion": "2", "challenger": "2", "previous-champion": "1"}
    assert registry.rollback(mlc, NAME, uri) == ("2", "1")
    assert registry.aliases(mlc, NAME) == {"champion": "1", "challenger": "2", "rolled-back": "2"}
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        registry.rollback(mlc, NAME, uri)


def test_a_failed_retrain_leaves_its_challenger_marked(store):
    _, mlc, experiment = store
    _winner(mlc, experiment, "sweep-a")
    challenger = _winner(mlc, experiment, "sweep-b").version

    registry.mark_failed(mlc, NAME, challenger, "retrain r1 failed before deciding: RuntimeError: boom", "run-1")

    tags = mlc.get_model_version(NAME, challenger).tags
    assert tags[names.TAG_RETRAIN_DECISION] == "failed"
    assert tags[names.TAG_RETRAIN_REASON].endswith("RuntimeError: boom")
    assert tags[names.TAG_RETRAIN_RUN] == "run-1"
    assert registry.aliases(mlc, NAME) == {"champion": "1"}  # no undecided @challenger left behind


def test_the_base_model_is_recorded_as_a_reference_another_machine_resolves(store, tiny_model, tmp_path):
    """A base under the storage root is found under another machine's storage root; a hub base is its id and
    revision; a local base elsewhere keeps its path, and a different model found there is refused."""
    import shutil

    _, mlc, experiment = store
    here, there = tmp_path / "storage-here", tmp_path / "storage-there"
    shutil.copytree(tiny_model, here / "models" / "base")
    ref = models.base_reference(str(here / "models" / "base"), None, here)
    assert ref["base_model_ref"] == "storage:models/base" and len(ref["base_model_fingerprint"]) == 64
    run = mlc.create_run(experiment)
    model = mlc.create_logged_model(experiment, source_run_id=run.info.run_id, name="adapter")
    version = registry.register_winner(mlc, NAME, model.model_id, "s", run.info.run_id, "d" * 64, ref, "eval_loss", 1.0)
    tags = mlc.get_model_version(NAME, version.version).tags
    assert tags[names.TAG_BASE] == "storage:models/base"
    assert tags[names.TAG_BASE_FINGERPRINT] == ref["base_model_fingerprint"]

    # The machine that merges mounts the same storage elsewhere; the training machine's path is gone.
    shutil.copytree(here / "models", there / "models")
    shutil.rmtree(here)
    assert models.resolve_base(ref, there, "m/1") == str(there / "models" / "base")
    (there / "models" / "base" / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    with pytest.raises(ConfigError, match="is not the model the adapter was trained on"):
        models.resolve_base(ref, there, "m/1")
    shutil.rmtree(there)
    with pytest.raises(ConfigError, match=r"base model storage:models/base is not on this machine \(looked in"):
        models.resolve_base(ref, there, "m/1")

    hub = models.base_reference("org/base-7b", "a" * 40, here)
    assert hub == {"base_model": "org/base-7b", "base_model_ref": f"hub:org/base-7b@{'a' * 40}"}
    assert models.resolve_base(hub, there, "m/1") == "org/base-7b"
