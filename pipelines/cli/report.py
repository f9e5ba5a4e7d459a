"""`ganforge report RUN_ID`: rebuild the HTML report of a pipeline run from MLflow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import USAGE_ERROR, check_output, check_tracking_store, fail
from trainers.tracking import resolve_tracking_uri

RUN_ID = re.compile(r"[0-9a-f]{32}")  # what MLflow names runs with


def report(
    run_id: Annotated[
        str,
        typer.Argument(metavar="RUN_ID", help="The pipeline run's MLflow run id (its parent run)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the page (default: <storage>/<run name>/report.html)."),
    ] = None,
) -> None:
    """Rebuild the report of a `ganforge pipeline run` (one self-contained HTML page: per family
    the samples over training, loss and metric curves, the gate's champion and candidate side
    by side, the lineage) from MLFLOW_TRACKING_URI (default ./mlflow.db)."""
    if not RUN_ID.fullmatch(run_id):
        raise fail(
            f"RUN_ID {run_id}: not an MLflow run id (32 hex digits, as `ganforge pipeline run` "
            "prints and `mlflow ui` shows)",
            USAGE_ERROR,
        )
    if out is not None:
        check_output(out, "--out", folder=False)
    tracking_uri = resolve_tracking_uri()
    check_tracking_store(tracking_uri)

    from pipelines.report import ReportError, default_report_path, write_report

    try:
        written = write_report(
            run_id, tracking_uri, out or default_report_path(run_id, tracking_uri)
        )
    except ReportError as error:
        raise fail(str(error), USAGE_ERROR) from None
    typer.echo(f"wrote {written}")
