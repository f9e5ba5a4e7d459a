"""What the command groups share: exit statuses, the error exit, checks of what a command is
given (made before anything heavy is imported), and process set-up."""

from __future__ import annotations

import logging
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
    if not debugging():  # "Still processing items" while its event queue drains at exit
        logging.getLogger("EventsWorker").setLevel(logging.ERROR)


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


OUTPUT_LINES = 12  # of a local server that failed to start: its error and what led to it


class PrefectApiUnavailable(Exception):
    """The local Prefect server did not start."""


class PrefectApi:
    """The Prefect API a command's flows report to: the server in PREFECT_API_URL when one is
    set; otherwise a local server, the one Prefect's ephemeral mode would start (on its SQLite
    database in PREFECT_HOME, migrated on a machine's first run and reused after), but started
    here, before this process imports Prefect, so its 2-3 s of start overlap the command's
    imports and its workers' start. That server is kept for the next command for
    GANFORGE_PREFECT_SERVER_KEEP_SECONDS idle seconds (pipelines.prefect_server: 600 by
    default, 0 stops it with the command); a command reusing it starts its flow ~3 s sooner.

    Use: `with PrefectApi() as api:`, start other things, `api.wait()`, run flows."""

    def __init__(self) -> None:
        from pipelines.prefect_server import keep_seconds

        self.url = os.environ.get("PREFECT_API_URL")
        self.keep = keep_seconds()
        self.kept: str | None = None  # the kept local server, in words
        self._server: subprocess.Popen | None = None
        self._lease = None
        self._log_path: Path | None = None
        self._log = None

    def __enter__(self) -> PrefectApi:
        if self.url is not None:
            return self
        if self.keep > 0:
            self._kept_server()
        else:
            self._log = tempfile.TemporaryFile()
            self._server = self._start(self._free_port(), self._log, kept=False)
        os.environ["PREFECT_API_URL"] = self.url  # read when this process imports Prefect
        return self

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def _start(self, port: int, log, *, kept: bool) -> subprocess.Popen:
        command = temporary_server_command(port)
        if kept:  # the same uvicorn command, with a watcher that stops it when idle
            command = [sys.executable, "-m", "pipelines.prefect_server", str(self.keep), "--",
                       *command[3:]]  # fmt: skip
        self.url = f"http://127.0.0.1:{port}/api"
        return subprocess.Popen(
            command,
            env=os.environ | TEMPORARY_SERVER_ENVIRONMENT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=kept,  # a Ctrl-C of this command leaves the next one its server
        )

    def _kept_server(self) -> None:
        """Reuse the kept server that runs with this command's settings, else start one."""
        import fcntl

        from pipelines import prefect_server as kept

        home = kept.prefect_home()
        home.mkdir(parents=True, exist_ok=True)
        settings = kept.settings(dict(os.environ))
        with kept.locked(home / kept.LOCK_NAME, fcntl.LOCK_EX):
            state = kept.read_state(home)
            if state and state.get("settings") == settings:  # its health decides if it runs
                lease = kept.Lease.take(kept.lease_path(home, state["port"]))
                if lease is not None and self._answers(state["url"]):
                    self.url, self._lease = state["url"], lease
                    self.kept = f"reused local server {self.url} (pid {state['pid']})"
                    return
                if lease is not None:
                    lease.release()
            port = self._free_port()
            # Leased before it starts, so it cannot find itself idle before this command ends.
            self._lease = kept.Lease.take(kept.lease_path(home, port))
            assert self._lease is not None  # a new port's lease: nothing else holds it
            self._log_path = home / kept.LOG_NAME
            with self._log_path.open("wb") as log:
                self._server = self._start(port, log, kept=True)
            kept.write_state(
                home,
                {"pid": self._server.pid, "port": port, "url": self.url, "settings": settings},
            )
            self.kept = f"local server {self.url} (pid {self._server.pid})"

    @staticmethod
    def _answers(url: str, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
                return response.status == 200
        except OSError:
            return False

    def wait(self) -> None:
        """Until the API answers; PrefectApiUnavailable with the server's output if it never
        does."""
        if self._server is None:
            return
        # A machine's first start migrates a new database (>20 s here): prefect_defaults().
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 180))
        deadline = time.monotonic() + timeout
        while self._server.poll() is None and time.monotonic() < deadline:
            if self._answers(self.url, timeout=5):
                return
            time.sleep(0.05)
        state = "exited" if self._server.poll() is not None else f"timed out after {timeout:g} s"
        raise PrefectApiUnavailable(
            f"the local Prefect server {state} before it answered:\n{self._output()}"
        )

    def _output(self) -> str:
        """The server's last lines (where its error is), and where the rest is when kept."""
        if self._log_path is not None:
            text, whole = self._log_path.read_bytes(), f"\n(all of it: {self._log_path})"
        else:
            assert self._log is not None
            self._log.seek(0)
            text, whole = self._log.read(), ""
        lines = text.decode(errors="replace").rstrip().splitlines()
        return "\n".join(lines[-OUTPUT_LINES:]) + whole

    def __exit__(self, *exc) -> None:
        if self._lease is None and self._server is None:
            return  # the server in PREFECT_API_URL
        del os.environ["PREFECT_API_URL"]
        if self._lease is not None:  # kept: it stops itself once idle
            self._lease.release()
            if self._server is not None and self._server.poll() is not None:
                self._server.wait()  # it failed to start: reap it
            return
        assert self._server is not None and self._log is not None
        self._server.terminate()
        try:
            self._server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        self._log.close()
