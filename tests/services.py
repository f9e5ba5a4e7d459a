"""Real external services for end-to-end tests: an MLflow tracking server on PostgreSQL and
a Prefect server, each on loopback."""

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
PREFECT = str(Path(sys.executable).parent / "prefect")
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


def _wait_healthy(health: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(health, timeout=5) as response,
        ):
            if response.status == 200:
                return
        if server.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {server.returncode}" if server.poll() is not None else "timed out"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"{server.args[:2]} {state} before {health} answered:\n{tail}")
        time.sleep(0.5)


@contextlib.contextmanager
def _serving(command: list[str], env: dict, health: str, log: Path, timeout: float):
    """Run a server in its own session (it forks workers, and all of them must go at the
    end), output to `log`, until `health` answers 200; stop the whole group on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait_healthy(health, server, log, timeout)
        yield
    finally:
        _stop_group(server)


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
    tmp_dir: Path,
    database: str | None = None,
    artifacts: str | None = None,
    timeout: float = 120.0,
) -> Iterator[str]:
    """A real `mlflow server` on a fresh PostgreSQL database; yields its URL.

    The database (`database`, or a unique name) is created here and dropped on exit.
    Artifacts are proxied by the server into `artifacts` (e.g. s3://bucket/prefix, through
    boto3's chain and MLFLOW_S3_ENDPOINT_URL; default `tmp_dir / "artifacts"`), so clients
    need only HTTP access. The server's output goes to `tmp_dir / "mlflow-server.log"`.
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
            "--artifacts-destination", artifacts or str(tmp_dir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
        ]  # fmt: skip
        env = os.environ | SERVER_ENV
        if "AWS_ENDPOINT_URL_S3" in env:  # MLflow's S3 store reads its own variable
            env.setdefault("MLFLOW_S3_ENDPOINT_URL", env["AWS_ENDPOINT_URL_S3"])
        with _serving(command, env, f"{url}/health", log, timeout):
            yield url
    finally:
        psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", user)


@contextlib.contextmanager
def prefect_server(tmp_dir: Path, timeout: float = 180.0) -> Iterator[str]:
    """A real `prefect server start` on loopback with its own home and SQLite database; yields
    its API URL (what PREFECT_API_URL takes)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_dir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)  # a server must not point at another
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _serving(command, env, f"{api}/health", tmp_dir / "prefect-server.log", timeout):
        yield api
