"""`ganforge pipeline`: the end-to-end Prefect flow, run now or deployed on a schedule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from pipelines.cli.common import RUNTIME_ERROR, USAGE_ERROR, fail, prefect_defaults
from trainers.tracking import resolve_tracking_uri

if TYPE_CHECKING:
    from pipelines.outcomes import PipelineRun

app = typer.Typer(
    help="The end-to-end Prefect flow: dataset, training, evaluation, registry.",
    no_args_is_help=True,
)


def _pipeline_config(path: Path, root: Path = Path(".")):
    """The validated pipeline config at `path` (its presets relative to `root`); exits 2 naming
    the bad key, before Prefect is imported."""
    from pipelines.pipeline_config import PipelineConfig, load_pipeline_config
    from trainers.config import describe_validation_error

    try:
        return load_pipeline_config(path, root)
    except ValidationError as error:
        message = describe_validation_error(error, PipelineConfig)
        raise fail(f"{path}: {message}", USAGE_ERROR) from None
    except OSError as error:
        raise fail(f"{path}: {error.strerror}", USAGE_ERROR) from None
    except ValueError as error:
        raise fail(f"{path}: {error}", USAGE_ERROR) from None


@app.command("run")
def pipeline_run(
    config: Annotated[
        Path,
        typer.Argument(metavar="[CONFIG]", help="Pipeline config (configs/pipeline/*.yaml)."),
    ] = Path("configs/pipeline/quickstart.yaml"),
) -> None:
    """dvc repro (dataset + real statistics) → train each configured family on Ray Train →
    evaluate → register in MLflow (alias candidate) → promote (champion, through the gate) →
    a sample grid per model → <storage>/pipeline-<time>/report.html. A re-run skips what did
    not change. Shows the stage and each training's progress; ends with a summary table, the
    `mlflow ui` command and the models' @champion URIs. Logs to MLFLOW_TRACKING_URI (default
    ./mlflow.db); runs on the Prefect server in PREFECT_API_URL, else an ephemeral one."""
    prefect_defaults()  # before Prefect's import, which reads its logging settings
    pipeline = _pipeline_config(config)
    from pipelines.dataset.flow import local_run_settings
    from pipelines.end_to_end import run_pipeline
    from trainers.console import display
    from trainers.launcher import LaunchError, TrainingFailed

    tracking_uri = resolve_tracking_uri()
    try:
        with local_run_settings(), display():
            run = run_pipeline(pipeline, tracking_uri)
    except LaunchError as error:
        raise fail(str(error), USAGE_ERROR) from None
    except (TrainingFailed, RuntimeError) as error:
        raise fail(f"pipeline failed: {error}", RUNTIME_ERROR) from None
    _print_summary(run, tracking_uri)


def _print_summary(run: PipelineRun, tracking_uri: str) -> None:
    """One table, the report, how to browse the runs, then the URIs users pull (last, where
    they are easy to copy)."""
    from rich import box
    from rich.console import Console
    from rich.table import Column, Table

    # on a narrow terminal, cells wrap: URIs and paths stay whole, to copy
    headers = ("family", "model URI", "version", "metrics", "gate decision", "grid")
    table = Table(
        *(Column(header, overflow="fold") for header in headers),
        title=f"pipeline {run.name} (MLflow run {run.run_id})",
        title_justify="left",
        box=box.SIMPLE,
        show_edge=False,
    )
    for outcome in run.outcomes:
        measured = ", ".join(f"{k} {v:.4g}" for k, v in outcome.metrics.items()) or "unscored"
        table.add_row(
            outcome.family + " (unchanged: reused)" * outcome.reused,
            outcome.candidate.uri,
            outcome.candidate.version,
            measured,
            outcome.promotion,
            str(outcome.grid),
        )
    console = Console(markup=False, highlight=False, soft_wrap=True)
    if not console.is_terminal:  # a file keeps whole rows, however wide
        unbounded = console.options.update_width(10**6)
        console.width = max(console.width, console.measure(table, options=unbounded).maximum)
    console.print(table)
    console.print(f"report: {run.report}")
    console.print(f"browse the runs: mlflow ui --backend-store-uri {tracking_uri}")
    console.print("registered models:")
    for outcome in run.outcomes:
        console.print(f"  {outcome.champion_uri}")


@app.command("deploy")
def pipeline_deploy(
    config: Annotated[
        Path,
        typer.Argument(metavar="[CONFIG]", help="Pipeline config, relative to --source."),
    ] = Path("configs/pipeline/quickstart.yaml"),
    cron: Annotated[
        str, typer.Option(help="When to run, as a cron expression (UTC).")
    ] = "0 3 * * *",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "quickstart",
    work_pool: Annotated[
        str, typer.Option(help="Prefect work pool (type process; created if missing).")
    ] = "ganforge",
    source: Annotated[
        Path, typer.Option(help="The checkout workers run the flow from (they must see it).")
    ] = Path("."),
) -> None:
    """Create or update a scheduled Prefect deployment of the pipeline on the Prefect server in
    PREFECT_API_URL. A worker runs it: `prefect worker start --pool ganforge`, in an
    environment with this checkout, MLFLOW_TRACKING_URI and RAY_ADDRESS."""
    if not os.environ.get("PREFECT_API_URL"):
        raise fail(
            "PREFECT_API_URL is not set: a deployment lives on a Prefect server "
            "(`prefect server start`, then PREFECT_API_URL=http://<host>:4200/api)",
            USAGE_ERROR,
        )
    _pipeline_config(source / config, source)  # a bad config fails now, not at 3 am
    from pipelines.deploy import DeployError, DeployFailed, deploy_pipeline

    try:
        deployment = deploy_pipeline(config, cron, name, work_pool, source)
    except DeployError as error:
        raise fail(str(error), USAGE_ERROR) from None
    except DeployFailed as error:
        raise fail(str(error), RUNTIME_ERROR) from None
    typer.echo(
        f"deployment ganforge-scheduled-pipeline/{name} ({deployment}) runs {config} on "
        f"'{cron}' in work pool {work_pool}; start a worker with "
        f"`prefect worker start --pool {work_pool}`"
    )
