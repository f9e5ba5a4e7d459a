"""What the command groups share: exit statuses, the error exit, checks of what a command is
given (made before anything heavy is imported), and process set-up."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

import typer

from trainers.files import output_problem, read_yaml

IMPORTED_AT = time.time()  # this module is imported first thing by the `ganforge` command

USAGE_ERROR = 2  # bad usage or an invalid config: the message names the field and the fix
RUNTIME_ERROR = 1  # a failure at run time: the message says what failed and what was kept
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
DEBUG_ENV = "GANFORGE_DEBUG"  # set (to anything but 0) or `ganforge --debug`: tracebacks shown


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def fail(message: str, code: int) -> typer.Exit:
    """The exit to raise: `message` on stderr, exit status `code`; with --debug, the traceback
    of the exception being handled first."""
    if debugging() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    error_line(message)
    return typer.Exit(code)


def error_line(message: str) -> None:
    """How every error is shown: `error: <message>` on stderr."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)


def check_output(path: str | Path, option: str, *, folder: bool) -> None:
    """Exit 2 naming `option` when `path` cannot be written as a folder or a file."""
    problem = output_problem(path, folder=folder)
    if problem is not None:
        raise fail(f"{option} {path}: {problem}", USAGE_ERROR)


def check_tracking_store(tracking_uri: str) -> None:
    """Exit 2 when the MLflow store is a local file or folder that does not exist (MLflow
    would create an empty one and then report the model missing, seconds later)."""
    for scheme in ("sqlite:///", "file://"):
        if tracking_uri.startswith(scheme):
            location = Path(tracking_uri.removeprefix(scheme))
            if not location.exists():
                raise fail(
                    f"no MLflow store at {location}: run where it is, or set "
                    "MLFLOW_TRACKING_URI to the store that holds the model",
                    USAGE_ERROR,
                )


def params_section(path: Path, section: str) -> dict:
    """One section of a params file (as dvc.yaml passes params.yaml with --params)."""
    try:
        document = read_yaml(path)
    except OSError as error:
        raise ValueError(f"--params {path}: {error.strerror}") from None
    except ValueError as error:
        raise ValueError(f"--params {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get(section), dict):
        raise ValueError(f"--params {path}: no '{section}' section")
    return document[section]


def prefect_defaults() -> None:
    """Quiet, robust defaults for Prefect's ephemeral API; any value the user set wins."""
    # Our own summary says enough; a failure is our one line, Prefect's tracebacks with --debug.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING" if debugging() else "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start on a machine migrates a fresh database: >20 s (the default) here.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def process_started_at() -> float:
    """Unix time this process started: from /proc on Linux (the kernel counts clock ticks since
    boot), else when this module was imported (a few tenths of a second later)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return IMPORTED_AT


# What Prefect's own temporary server runs (prefect.server.api.server.SubprocessASGIServer, less
# its --app-dir; tests/test_cli.py compares them): the API without the UI, in ephemeral mode.
TEMPORARY_SERVER_ENVIRONMENT = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}


def temporary_server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "error", "--lifespan", "on"]  # fmt: skip


class PrefectApiUnavailable(Exception):
    """The temporary Prefect server did not start."""


class PrefectApi:
    """The Prefect API a command's flows report to: the server in PREFECT_API_URL when one is
    set; otherwise a temporary local server, the one Prefect's ephemeral mode would start (on
    its SQLite database in PREFECT_HOME, migrated on a machine's first run and reused after),
    but started here, before this process imports Prefect. Prefect starts it only at the first
    flow call, after importing its whole server stack into the caller (1.3 s) and waiting for
    it; started first, its 2-3 s of start overlap the command's imports and its workers' start.

    Use: `with PrefectApi() as api:`, start other things, `api.wait()`, run flows."""

    def __init__(self) -> None:
        self.url = os.environ.get("PREFECT_API_URL")
        self._server: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> PrefectApi:
        if self.url is not None:
            return self
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._log = tempfile.TemporaryFile()
        self._server = subprocess.Popen(
            temporary_server_command(port),
            env=os.environ | TEMPORARY_SERVER_ENVIRONMENT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{port}/api"
        os.environ["PREFECT_API_URL"] = self.url  # read when this process imports Prefect
        return self

    def wait(self) -> None:
        """Until the API answers; PrefectApiUnavailable with the server's output if it never
        does."""
        if self._server is None:
            return
        # A machine's first start migrates a new database (>20 s here): prefect_defaults().
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 180))
        deadline = time.monotonic() + timeout
        while self._server.poll() is None and time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=5) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        assert self._log is not None
        self._log.seek(0)
        output = self._log.read().decode(errors="replace")[-3000:]
        state = "exited" if self._server.poll() is not None else f"timed out after {timeout:g} s"
        raise PrefectApiUnavailable(
            f"the temporary Prefect server {state} before it answered:\n{output}"
        )

    def __exit__(self, *exc) -> None:
        if self._server is None:
            return
        del os.environ["PREFECT_API_URL"]
        self._server.terminate()
        try:
            self._server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        assert self._log is not None
        self._log.close()
