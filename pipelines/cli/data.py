"""`ganforge data`: build, verify and compute the real statistics of a dataset."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import typer
from pydantic import ValidationError

from pipelines.cli.common import (
    LOG_FORMAT,
    RUNTIME_ERROR,
    USAGE_ERROR,
    PrefectApi,
    PrefectApiUnavailable,
    fail,
    params_section,
    prefect_defaults,
    process_started_at,
)
from pipelines.dataset.config import BuildDatasetConfig
from pipelines.dataset.executor import ExecutorKind, default_kind
from trainers.data.storage import S3Url

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


def _types(annotation: Any) -> set:
    """The types an annotation allows, unions and Annotated's metadata unwrapped."""
    if get_origin(annotation) is Annotated:
        return _types(get_args(annotation)[0])
    return set().union(*map(_types, get_args(annotation))) if get_args(annotation) else {annotation}


def _config_option(name: str) -> inspect.Parameter:
    """--NAME for a BuildDatasetConfig field: its type, its help and default (option_help),
    None when not given (then --params or the config's default decides)."""
    field = BuildDatasetConfig.model_fields[name]
    kinds = _types(field.annotation) - {type(None)}
    if S3Url in kinds:  # a Location, taken as text: a Path would fold the "//" of s3://
        kind, metavar = str, "<path|s3://...>"
    else:
        (kind,), metavar = kinds, None
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
        int,
        typer.Option(
            min=1,
            help="Processes of the local executor (this machine: all its cores); with --executor "
            "ray the cluster's CPUs decide.",
        ),
    ] = os.cpu_count() or 1,
    executor: Annotated[
        ExecutorKind | None,
        typer.Option(
            help="Where the score, process and write tasks run: 'local' (a process pool of "
            "--workers) or 'ray' (Ray tasks on every node of the cluster in RAY_ADDRESS, local "
            "Ray when it is unset). Default: ray when RAY_ADDRESS is set, else local.",
        ),
    ] = None,
    **given,
) -> None:
    """Build validated multi-resolution WebDataset shards (a Prefect flow).

    Writes DIR/manifest.json (every shard with its sha256), DIR/report.json (every input,
    accepted or rejected with a reason) and DIR/rNNNN/shard-*.tar at every power of two from 4
    to --max-resolution. Same inputs and options give byte-identical output, wherever the tasks
    ran; a killed build resumes where it stopped. DIR and the inputs may be on S3
    (s3://BUCKET/PREFIX; credentials and endpoint from boto3's usual chain: AWS_* variables,
    ~/.aws, an instance role). With --executor ray they must be where every node reaches them:
    S3, or a shared filesystem mounted at the same path. The flow reports to the Prefect server
    in PREFECT_API_URL, else to a local one that is kept for the next build for
    GANFORGE_PREFECT_SERVER_KEEP_SECONDS idle seconds (600 by default; 0: stopped with the
    command), so a build after another starts its work in about 2 s instead of 4 to 6.
    """
    from pipelines.dataset.sources import SourceError, check_paths
    from pipelines.dataset.writer import check_bucket
    from pipelines.prefect_server import keep_seconds
    from trainers.data.storage import S3Error

    try:
        section = params_section(params, "build_dataset") if params else {}
        options = section | {k: v for k, v in given.items() if v is not None}
        config = BuildDatasetConfig(**options)
        check_paths(config)
        keep_seconds()  # a malformed GANFORGE_PREFECT_SERVER_KEEP_SECONDS, before any work
    except ValidationError as error:
        raise fail(config_error_message(error), USAGE_ERROR) from None
    except (ValueError, SourceError) as error:
        raise fail(str(error), USAGE_ERROR) from None

    prefect_defaults()
    kind = executor or default_kind()
    from pipelines.dataset.executor import NotShared, started_ahead

    created = isinstance(config.out, Path) and not config.out.exists()
    try:
        # The workers (or the cluster connection) and Prefect's import start while the Prefect
        # API does.
        with PrefectApi() as api, started_ahead(kind, workers):
            if isinstance(config.out, S3Url):
                try:  # before a build spends minutes on a dataset it could not write
                    check_bucket(config.out)
                except S3Error as error:
                    raise fail(f"--out: {error}", USAGE_ERROR) from None
            from pipelines.dataset.flow import BuildFailed, build_dataset, local_run_settings

            api.wait()
            try:
                with local_run_settings():
                    result = build_dataset(config, workers=workers, executor=kind)
            except BuildFailed as error:
                raise fail(str(error), RUNTIME_ERROR) from None
    except (SourceError, NotShared) as error:  # found while listing: e.g. no images in --input
        if created:  # leave no empty --out behind
            with contextlib.suppress(OSError):
                config.out.rmdir()
        raise fail(str(error), USAGE_ERROR) from None
    except S3Error as error:
        raise fail(
            f"{error}. Every task's finished work is kept under {config.out}; a re-run "
            "resumes from it",
            RUNTIME_ERROR,
        ) from None
    except (PrefectApiUnavailable, ConnectionError) as error:  # no API server, no Ray cluster
        raise fail(str(error), RUNTIME_ERROR) from None
    except OSError as error:  # a full disk, a folder removed meanwhile
        from pipelines.dataset.process import WORK_DIR_NAME

        raise fail(
            f"the build of {config.out} failed: {error}; a re-run resumes from the inputs "
            f"processed so far, kept in {config.out}/{WORK_DIR_NAME}",
            RUNTIME_ERROR,
        ) from None
    report, manifest = result.report, result.manifest
    typer.echo(
        f"built {result.out}: {report['accepted']} accepted, "
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
    if result.runs:
        first = min(run.started for run in result.runs) - process_started_at()
        typer.echo(
            f"  {len(result.runs)} {kind} tasks on {len(result.nodes)} node(s); the first began "
            f"{first:.1f} s after the command started"
        )
    if kind is ExecutorKind.ray:
        for node, count in sorted(result.nodes.items()):
            typer.echo(f"    node {node[:12]}…: {count} tasks")
    if api.kept is not None:
        typer.echo(
            f"  Prefect: {api.kept} kept for the next build until {api.keep:g} s idle "
            "(GANFORGE_PREFECT_SERVER_KEEP_SECONDS=0: stopped with the command)"
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
