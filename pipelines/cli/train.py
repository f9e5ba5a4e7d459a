"""`ganforge train`: one training run on Ray Train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from pipelines.cli.common import RUNTIME_ERROR, USAGE_ERROR, check_output, fail


def train(
    config: Annotated[
        Path,
        typer.Argument(metavar="CONFIG", help="Training preset, e.g. configs/train/progan.yaml."),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a config key (dotted for sections, value read as YAML), "
            "validated like the file: --set model.optimizers.G.lr=0.0005 --set total_kimg=20.",
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset folder (overrides the config's data).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Ray Train workers, one rank each (default: the config's workers); each takes "
            "the config's cpus_per_worker CPUs (--set cpus_per_worker=N).",
        ),
    ] = None,
    gpu: Annotated[
        bool, typer.Option("--gpu", help="One GPU per worker, with nccl (precision: the config's).")
    ] = False,
    max_kimg: Annotated[
        float | None,
        typer.Option(help="Stop at this many kimg with a checkpoint (default: total_kimg)."),
    ] = None,
    run_name: Annotated[
        str | None,
        typer.Option(help="Run folder and MLflow run name (default: <family>-<timestamp>)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue --run-name (default: the run checkpointed last) from its latest "
            "checkpoint, in the same MLflow run.",
        ),
    ] = False,
    storage: Annotated[
        str,
        typer.Option(
            help="Where runs live: <storage>/<run name>/, a folder every node sees or "
            "s3://BUCKET/PREFIX."
        ),
    ] = "runs",
    progress: Annotated[
        bool,
        typer.Option(
            help="Show the training's progress line (on a terminal redrawn in place, otherwise "
            "a plain line at most every 30 s); its final line is shown either way."
        ),
    ] = True,
) -> None:
    """Train a GAN family on Ray Train (local Ray, or the cluster in RAY_ADDRESS); rank 0 logs
    to MLflow (MLFLOW_TRACKING_URI, default ./mlflow.db). Every worker's log goes to
    <run folder>/train.log; their warnings and errors are shown here too."""
    from trainers.config import describe_validation_error, load_train_config
    from trainers.files import is_url

    if max_kimg is not None and not max_kimg > 0:  # NaN too
        raise fail(f"--max-kimg {max_kimg:g}: must be > 0 (kimg to train to)", USAGE_ERROR)
    if not is_url(storage):
        check_output(storage, "--storage", folder=True)
    extra = [*(overrides or [])]
    extra += [f"data={data}"] if data is not None else []
    extra += [f"workers={workers}"] if workers is not None else []
    try:
        train_config = load_train_config(config, extra)
    except ValidationError as error:
        raise fail(f"{config}: {describe_validation_error(error)}", USAGE_ERROR) from None
    except OSError as error:
        raise fail(f"{config}: {error.strerror}", USAGE_ERROR) from None
    except ValueError as error:
        raise fail(f"{config}: {error}", USAGE_ERROR) from None

    from trainers.launcher import LaunchError, LaunchRequest, TrainingFailed, launch

    request = LaunchRequest(
        config=train_config,
        storage=storage,
        run_name=run_name,
        resume=resume,
        use_gpu=gpu,
        stop_kimg=max_kimg,
        show_progress=progress,
    )
    try:
        result = launch(request)
    except LaunchError as error:
        raise fail(str(error), USAGE_ERROR) from None
    except TrainingFailed as error:
        raise fail(str(error), RUNTIME_ERROR) from None
    typer.echo(
        f"trained {result.run_name} to kimg {result.kimg:.3f}; run folder {result.run_dir}; "
        f"checkpoint {result.checkpoint}"
        + (f"; best checkpoint {result.best_checkpoint}" if result.best_checkpoint else "")
    )
