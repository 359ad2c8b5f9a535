"""Secure defaults: a model's own code runs only when trust_remote_code names that model, weights are
safetensors only and nothing user-supplied is unpickled, secrets stay out of what is printed and recorded, and
the production MLflow recipe (scripts/mlflow-server.sh: basic auth, 127.0.0.1) refuses whoever has no login."""

from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support import DEMO_DATA, REPO, cluster_config, free_port, run_cli, sweep_config, write_yaml
from .support.mlflow_server import MlflowServer, _sql, _stop, _wait_healthy, ensure_postgres

SCRIPT = REPO / "scripts" / "mlflow-server.sh"
VENV_BIN = str(Path(sys.executable).parent)

# --------------------------------------------------------------------------------------------------
# Redaction: one helper for every URI, config dump and log line that leaves the process
# --------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_redact_uri_masks_passwords_and_secret_query_values_only():
    from adaptune.redaction import redact_uri

    assert redact_uri("http://alice:s3cret@host:5000") == "http://alice:***@host:5000"
    assert (
        redact_uri("postgresql+psycopg2://mlflow:p%40ss@db:5432/mlflow")
        == "postgresql+psycopg2://mlflow:***@db:5432/mlflow"
    )
    assert redact_uri("http://u:p@ss@host/x") == "http://u:***@host/x"  # a raw @ in the password: all of it
    assert redact_uri("https://h/o?X-Amz-Signature=abc&X-Amz-Credential=k&part=2&sig=z") == (
        "https://h/o?X-Amz-Signature=***&X-Amz-Credential=***&part=2&sig=***"
    )
    for harmless in ("http://127.0.0.1:5000", "http://alice@host:5000", "sqlite:////tmp/x/mlflow.db", "org/model"):
        assert redact_uri(harmless) == harmless


@pytest.mark.unit
def test_redact_masks_uris_in_text_and_the_values_of_secret_environment_variables(monkeypatch):
    from adaptune.redaction import SECRET_ENV, redact, redacted

    token, password = "hf_" + secrets.token_hex(8), secrets.token_urlsafe(12)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    assert {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"} <= set(
        SECRET_ENV
    )
    text = f"API request to http://bob:{password}@10.0.0.1:5000/api?token=abc failed; header {token}"
    assert redact(text) == "API request to http://bob:***@10.0.0.1:5000/api?token=*** failed; header ***"
    dump = {
        "mlflow": {"tracking_uri": "http://alice:s3cret@host:5000"},
        "api_key": "k-123",
        "trial": {"num_workers": 2, "pad_token_id": 3},
        "paths": ["/data/a.jsonl", f"/x/{token}"],
    }
    assert redacted(dump) == {
        "mlflow": {"tracking_uri": "http://alice:***@host:5000"},
        "api_key": "***",
        "trial": {"num_workers": 2, "pad_token_id": 3},
        "paths": ["/data/a.jsonl", "/x/***"],
    }


@pytest.mark.unit
def test_log_redaction_masks_every_handler_s_lines(monkeypatch, tmp_path):
    from adaptune.redaction import install_log_redaction

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-" + "z" * 20)
    logger = logging.getLogger("adaptune.test_security")
    logger.propagate = False
    handler = logging.FileHandler(tmp_path / "log.txt")
    logger.addHandler(handler)
    try:
        install_log_redaction(logger)
        install_log_redaction(logger)  # idempotent
        assert len(handler.filters) == 1
        logger.warning("could not log to %s (%s)", "http://a:b@h:1", "Bearer tok-" + "z" * 20)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (tmp_path / "log.txt").read_text().strip() == "could not log to http://a:***@h:1 (Bearer ***)"


# --------------------------------------------------------------------------------------------------
# Models that ship code, and pickles: nothing runs unless named
# --------------------------------------------------------------------------------------------------

MODELING = """
from pathlib import Path
Path({marker!r}).write_text("the model's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = {model_type!r}
class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


class Payload:
    """A pickle that writes a marker file when it is loaded: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    """A tiny random Llama-style model and tokenizer (adaptune's demo builder, no pre-training)."""
    from adaptune.demo.build import build_tiny_model

    texts = [json.loads(line)["instruction"] for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()]
    return build_tiny_model(tmp_path_factory.mktemp("plain") / "model", texts, hidden_size=32, vocab_size=512)


