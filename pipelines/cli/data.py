"""`ganforge data`: build, verify and compute the real statistics of a dataset."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, get_args

import typer
from pydantic import ValidationError

from pipelines.cli.common import (
    LOG_FORMAT,
    RUNTIME_ERROR,
    USAGE_ERROR,
    fail,
    params_section,
    prefect_defaults,
)
from pipelines.dataset.config import BuildDatasetConfig

app = typer.Typer(
    help="Build and check multi-resolution WebDataset datasets.", no_args_is_help=True
)


def _option_name(location: list[str]) -> str:
    """A BuildDatasetConfig field as the option that sets it (a --params key has its name)."""
    return "--" + "-".join(location).replace("_", "-") if location else ""


def config_error_message(error: ValidationError) -> str:
    """Name each offending option the way the user typed it; list the allowed keys of an
    unknown one."""
    from trainers.config import describe_validation_error

    return "invalid build config: " + describe_validation_error(
        error, BuildDatasetConfig, _option_name
    )


def _config_option(name: str) -> inspect.Parameter:
    """--NAME for a BuildDatasetConfig field: its type, its help and default (option_help),
    None when not given (then --params or the config's default decides)."""
    field = BuildDatasetConfig.model_fields[name]
    (kind,) = [t for t in get_args(field.annotation) or [field.annotation] if t is not type(None)]
    metavar = None
    if kind is Path:  # taken as text: pathlib would fold the "//" of s3://BUCKET/PREFIX
        kind, metavar = str, "<path>"
    option = typer.Option(help=BuildDatasetConfig.option_help(name), metavar=metavar)
    annotation = Annotated[kind | None, option]
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def _with_config_options(command: Callable) -> Callable:
    """`command`, which takes the config's fields as **given, with one option per field before
    its own options: the fields are listed once, in BuildDatasetConfig."""
    own = inspect.signature(command, eval_str=True).parameters.values()
    parameters = [*map(_config_option, BuildDatasetConfig.model_fields)]
    parameters += [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = inspect.Signature(parameters, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return command


@app.command("build")
@_with_config_options
def data_build(
    *,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="YAML file whose build_dataset section gives the options (as dvc.yaml uses "
            "params.yaml); options given on the command line override it.",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Parallel processes (this machine: all its cores).")
    ] = os.cpu_count() or 1,
    **given,
) -> None:
    """Build validated multi-resolution WebDataset shards (a Prefect flow).

    Writes DIR/manifest.json (every shard with its sha256), DIR/report.json (every input,
    accepted or rejected with a reason) and DIR/rNNNN/shard-*.tar at every power of two from 4
    to --max-resolution. Same inputs and options give byte-identical output; a killed build
    resumes where it stopped (an interrupted upload too). S3 credentials and endpoint come
    from boto3's usual chain (AWS_* variables, ~/.aws, an instance role).
    """
    from pipelines.dataset.sources import SourceError, check_paths
    from pipelines.dataset.upload import check_bucket
    from trainers.data.storage import S3Error, S3Url, is_s3_url

    destination = None  # an S3Url when --out is one
    try:
        section = params_section(params, "build_dataset") if params else {}
        options = section | {k: v for k, v in given.items() if v is not None}
        if options.get("out") is not None and is_s3_url(options["out"]):
            from pipelines.dataset.publish import staging_folder

            try:
                destination = S3Url.parse(str(options["out"]))
            except ValueError as error:
                raise ValueError(f"--out {error}") from None
            options["out"] = staging_folder(destination)
        config = BuildDatasetConfig(**options)
        check_paths(config)
    except ValidationError as error:
        raise fail(config_error_message(error), USAGE_ERROR) from None
    except (ValueError, SourceError) as error:
        raise fail(str(error), USAGE_ERROR) from None
    if destination is not None:
        try:
            check_bucket(destination)
        except S3Error as error:
            raise fail(f"--out: {error}", USAGE_ERROR) from None

    prefect_defaults()
    from pipelines.dataset.flow import (
        WORK_DIR_NAME,
        BuildFailed,
        build_dataset,
        local_run_settings,
    )

    created = not Path(config.out).exists()
    try:
        with local_run_settings():
            if destination is None:
                result = build_dataset(config, workers=workers)
            else:
                from pipelines.dataset.publish import build_dataset_to_s3

                published = build_dataset_to_s3(config, destination, workers=workers)
                result = published.build
    except SourceError as error:  # found while listing: e.g. no images in --input
        if created:  # leave no empty --out behind
            with contextlib.suppress(OSError):
                Path(config.out).rmdir()
        raise fail(str(error), USAGE_ERROR) from None
    except BuildFailed as error:
        raise fail(str(error), RUNTIME_ERROR) from None
    except S3Error as error:
        raise fail(
            f"upload to {destination} failed: {error}. The local build is kept in {config.out}; "
            "a re-run uploads only what S3 does not hold yet",
            RUNTIME_ERROR,
        ) from None
    except OSError as error:  # a full disk, a folder removed meanwhile
        raise fail(
            f"the build of {config.out} failed: {error}; a re-run resumes from the inputs "
            f"processed so far, kept in {Path(config.out) / WORK_DIR_NAME}",
            RUNTIME_ERROR,
        ) from None
    report, manifest = result.report, result.manifest
    typer.echo(
        f"built {destination or result.out}: {report['accepted']} accepted, "
        f"{report['rejected']} rejected "
        f"({report['converted']} converted) of {report['inputs']} inputs in "
        f"{result.seconds:.1f} s"
    )
    for reason, count in report["rejected_by_reason"].items():
        typer.echo(f"  rejected {reason}: {count}")
    if report["not_selected"]:
        typer.echo(
            f"  not selected (below the best {config.num_images} by score): "
            f"{report['not_selected']}"
        )
    if report.get("unlisted_images"):
        typer.echo(f"  images without landmarks (not used): {len(report['unlisted_images'])}")
    typer.echo(
        f"  resolutions {manifest.resolutions[0]}..{manifest.resolutions[-1]}, "
        f"{len(manifest.shards)} shards, {manifest.total_bytes / 1e6:.1f} MB"
    )
    if destination is not None:
        sent = published.upload
        typer.echo(
            f"  uploaded {sent.uploaded} files ({sent.unchanged} already there, "
            f"{sent.removed} stale removed), {sent.bytes / 1e6:.1f} MB in all"
        )


@app.command("verify")
def data_verify(
    directory: Annotated[
        str, typer.Argument(metavar="DIR", help="Dataset folder or s3://BUCKET/PREFIX.")
    ],
) -> None:
    """Re-hash every shard (streamed from S3 for s3://) against DIR/manifest.json; exit 1 naming
    each missing, extra or corrupted shard."""
    from trainers.data.storage import (
        DatasetCorruptedError,
        DatasetNotFoundError,
        load_manifest,
        verify_dataset,
    )

    try:
        result = verify_dataset(directory)
    except DatasetCorruptedError as error:  # a damaged dataset: a finding, not a mistake
        raise fail(str(error), RUNTIME_ERROR) from None
    except (DatasetNotFoundError, ValueError) as error:  # ValueError: a malformed s3:// URL
        raise fail(str(error), USAGE_ERROR) from None
    except OSError as error:  # S3 unreachable, access denied, a shard unreadable
        raise fail(f"could not verify {directory}: {error}", RUNTIME_ERROR) from None
    for kind in ("missing", "extra", "corrupted"):
        for path in getattr(result, kind):
            typer.secho(f"{kind}: {path}", err=True, fg=typer.colors.RED)
    if not result.ok:
        raise fail(f"{directory} does not match its manifest", RUNTIME_ERROR)
    manifest = load_manifest(directory)
    counts = manifest.counts
    typer.echo(
        f"ok {directory}: {len(manifest.shards)} shards verified, {counts.accepted} images at "
        f"{', '.join(map(str, manifest.resolutions))} px, {manifest.total_bytes / 1e6:.1f} MB, "
        f"dataset digest {manifest.digest()[:12]}"
    )


@app.command("stats")
def data_stats(
    params: Annotated[
        Path,
        typer.Option(help="Read the real_statistics section of this params file (DVC stage)."),
    ] = Path("params.yaml"),
) -> None:
    """Compute the real side of the configured metrics (Inception features, SWD descriptors)
    once per dataset version, beside the dataset in <data>.stats/. Metrics that need the
    Inception weights are skipped with a warning when the weights cannot be had."""
    from trainers.config import describe_validation_error
    from trainers.data.storage import DatasetCorruptedError, DatasetNotFoundError, load_manifest
    from trainers.metrics import RealStatisticsConfig

    try:
        config = RealStatisticsConfig.model_validate(params_section(params, "real_statistics"))
        load_manifest(config.data)  # no dataset: exit now, not after importing torch
    except ValidationError as error:
        message = describe_validation_error(error, RealStatisticsConfig)
        raise fail(f"--params {params}: real_statistics: {message}", USAGE_ERROR) from None
    except DatasetCorruptedError as error:
        raise fail(str(error), RUNTIME_ERROR) from None
    except (ValueError, DatasetNotFoundError) as error:
        raise fail(str(error), USAGE_ERROR) from None
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    from trainers.metrics.cache import statistics_dir
    from trainers.metrics.evaluation import Evaluation
    from trainers.metrics.inception import InceptionWeightsUnavailable
    from trainers.metrics.registry import get_metric

    for resolution in config.resolutions:
        evaluation = Evaluation(None, config.data, real_resolution=resolution)
        for metric in map(get_metric, config.metrics):
            try:
                metric.prepare(evaluation)
            except InceptionWeightsUnavailable as error:
                typer.secho(f"warning: {metric.name} skipped: {error}", err=True)
            except DatasetNotFoundError as error:
                raise fail(str(error), USAGE_ERROR) from None
    typer.echo(f"real statistics of {config.data} in {statistics_dir(config.data)}")
