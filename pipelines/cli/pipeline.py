"""`ganforge pipeline`: the end-to-end Prefect flow, run now or deployed on a schedule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from pipelines.cli.common import (
    RUNTIME_ERROR,
    USAGE_ERROR,
    fail,
    prefect_defaults,
    show_launcher_progress,
)
from trainers.tracking import resolve_tracking_uri

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
    a sample grid per model. A re-run skips what did not change. Logs to MLFLOW_TRACKING_URI
    (default ./mlflow.db); runs on the Prefect server in PREFECT_API_URL, else an ephemeral one."""
    pipeline = _pipeline_config(config)
    prefect_defaults()
    show_launcher_progress()
    from pipelines.dataset.flow import local_run_settings
    from pipelines.end_to_end import run_pipeline
    from trainers.launcher import LaunchError, TrainingFailed

    tracking_uri = resolve_tracking_uri()
    try:
        with local_run_settings():
            outcomes = run_pipeline(pipeline, tracking_uri)
    except LaunchError as error:
        raise fail(str(error), USAGE_ERROR) from None
    except (TrainingFailed, RuntimeError) as error:
        raise fail(f"pipeline failed: {error}", RUNTIME_ERROR) from None
    typer.echo("\npipeline finished:")
    for outcome in outcomes:
        measured = ", ".join(f"{k} {v:.4g}" for k, v in outcome.metrics.items()) or "unscored"
        reused = " (unchanged: reused)" * outcome.reused
        typer.echo(f"  {outcome.family}{reused}: {outcome.model_uri}, {measured}")
        typer.echo(f"    {outcome.promotion}")
    typer.echo("sample grids:")
    for outcome in outcomes:
        typer.echo(f"  {outcome.grid}")
    typer.echo("registered models:")
    for outcome in outcomes:
        typer.echo(f"  {outcome.champion_uri}")
    typer.echo(f"browse the runs: mlflow ui --backend-store-uri {tracking_uri}")


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
