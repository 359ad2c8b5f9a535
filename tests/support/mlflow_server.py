"""A real MLflow tracking server for tests: a fresh PostgreSQL database, proxied artifacts, its own process session."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@dataclass
class MlflowServer:
    """A running `mlflow server`: where to reach it and what it owns. `stop()` and `start()` take it down and bring
    it back on the same port, database and artifacts (a tracking-server outage)."""

    uri: str  # http://127.0.0.1:<port>, for MLFLOW_TRACKING_URI and the UI
    db: str  # the PostgreSQL database holding its backend store
    log: Path  # the server's combined stdout/stderr
    artifacts: Path  # --artifacts-destination: where proxied artifact uploads land
    pid: int  # the server's process id, also its process group id
    cmd: list[str] = field(default_factory=list, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def log_tail(self, chars: int = 3000) -> str:
        return _tail(self.log, chars)

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after 30 s)."""
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def start(self, timeout: float = 180) -> None:
        """Start the server (again) with the same command, and wait until it answers."""
        with self.log.open("a") as out:
            # Output to a file: a pipe nobody reads would fill up and block the server.
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.log.parent,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        _wait_healthy(self.proc, self, timeout)


def ensure_postgres(timeout: float = 5) -> None:
    """Fail with the command that fixes it if PostgreSQL does not accept connections on 127.0.0.1:5432.

    Raises:
        RuntimeError: PostgreSQL is down or refuses user `postgres`.
    """
    import psycopg2

    try:
        psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=timeout).close()
    except psycopg2.OperationalError as e:
        raise RuntimeError(
            f"PostgreSQL is not accepting connections on {PG_HOST}:{PG_PORT} as user {PG_USER} "
            f"({str(e).strip()}). Start it with: {PG_START}"
        ) from None


@contextmanager
def mlflow_server(workdir: Path, startup_timeout: float = 180) -> Iterator[MlflowServer]:
    """Run `mlflow server` on a free port with a fresh PostgreSQL database; stop it and drop the database on exit.

    Args:
        workdir: An empty directory for the server's log and artifacts (its working directory too).
        startup_timeout: Seconds to wait for `GET /health`; the first start migrates an empty schema, which is slow.

    Yields:
        The running server.

    Raises:
        RuntimeError: PostgreSQL is down, or the server exited or did not answer in time (with its log tail).
    """
    ensure_postgres()
    db = f"adaptune_test_{os.getpid()}_{secrets.token_hex(4)}"
    _sql(f'CREATE DATABASE "{db}"')
    try:
        port = _free_port()
        artifacts = workdir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        log = workdir / "mlflow-server.log"
        cmd = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            # +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
            f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        # No internet here: MLflow's usage telemetry would only retry in the background.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        log.write_text("")
        server = MlflowServer(
            uri=f"http://127.0.0.1:{port}", db=db, log=log, artifacts=artifacts, pid=0, cmd=cmd, env=env
        )
        try:
            server.start(startup_timeout)
            yield server
        finally:
            server.stop()
    finally:
        # FORCE: a client that is still connected (a leaked test process) must not keep the database alive.
        _sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _sql(statement: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=10)
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def _wait_healthy(proc: subprocess.Popen, server: MlflowServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with code {proc.returncode} before answering; log {server.log}:\n"
                f"{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"mlflow server did not answer GET {server.uri}/health within {timeout:.0f} s; log {server.log}:\n"
                f"{server.log_tail()}"
            )
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left (the uvicorn workers are its children)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# Example session fixture for conftest.py:
#
#     from .support.mlflow_server import mlflow_server
#
#     @pytest.fixture(scope="session")
#     def mlflow_tracking(tmp_path_factory):
#         """A real MLflow server on PostgreSQL with proxied artifacts, shared by the session."""
#         with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
#             yield server