def code_model(base: Path, where: Path, model_type: str, tokenizer_code: bool = False) -> tuple[Path, Path]:
    """A copy of `base` whose config.json (and, if asked, tokenizer_config.json) names Python code shipped
    beside it that writes a marker file when imported. Returns (model dir, marker)."""
    model, marker = where / f"model-{model_type}{'-tok' if tokenizer_code else ''}", where / "marker"
    shutil.copytree(base, model)
    (model / "modeling_evil.py").write_text(MODELING.format(marker=str(marker), model_type=model_type))
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (model / "config.json").write_text(json.dumps(config))
    if tokenizer_code:
        tok = json.loads((model / "tokenizer_config.json").read_text())
        tok.update(auto_map={"AutoTokenizer": [None, "modeling_evil.EvilTokenizer"]}, tokenizer_class="EvilTokenizer")
        (model / "tokenizer_config.json").write_text(json.dumps(tok))
    return model, marker


def _run_files(tmp_path: Path, model: Path, **model_keys) -> tuple[Path, Path]:
    sweep = write_yaml(
        tmp_path / "sweep.yaml",
        sweep_config(model, model=model_keys, lora={"target_modules": ["q_proj", "v_proj"]}),
    )
    return sweep, write_yaml(tmp_path / "cluster.yaml", cluster_config(tmp_path / "runs"))


