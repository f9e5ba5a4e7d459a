"""What the command groups share: exit statuses, the error exit, and process set-up."""

from __future__ import annotations

import os
from pathlib import Path

import typer

USAGE_ERROR = 2  # bad usage or an invalid config: the message names the field and the fix
RUNTIME_ERROR = 1  # a failure at run time: the message says what failed and what was kept
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def fail(message: str, code: int) -> typer.Exit:
    """The exit to raise: `message` on stderr, exit status `code`."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def params_section(path: Path, section: str) -> dict:
    """One section of a params file (as dvc.yaml passes params.yaml with --params)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"--params {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get(section), dict):
        raise ValueError(f"--params {path}: no '{section}' section")
    return document[section]


def prefect_defaults() -> None:
    """Quiet, robust defaults for Prefect's ephemeral API; any value the user set wins."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # our own summary says enough
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start on a machine migrates a fresh database: >20 s (the default) here.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
