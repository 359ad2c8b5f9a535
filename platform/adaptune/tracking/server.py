"""The tracking server: which store a run uses, whether it answers (without importing MLflow: `validate`
checks it), and the credentials MLflow's client would send it."""

from __future__ import annotations

import base64
import configparser
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from adaptune.config import ClusterProfile, resolve_path
from adaptune.errors import ConfigError, Problem
from adaptune.names import EMBEDDED_ARTIFACTS, EMBEDDED_DB
from adaptune.redaction import redact_uri, uri_password

log = logging.getLogger("adaptune")


def tracking_uri(cluster: ClusterProfile) -> str:
    """The profile's tracking URI, else MLFLOW_TRACKING_URI, else the embedded SQLite store under storage."""
    uri = cluster.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{resolve_path(cluster.storage_path).resolve() / EMBEDDED_DB}"


def embedded_artifacts(cluster: ClusterProfile, uri: str) -> str | None:
    """Artifact root for experiments created in the embedded store (a predictable folder beside it)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / EMBEDDED_ARTIFACTS).as_uri()
    return None


def ui_command(uri: str) -> str:
    """How a person opens the MLflow UI on this store (any password in the URI masked): `adaptune ui` with the
    storage folder of an embedded store (none for the default one, from this directory), a server's URL."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact_uri(uri)} in a browser"
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        default = resolve_path(ClusterProfile.model_fields["storage_path"].default).resolve()
        return "adaptune ui" + ("" if folder == default else f" {shlex.quote(str(folder))}")  # paths with spaces
    return f"mlflow ui --backend-store-uri {shlex.quote(redact_uri(uri))} --port 5000"


# The embedded store's lock: open descriptors this process holds, by lock file, with how many holders share it.
_HELD: dict[Path, list[int]] = {}


