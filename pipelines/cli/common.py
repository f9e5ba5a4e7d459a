"""What the command groups share: exit statuses, the error exit, checks of what a command is
given (made before anything heavy is imported), and process set-up."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer

from trainers.files import output_problem, read_yaml

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
