"""Real external services for end-to-end tests: an MLflow tracking server on PostgreSQL."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.cluster import free_port

MLFLOW = str(Path(sys.executable).parent / "mlflow")
PG_HOST, PG_PORT = "127.0.0.1", 5432
# no background job runner: it forks eight huey consumers that tests never use
SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def psql(sql: str, user: str, database: str = "test") -> str:
    """Run one SQL statement with `psql`; returns its unaligned, tuples-only output."""
    return subprocess.run(
        ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", user, "-d", database, "-Atc", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def pg_user() -> str:
    """A PostgreSQL role that trust auth lets in: the OS user's own, else `postgres`."""
    for user in dict.fromkeys([getpass.getuser(), "postgres"]):
        with contextlib.suppress(subprocess.CalledProcessError):
            psql("select 1", user)
            return user
    raise RuntimeError(f"no PostgreSQL role accepted on {PG_HOST}:{PG_PORT}")


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=5) as response,
        ):
            if response.status == 200:
                return
        if server.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {server.returncode}" if server.poll() is not None else "timed out"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"mlflow server {state} before {url}/health answered:\n{tail}")
        time.sleep(0.5)


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=30)
    # the CLI process may exit before the uvicorn worker it started does
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


@contextlib.contextmanager
def mlflow_server(
    tmp_dir: Path, database: str | None = None, timeout: float = 120.0
) -> Iterator[str]:
    """A real `mlflow server` on a fresh PostgreSQL database; yields its URL.

    The database (`database`, or a unique name) is created here and dropped on exit.
    Artifacts are proxied by the server into `tmp_dir / "artifacts"`, so clients need only
    HTTP access. The server's output goes to `tmp_dir / "mlflow-server.log"`.
    """
    user = pg_user()
    database = database or f"mlflow_test_{uuid.uuid4().hex[:12]}"
    psql(f"CREATE DATABASE {database}", user)
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_dir / "mlflow-server.log"
        # the driver named: SQLAlchemy 2.1 takes plain postgresql:// to mean psycopg 3
        command = [
            MLFLOW, "server",
            "--backend-store-uri", f"postgresql+psycopg2://{user}@{PG_HOST}:{PG_PORT}/{database}",
            "--artifacts-destination", str(tmp_dir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
        ]  # fmt: skip
        with log.open("wb") as out:
            # its own session: the server forks workers, and all of them must go at the end
            server = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | SERVER_ENV,
                start_new_session=True,
            )
        try:
            _wait_healthy(url, server, log, timeout)
            yield url
        finally:
            _stop_group(server)
    finally:
        psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", user)