@contextmanager
def embedded_store_lock(cluster: ClusterProfile, source: str, run: str) -> Iterator[None]:
    """Hold the embedded SQLite store for one run (`run`: its id) at a time; nothing for a server or database.

    SQLite takes one writer at a time, and two sweeps logging trials, metrics and registry versions into one
    file at once get "database is locked" errors part-way through. A second run on the same store is refused
    at the start instead, naming the run that holds it. The lock is an flock(2) on `mlflow.db.lock` beside the
    store: the kernel releases it when its process ends, however it ends, so a killed run leaves no stale lock.
    Re-entrant within a process (a retrain holds it around the sweep it runs).

    Raises:
        ConfigError: another process holds the store.
    """
    uri = tracking_uri(cluster)
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///")).with_name(EMBEDDED_DB + ".lock")
    held = _HELD.get(path)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise ConfigError(
            Problem(
                source,
                "mlflow.tracking_uri",
                f"the embedded MLflow store {uri} is in use by {holder}; SQLite takes one writer at a time, so "
                "two runs on it would fail part-way with 'database is locked'",
                "Wait for that run to end, give this run another storage_path, or point both at an MLflow "
                "server (mlflow.tracking_uri, see docs/mlflow.md)",
            )
        ) from None
    holder = {"run": run, "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**holder, "command": " ".join(sys.argv[1:3])}).encode())
    except OSError:  # a full disk: the lock holds all the same; the run itself reports the disk
        pass
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        os.close(fd)  # releases the lock; the file stays (removing it would race a process opening it)


def _lock_holder(fd: int) -> str:
    """Who holds the store, as its lock file says."""
    try:
        held = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        held = {}
    if not isinstance(held, dict) or not held:
        return "another process"
    command = f", `adaptune {held['command']}`" if held.get("command") else ""
    return (
        f"{held.get('run', 'a run')} (pid {held.get('pid', '?')} on {held.get('host', '?')}{command}, started "
        f"{held.get('started', '?')})"
    )


CREDENTIALS_FIX = (
    "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment of "
    "the process that runs adaptune to an account on that server"
)


def check_tracking(cluster: ClusterProfile, source: str) -> list[Problem]:
    """Whether the tracking store answers, without importing MLflow for a server (one request each), with the
    credentials MLflow's client would send. A password written into the URI is refused: credentials come from
    the environment only."""
    uri = tracking_uri(cluster)
    key = "mlflow.tracking_uri"
    shown = redact_uri(uri)
    if uri_password(uri) is not None:
        where = "cluster profile" if cluster.mlflow.tracking_uri else "MLFLOW_TRACKING_URI"
        if uri.startswith(("http://", "https://")):
            fix = "Remove it from the URI and set " + CREDENTIALS_FIX.removeprefix("Set ")
        else:
            fix = "Remove it from the URI and give it to the database driver through the environment (PGPASSWORD "
            fix += "or ~/.pgpass for PostgreSQL)"
        return [
            Problem(
                source,
                key,
                f"{shown} carries a password ({where}); URIs end up in logs, shell histories and job specs, so "
                "adaptune takes credentials from the environment only",
                fix,
            )
        ]
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            return [
                Problem(
                    source,
                    key,
                    f"cannot create the MLflow store {uri}: {probe} is not writable",
                    "Set storage_path to a writable folder, or mlflow.tracking_uri to a server",
                )
            ]
        return []
    if not uri.startswith(("http://", "https://")):
        return []  # another kind of store (a database URI, databricks): MLflow reports on first use
    fix = (
        "Start the server (see docs/mlflow.md: 'A production tracking server'), or fix mlflow.tracking_uri in the "
        "cluster profile / MLFLOW_TRACKING_URI"
    )
    user, header = tracking_credentials()
    try:
        server_request(uri, "/health", header)
        json.loads(server_request(uri, "/api/2.0/mlflow/experiments/search?max_results=1", header))
    except urllib.error.HTTPError as e:
        if e.code == 401 and header is None:
            what = f"MLflow tracking server {shown} requires a login (HTTP 401) and no credentials are set"
            return [Problem(source, key, what, CREDENTIALS_FIX)]
        if e.code == 401:
            who = f"user {user!r}" if user else "MLFLOW_TRACKING_TOKEN"
            what = f"MLflow tracking server {shown} refused the credentials of {who} (HTTP 401)"
            return [Problem(source, key, what, "Check " + CREDENTIALS_FIX.removeprefix("Set "))]
        if e.code == 403:
            return [
                Problem(
                    source,
                    key,
                    f"MLflow tracking server {shown} does not let {user or 'this token'} search experiments (HTTP 403)",
                    "Ask an admin of that server for READ permission (or use an account that has it)",
                )
            ]
        what = f"{shown} answered HTTP {e.code} ({e.reason}): not an MLflow tracking server"
        return [Problem(source, key, what, fix)]
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return [Problem(source, key, f"MLflow tracking server {shown} is unreachable ({reason})", fix)]
    except ValueError:
        return [Problem(source, key, f"{shown} did not answer like an MLflow tracking server", fix)]
    return []


def tracking_credentials() -> tuple[str | None, str | None]:
    """(user name, Authorization header) that MLflow's client sends a tracking server: basic auth from
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (else ~/.mlflow/credentials, as MLflow reads it), else a
    bearer MLFLOW_TRACKING_TOKEN, else (None, None)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    stored = Path.home() / ".mlflow" / "credentials"
    if (not user or not password) and stored.is_file():
        parser = configparser.ConfigParser()
        parser.read(stored)
        section = parser["mlflow"] if parser.has_section("mlflow") else {}
        user = user or section.get("mlflow_tracking_username")
        password = password or section.get("mlflow_tracking_password")
    if user and password:
        return user, "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return (None, f"Bearer {token}") if token else (None, None)


def server_request(uri: str, path: str, authorization: str | None = None, timeout: float = 10) -> bytes:
    """The body of GET `path` on the tracking server at `uri`, with `authorization` as the Authorization header.
    A user name in the URI is dropped from the request line (urllib cannot send it there).

    Raises:
        urllib.error.HTTPError: the server answered with an error status.
        urllib.error.URLError, OSError: it did not answer.
    """
    parts = urlsplit(uri)
    base = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path.rstrip("/"), "", ""))
    request = urllib.request.Request(base + path, headers={"Authorization": authorization} if authorization else {})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.read()


def server_answers(uri: str, timeout: float = 3.0) -> bool:
    """Whether the tracking server at `uri` answers at all (any HTTP status counts: an authenticating server
    that refuses an anonymous probe is up). Stores that are not servers always count as answering."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        server_request(uri, "/health", timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


TRACKING_WAIT_S = 600  # how long a finished sweep waits for a tracking server that is down


def wait_for_server(uri: str, timeout: float, every: float = 5.0) -> bool:
    """Whether the tracking server answers within `timeout` seconds (a restart), probing every `every` s."""
    deadline = time.monotonic() + timeout
    if server_answers(uri):
        return True
    log.warning(
        "mlflow: %s does not answer; waiting up to %.0f s for it to log the sweep's results", redact_uri(uri), timeout
    )
    while time.monotonic() < deadline:
        time.sleep(every)
        if server_answers(uri):
            return True
    return False
