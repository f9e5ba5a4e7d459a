"""`ganforge report RUN_ID`: rebuild the HTML report of a pipeline run from MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import USAGE_ERROR, fail
from trainers.tracking import resolve_tracking_uri


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
    from pipelines.report import ReportError, default_report_path, write_report

    tracking_uri = resolve_tracking_uri()
    try:
        written = write_report(
            run_id, tracking_uri, out or default_report_path(run_id, tracking_uri)
        )
    except ReportError as error:
        raise fail(str(error), USAGE_ERROR) from None
    typer.echo(f"wrote {written}")