@pytest.mark.unit
def test_a_model_s_own_code_really_runs_when_trusted(plain_model, tmp_path):
    """The control for the tests below: the planted code is live, so its marker's absence means something."""
    model, marker = code_model(plain_model, tmp_path, "adaptune_evil")
    probe = (
        "from transformers import AutoModelForCausalLM; "
        f"AutoModelForCausalLM.from_pretrained({str(model)!r}, trust_remote_code=True)"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert marker.read_text() == "the model's own code ran"


@pytest.mark.unit
def test_shipped_code_of_a_built_in_architecture_is_ignored_and_transformers_class_loads(plain_model, tmp_path):
    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.data import load_tokenizer
    from adaptune.worker.model import load_base_model

    model, marker = code_model(plain_model, tmp_path, "llama")
    sweep, cluster = _run_files(tmp_path, model)
    r = run_cli("validate", str(sweep), "--cluster", str(cluster))
    assert r.returncode == 0, r.stderr
    loaded = load_base_model(SweepConfig.model_validate(sweep_config(model)), ClusterProfile())
    assert type(loaded).__name__ == "LlamaForCausalLM" and type(loaded).__module__.startswith("transformers.")
    load_tokenizer(str(model))
    assert not marker.exists()


@pytest.mark.unit
def test_a_model_that_needs_its_own_code_is_refused_with_one_line_and_nothing_runs(plain_model, tmp_path):
    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.data import load_tokenizer
    from adaptune.worker.model import load_base_model

    for model_type, tokenizer_code in (("adaptune_evil", False), ("llama", True)):
        model, marker = code_model(plain_model, tmp_path, model_type, tokenizer_code)
        sweep, cluster = _run_files(tmp_path, model)
        r = run_cli("validate", str(sweep), "--cluster", str(cluster))
        assert r.returncode == 2, r.stdout + r.stderr
        lines = [line for line in r.stderr.splitlines() if ": model.trust_remote_code: " in line]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        part = "tokenizer" if tokenizer_code else "model"
        assert lines[0] == (
            f"{sweep}: model.trust_remote_code: {model} loads only by running Python code it ships (transformers "
            f"has no {part} class of its own for it; the model names modeling_evil.EvilConfig, "
            f"modeling_evil.EvilForCausalLM{', modeling_evil.EvilTokenizer' if tokenizer_code else ''}), and "
            "model.trust_remote_code is false. Read that code; set model.trust_remote_code: true for this model "
            "only if you trust its authors, or use a model transformers supports natively"
        )
        # adaptune's loaders, reached without validate, are refused by transformers just the same
        with pytest.raises(ValueError, match="custom code"):
            if tokenizer_code:
                load_tokenizer(str(model))
            else:
                load_base_model(SweepConfig.model_validate(sweep_config(model)), ClusterProfile())
        assert not marker.exists()
        # ... and naming the model as trusted is what lets validate through
        sweep, cluster = _run_files(tmp_path, model, trust_remote_code=True)
        r = run_cli("validate", str(sweep), "--cluster", str(cluster), env={"HF_MODULES_CACHE": str(tmp_path / "m")})
        assert ": model.trust_remote_code: " not in r.stderr
        shutil.rmtree(model)


@pytest.mark.unit
def test_trusting_a_hub_model_s_code_needs_a_pinned_commit(tmp_path):
    hub = "example-org/example-model"
    cluster = write_yaml(tmp_path / "cluster.yaml", cluster_config(tmp_path / "runs"))
    pinned = "0123456789abcdef0123456789abcdef01234567"
    for revision, refused in ((None, True), ("main", True), ("v1.0", True), (pinned, False)):
        keys = {"path": hub, "trust_remote_code": True, **({"revision": revision} if revision else {})}
        sweep = write_yaml(tmp_path / "sweep.yaml", sweep_config(Path(hub), model=keys))
        r = run_cli("validate", str(sweep), "--cluster", str(cluster), env={"HF_HUB_OFFLINE": "1"})
        line = [x for x in r.stderr.splitlines() if ": model.revision: " in x]
        assert bool(line) == refused, r.stderr
        if refused:
            assert line[0] == (
                f"{sweep}: model.revision: model.trust_remote_code runs the Python code of hub model {hub!r} from "
                f"revision {revision or 'main'!r}, which its owners can change under you (a supply-chain risk). Pin "
                "model.revision to a full commit hash (40 hex characters, from the model's history) after reading "
                "that commit's code, or download and review the model and point model.path at it"
            )


@pytest.mark.unit
def test_pickled_weights_are_never_unpickled(plain_model, tmp_path):
    """A planted pickle (pytorch_model.bin, adapter_model.bin) that would write a marker when loaded: validate,
    the base-model loader, merge and the adapter loader refuse it without unpickling it."""
    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.errors import ConfigError
    from adaptune.merge import load_peft_model, merge_adapter
    from adaptune.worker.model import load_base_model

    marker = tmp_path / "marker"
    payload = pickle.dumps(Payload(marker))
    # the control: loading this pickle does run its code
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"], input=payload)
    assert marker.read_text() == "unpickled"
    marker.unlink()

    # a base model with pickled weights only
    model = tmp_path / "pickled-model"
    shutil.copytree(plain_model, model, ignore=shutil.ignore_patterns("*.safetensors"))
    (model / "pytorch_model.bin").write_bytes(payload)
    sweep, cluster = _run_files(tmp_path, model)
    r = run_cli("validate", str(sweep), "--cluster", str(cluster))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"{sweep}: model.path: {model} has only pickled weights (pytorch_model.bin), which adaptune never loads "
        "(unpickling a file can run any code in it); convert them once where you trust the file: "
        "AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir, safe_serialization=True). "
        "Point at a saved Hugging Face model"
    )
    with pytest.raises(OSError, match="safetensors"):
        load_base_model(SweepConfig.model_validate(sweep_config(model)), ClusterProfile())

    # an adapter with pickled weights only, handed to merge and to the loader scoring uses
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(plain_model)}))
    (adapter / "adapter_model.bin").write_bytes(payload)
    expected = "adapter_model.safetensors missing: only pickled weights (adapter_model.bin), which are never loaded"
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        merge_adapter(adapter, str(plain_model), tmp_path / "merged")
    with pytest.raises(ConfigError, match="which are never loaded"):
        load_peft_model(adapter, str(plain_model), None, False, str(plain_model))
    assert not marker.exists() and not (tmp_path / "merged").exists()


