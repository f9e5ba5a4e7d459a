"""`ganforge evaluate` and `ganforge sample`: a trained generator, from a checkpoint or the
registry, measured or drawn from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.common import (
    LOG_FORMAT,
    RUNTIME_ERROR,
    USAGE_ERROR,
    check_output,
    check_tracking_store,
    fail,
)
from trainers.tracking import resolve_tracking_uri

if TYPE_CHECKING:
    import torch

    from pipelines.generators import TrainedGenerator

CheckpointOption = Annotated[
    Path | None, typer.Option(help="Checkpoint folder of a run (checkpoint_*/ under the run).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="A registered (or logged) generator, e.g. "
        "models:/ganforge-progan-quickstart-32@champion, from MLFLOW_TRACKING_URI "
        "(default ./mlflow.db)."
    ),
]


MODEL_SCHEMES = ("models:/", "runs:/")


def _check_source(checkpoint: Path | None, model: str | None) -> None:
    """Exactly one of --checkpoint and --model, each checked as far as it can be before torch
    and MLflow are imported; exits 2 naming a bad one."""
    from pipelines.generators import NotACheckpointError, check_checkpoint

    if (checkpoint is None) == (model is None):
        raise fail("give exactly one of --checkpoint DIR and --model URI", USAGE_ERROR)
    if checkpoint is not None:
        try:
            check_checkpoint(checkpoint)
        except NotACheckpointError as error:
            raise fail(f"--checkpoint {error}", USAGE_ERROR) from None
        return
    assert model is not None
    if not model.startswith(MODEL_SCHEMES):
        raise fail(
            f"--model {model}: not a model URI; give models:/NAME@ALIAS, models:/NAME/VERSION "
            "or runs:/RUN_ID/PATH",
            USAGE_ERROR,
        )
    check_tracking_store(resolve_tracking_uri())


def _load(checkpoint: Path | None, model: str | None, device: torch.device) -> TrainedGenerator:
    """The generator _check_source accepted; exits 2 when the registry does not hold it, 1 when
    the checkpoint is damaged."""
    from pipelines.generators import DamagedCheckpointError, TrainedGenerator
    from pipelines.registry import RegistryError

    if model is not None:
        try:
            return TrainedGenerator.from_model(model, resolve_tracking_uri())
        except RegistryError as error:
            raise fail(str(error), USAGE_ERROR) from None
    assert checkpoint is not None
    try:
        return TrainedGenerator.from_checkpoint(checkpoint, device)
    except DamagedCheckpointError as error:
        raise fail(f"--checkpoint {error}", RUNTIME_ERROR) from None


def evaluate(
    checkpoint: CheckpointOption = None,
    model: ModelOption = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset folder (default: the one the run trained on).")
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated registered names, e.g. fid50k,swd16k "
            "(default: the run's metrics, swd1k if it lists none)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Fixes the generated images.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Also write the results as JSON here (its folder is created)."),
    ] = None,
) -> None:
    """Measure registered metrics for a checkpoint's generator (its EMA copy where kept, at the
    resolution it had reached) or a registered model's, and print them."""
    import json

    from trainers.data.storage import DatasetCorruptedError, DatasetNotFoundError, load_manifest
    from trainers.files import write_atomic
    from trainers.metrics import check_metric_names, names_help

    if metrics:
        try:
            check_metric_names(metrics.split(","))
        except ValueError as error:
            raise fail(f"--metrics: {error}", USAGE_ERROR) from None
    _check_source(checkpoint, model)
    if out is not None:
        check_output(out, "--out", folder=False)
    if data is not None:
        try:
            load_manifest(data)
        except DatasetNotFoundError as error:
            raise fail(f"--data {error}", USAGE_ERROR) from None
        except DatasetCorruptedError as error:  # damaged: a finding, as `data verify` says
            raise fail(f"--data {error}", RUNTIME_ERROR) from None
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    import torch

    from trainers.metrics.driver import evaluate as measure

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = _load(checkpoint, model, device)
    names = metrics.split(",") if metrics else generator.metrics or ["swd1k"]
    try:
        results = measure(names, generator.evaluation(data, seed))
    except DatasetNotFoundError as error:
        raise fail(str(error), USAGE_ERROR) from None
    if not results:
        raise fail(
            f"none of {names} could be measured (see the warnings; {names_help()})", RUNTIME_ERROR
        )
    for name, value in results.items():
        typer.echo(f"{name} {value:.6g}")
    if out is not None:
        report = {
            "checkpoint" if checkpoint else "model": str(checkpoint or model),
            "kimg": generator.kimg,
            "resolution": generator.sampler.resolution,
            "metrics": results,
        }
        write_atomic(out, json.dumps(report, indent=2).encode())


def _check_image_name(out: Path) -> None:
    """Exit 2 unless `out` names an image file Pillow can write (by its extension)."""
    from PIL import Image

    Image.init()
    writable = sorted(e for e, f in Image.registered_extensions().items() if f in Image.SAVE)
    if out.suffix.lower() not in writable:
        raise fail(
            f"--out {out}: not an image file name; end it with .png (or .jpg, .webp, ...)",
            USAGE_ERROR,
        )


def sample(
    out: Annotated[
        Path, typer.Option(help="Image file to write the grid to (.png; its folder is created).")
    ],
    checkpoint: CheckpointOption = None,
    model: ModelOption = None,
    num: Annotated[int, typer.Option(min=1, max=1024, help="Images in the grid.")] = 64,
    seed: Annotated[int, typer.Option(help="Fixes the latents: same seed, same images.")] = 0,
) -> None:
    """Write a grid of generated images. The same --seed gives the same latents for a
    checkpoint and for the model registered from it, so their grids match."""
    _check_image_name(out)
    check_output(out, "--out", folder=False)
    _check_source(checkpoint, model)
    import torch

    generator = _load(checkpoint, model, torch.device("cpu"))
    generator.sampler.write_grid(out, num, seed)
    typer.echo(
        f"wrote {out}: {num} images at {generator.sampler.resolution}² (kimg {generator.kimg:.3f})"
    )
