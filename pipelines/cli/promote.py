"""`ganforge promote`: the champion alias, moved only through the gate."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli.common import RUNTIME_ERROR, USAGE_ERROR, check_tracking_store, fail
from trainers.tracking import resolve_tracking_uri


def promote(
    name: Annotated[str, typer.Argument(metavar="MODEL_NAME", help="Registered model name.")],
    version: Annotated[str, typer.Option(help="The version to make champion.")],
) -> None:
    """Move the `champion` alias to --version only when its gate metric (the run's first
    measured metric, e.g. fid50k or swd1k; lower is better) beats the current champion's;
    otherwise exit 1 printing both numbers."""
    if not version.isdigit() or int(version) < 1:
        raise fail(f"--version {version}: give a version number (1, 2, ...)", USAGE_ERROR)
    tracking_uri = resolve_tracking_uri()
    check_tracking_store(tracking_uri)
    from pipelines.registry import GateRefused, RegistryError
    from pipelines.registry import promote as gate

    try:
        typer.echo(gate(name, version, tracking_uri))
    except RegistryError as error:
        raise fail(str(error), USAGE_ERROR) from None
    except GateRefused as error:
        raise fail(str(error), RUNTIME_ERROR) from None