# --------------------------------------------------------------------------------------------------
# Credentials in URIs: refused, and masked wherever they are shown
# --------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_password_in_a_tracking_uri_is_refused_and_never_printed(plain_model, tmp_path):
    secret = "s3cret-" + secrets.token_hex(4)
    leaky = f"http://alice:{secret}@127.0.0.1:{free_port()}"
    sweep, _ = _run_files(tmp_path, plain_model)
    cluster = write_yaml(
        tmp_path / "leaky.yaml", {**cluster_config(tmp_path / "runs"), "mlflow": {"tracking_uri": leaky}}
    )
    shown = leaky.replace(secret, "***")
    assert shown.startswith("http://alice:***@127.0.0.1:")
    runs = {
        "profile": run_cli("validate", str(sweep), "--cluster", str(cluster)),
        "env": run_cli("validate", str(sweep), env={"MLFLOW_TRACKING_URI": leaky}),
        "merge --tracking-uri": run_cli("merge", "m@champion", "--out", str(tmp_path / "o"), "--tracking-uri", leaky),
    }
    for how, r in runs.items():
        assert r.returncode == 2, (how, r.stdout, r.stderr)
        assert secret not in r.stdout + r.stderr, how
        where = "MLFLOW_TRACKING_URI" if how == "env" else "cluster profile"
        line = [x for x in r.stderr.splitlines() if ": mlflow.tracking_uri: " in x]
        assert len(line) == 1, (how, r.stderr)
        assert line[0].endswith(
            f"mlflow.tracking_uri: {shown} carries a password ({where}); URIs end up in logs, shell histories and job "
            "specs, so adaptune takes credentials from the environment only. Remove it from the URI and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment of "
            "the process that runs adaptune to an account on that server"
        ), (how, line[0])


# --------------------------------------------------------------------------------------------------
# The production recipe: scripts/mlflow-server.sh, MLflow's basic-auth app on 127.0.0.1
# --------------------------------------------------------------------------------------------------


def _script(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    full = {**clean, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=60, cwd=cwd)


@pytest.mark.unit
@pytest.mark.parametrize(
    "env, message",
    [
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-enough-password"}, "MLFLOW_BACKEND_STORE_URI is not set"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@127.0.0.1/m"}, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
        (
            {
                "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@127.0.0.1/m",
                "MLFLOW_AUTH_ADMIN_PASSWORD": "password1234",
            },
            "MLFLOW_AUTH_ADMIN_PASSWORD is MLflow's publicly known old default password1234. Choose another",
        ),
        (
            {"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@127.0.0.1/m", "MLFLOW_AUTH_ADMIN_PASSWORD": "short"},
            "MLFLOW_AUTH_ADMIN_PASSWORD has 5 characters; MLflow needs at least 12",
        ),
        (
            {"MLFLOW_BACKEND_STORE_URI": "sqlite:///mlflow.db", "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-enough-password"},
            "MLFLOW_BACKEND_STORE_URI must be a PostgreSQL URI",
        ),
        (
            {
                "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:dbpass@127.0.0.1/m",
                "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-enough-password",
            },
            "a database URI carries a password (postgresql://mlflow:***@...). Remove it and set PGPASSWORD",
        ),
    ],
    ids=["no-backend", "no-password", "mlflow-default-password", "short-password", "not-postgres", "db-password"],
)
def test_recipe_refuses_to_start_without_a_safe_setup(tmp_path, env, message):
    r = _script({"ADAPTUNE_MLFLOW_STATE": str(tmp_path / "state"), **env}, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("mlflow-server.sh: ") and message in r.stderr, r.stderr
    assert "dbpass" not in r.stderr
    assert not (tmp_path / "state").exists()  # refused before writing anything


@pytest.mark.unit
def test_recipe_keeps_its_guarantees_against_extra_arguments(tmp_path):
    env = {"MLFLOW_BACKEND_STORE_URI": "postgresql://m@127.0.0.1/m", "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-password"}
    for extra in (["--host", "0.0.0.0"], ["--app-name=other"], ["--disable-security-middleware"]):
        r = _script(env, "--", *extra, cwd=tmp_path)
        assert r.returncode == 2 and "would undo what this recipe guarantees" in r.stderr, r.stderr


@dataclass(frozen=True)
class AuthServer:
    uri: str
    admin: str
    password: str
    db: str
    artifacts: Path
    config: Path


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """scripts/mlflow-server.sh on a free port with a fresh PostgreSQL database and a generated admin password;
    stopped by its process id (the script execs the server) and its database dropped at the end."""
    ensure_postgres()
    work = tmp_path_factory.mktemp("mlflow-auth")
    db = f"adaptune_auth_{os.getpid()}_{secrets.token_hex(4)}"
    password = "adm-" + secrets.token_urlsafe(18)
    port = free_port()
    _sql(f'CREATE DATABASE "{db}"')
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "ADAPTUNE_MLFLOW_STATE": str(work / "state"),
        }
        log = work / "mlflow-server.log"
        args = ["--port", str(port), "--artifacts-destination", str(work / "artifacts"), "--workers", "1"]
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["bash", str(SCRIPT), *args],
                cwd=work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        uri = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, MlflowServer(uri=uri, db=db, log=log, artifacts=work / "artifacts", pid=proc.pid), 180)
            yield AuthServer(uri, "admin", password, db, work / "artifacts", work / "state" / "basic_auth.ini")
        finally:
            _stop(proc)
    finally:
        _sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _get(url: str, user: str | None = None, password: str | None = None) -> int:
    import base64

    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()} if user else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.integration
def test_recipe_server_binds_loopback_and_refuses_anyone_without_a_login(auth_server):
    import psutil

    search = f"{auth_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(search) == 401
    assert _get(search, auth_server.admin, "wrong-" + auth_server.password) == 401
    assert _get(search, auth_server.admin, "password1234") == 401
    assert _get(search, auth_server.admin, auth_server.password) == 200
    assert _get(f"{auth_server.uri}/health") == 200  # liveness probes need no login
    port = int(auth_server.uri.rsplit(":", 1)[1])
    listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}
    config = auth_server.config.read_text()
    assert auth_server.password not in config and "admin_password" not in config  # the password is in no file
    assert oct(auth_server.config.stat().st_mode & 0o777) == "0o600"


@pytest.mark.integration
def test_mlflow_client_logs_in_with_the_environment_s_credentials(auth_server, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.mlflow/credentials
    mlc = MlflowClient(tracking_uri=auth_server.uri)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        mlc.search_experiments(max_results=1)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.admin)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    assert [e.name for e in mlc.search_experiments(max_results=1)] == ["Default"]


@pytest.mark.integration
def test_validate_checks_the_tracking_server_with_the_environment_s_credentials(auth_server, plain_model, tmp_path):
    sweep, _ = _run_files(tmp_path, plain_model)
    cluster = write_yaml(
        tmp_path / "c.yaml", {**cluster_config(tmp_path / "runs"), "mlflow": {"tracking_uri": auth_server.uri}}
    )
    login = {"MLFLOW_TRACKING_USERNAME": auth_server.admin, "MLFLOW_TRACKING_PASSWORD": auth_server.password}
    # HOME without ~/.mlflow/credentials, and none of the caller's MLflow settings
    base = {
        "HOME": str(tmp_path),
        "MLFLOW_TRACKING_USERNAME": "",
        "MLFLOW_TRACKING_PASSWORD": "",
        "MLFLOW_TRACKING_TOKEN": "",
    }

    r = run_cli("validate", str(sweep), "--cluster", str(cluster), env={**base, **login})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(f"MLflow {auth_server.uri})") and auth_server.password not in r.stdout + r.stderr

    r = run_cli("validate", str(sweep), "--cluster", str(cluster), env=base)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"{cluster}: mlflow.tracking_uri: MLflow tracking server {auth_server.uri} requires a login (HTTP 401) and no "
        "credentials are set. Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
        "in the environment of the process that runs adaptune to an account on that server"
    )

    wrong = "wrong-" + secrets.token_hex(6)
    r = run_cli(
        "validate", str(sweep), "--cluster", str(cluster), env={**base, **login, "MLFLOW_TRACKING_PASSWORD": wrong}
    )
    assert r.returncode == 2 and wrong not in r.stdout + r.stderr
    assert r.stderr.strip() == (
        f"{cluster}: mlflow.tracking_uri: MLflow tracking server {auth_server.uri} refused the credentials of user "
        "'admin' (HTTP 401). Check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
        "in the environment of the process that runs adaptune to an account on that server"
    )

    # MLflow's client reads ~/.mlflow/credentials too; so does the check
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {auth_server.admin}\nmlflow_tracking_password = {auth_server.password}\n"
    )
    r = run_cli("validate", str(sweep), "--cluster", str(cluster), env=base)
    assert r.returncode == 0, r.stderr


@pytest.mark.integration
def test_nothing_mlflow_records_for_a_sweep_holds_a_secret(auth_server, plain_model, tmp_path, monkeypatch):
    """A sweep's parent run (params, config artifacts, dataset), a trial's run and adapter model, and the winner's
    registration, logged by adaptune's SweepTracker against the auth server with credentials in the environment
    (and, bypassing validate, in the profile's URI too): no table of the server's database and no artifact file
    holds the password or the hub token."""
    import psycopg2
    from peft import get_peft_model_state_dict

    from adaptune.config import ClusterProfile, SweepConfig
    from adaptune.data import prepare_dataset
    from adaptune.driver.sweep import write_results
    from adaptune.tracking.registry import register_winner
    from adaptune.tracking.runs import SweepTracker
    from adaptune.worker.model import add_lora, load_base_model, save_adapter

    hf_token = "hf_" + secrets.token_hex(16)
    for name, value in {
        "MLFLOW_TRACKING_USERNAME": auth_server.admin,
        "MLFLOW_TRACKING_PASSWORD": auth_server.password,
        "HF_TOKEN": hf_token,
        "MLFLOW_TRACKING_URI": "",
        "MLFLOW_REGISTRY_URI": "",
    }.items():
        monkeypatch.setenv(name, value)

    leaky = auth_server.uri.replace("http://", f"http://{auth_server.admin}:{auth_server.password}@")
    sweep = SweepConfig.model_validate(
        {**sweep_config(plain_model, search={"space": {"lora.r": {"choice": [4, 8]}}}), "name": "leak-check"}
    )
    cluster = ClusterProfile.model_validate({**cluster_config(tmp_path / "runs"), "mlflow": {"tracking_uri": leaky}})
    manifest = prepare_dataset(sweep.data, str(plain_model), tmp_path / "data")
    adapter = tmp_path / "adapter"
    peft_model = add_lora(load_base_model(sweep, cluster), sweep, ["q_proj", "v_proj"])
    save_adapter(peft_model, adapter, get_peft_model_state_dict(peft_model))

    tracker = SweepTracker(sweep, cluster, "sweep-leak-check", {})
    tracker.open(manifest, str(tmp_path / "sweep.yaml"), str(tmp_path / "cluster.yaml"), resuming=False)
    run_id = tracker.child("trial_0001", {"lora.r": 8})
    tracker.log_result(run_id, {"step": 10, "eval_loss": 1.5, "train_loss": 1.7, "perplexity": 4.5})
    row = {
        "trial": "trial_0001",
        "lora.r": 8,
        "eval_loss": 1.5,
        "steps": 10,
        "wall_s": 1,
        "status": "finished",
        "reason": "",
        "adapter": str(adapter),
    }
    write_results([row], row, tmp_path)
    models = tracker.close([row], row, tmp_path, interrupted=False)
    register_winner(
        tracker.mlc,
        "leak-check",
        models["trial_0001"],
        tracker.parent_id,
        run_id,
        manifest.digest,
        tracker.base,
        "eval_loss",
        1.5,
    )

    # the scan is not vacuous: the runs, the redacted config and the registration are there
    cluster_yaml = tracker.mlc.download_artifacts(tracker.parent_id, "config/cluster.yaml", str(tmp_path / "dl"))
    assert f"tracking_uri: http://{auth_server.admin}:***@127.0.0.1:" in Path(cluster_yaml).read_text()
    assert tracker.mlc.get_run(run_id).data.params["lora.r"] == "8"
    assert tracker.mlc.get_registered_model("leak-check").aliases == {"challenger": "1", "champion": "1"}

    found = []
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=auth_server.db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            tables = [t for (t,) in cur.fetchall()]
            assert {"runs", "params", "tags", "users"} <= set(tables)
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" t')
                found += [
                    (table, row[:200]) for (row,) in cur.fetchall() if auth_server.password in row or hf_token in row
                ]
    finally:
        conn.close()
    files = [p for p in auth_server.artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "cluster.yaml" for p in files) and any(p.name == "adapter_model.safetensors" for p in files)
    found += [
        (str(p), "")
        for p in files
        if auth_server.password.encode() in p.read_bytes() or hf_token.encode() in p.read_bytes()
    ]
    assert not found, found
