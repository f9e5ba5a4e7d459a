"""The `ganforge` command line. Heavy imports (Prefect, torch) happen inside commands so that
`--help` is instant and dataset pool workers stay light."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from pipelines.dataset.config import BuildDatasetConfig, SourceKind
from trainers.tracking import resolve_tracking_uri

if TYPE_CHECKING:
    import torch

    from trainers.sampling import Sampler

app = typer.Typer(
    help="ganforge: build GAN datasets, train, evaluate and release generators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="Build and check multi-resolution WebDataset datasets.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
pipeline_app = typer.Typer(
    help="The end-to-end Prefect flow: dataset, training, evaluation, registry.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")

USAGE_ERROR = 2
RUNTIME_ERROR = 1


def _default(field: str) -> str:
    return f"(default: {BuildDatasetConfig.model_fields[field].default})"


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _params_section(path: Path, section: str) -> dict:
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"--params {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get(section), dict):
        raise ValueError(f"--params {path}: no '{section}' section")
    return document[section]


def _prefect_defaults() -> None:
    """Quiet, robust defaults for Prefect's ephemeral API; any value the user set wins."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # our own summary says enough
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start on a machine migrates a fresh database: >20 s (the default) here.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def config_error_message(error: ValidationError) -> str:
    """Name each offending option the way the user typed it."""
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        option = f"--{field.replace('_', '-')}" if field else "options"
        lines.append(f"{option}: {item['msg']}")
    return "invalid build config: " + "; ".join(lines)


@data_app.command("build")
def data_build(
    source: Annotated[
        SourceKind,
        typer.Option(
            help="Where images come from: 'synthetic' (embedded procedural faces), 'folder' (a "
            "folder, .zip or .tar of jpg/png/webp/bmp, e.g. a CelebA-HQ download named by "
            "index) or 'celeba' (CelebA in-the-wild images + --landmarks: CelebA-HQ-style "
            "oriented face crops, the best --num-images by quality score)."
        ),
    ] = SourceKind.synthetic,
    input: Annotated[
        Path | None,
        typer.Option(help="Folder/zip/tar of images for --source folder or celeba (img_celeba/)."),
    ] = None,
    landmarks: Annotated[
        Path | None,
        typer.Option(help="celeba: CelebA's 5-point landmark file (list_landmarks_celeba.txt)."),
    ] = None,
    image_list: Annotated[
        Path | None,
        typer.Option(
            help="celeba: CelebA-HQ's image_list.txt; takes exactly its 30,000 images, keyed by "
            "their CelebA-HQ index, instead of the best by score (the deltas are not needed)."
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Dataset folder to write, or s3://BUCKET/PREFIX: built in a local staging "
            "folder ($XDG_CACHE_HOME/ganforge/staging), then uploaded with checksums, the "
            f"manifest last. {_default('out')}"
        ),
    ] = None,
    num_images: Annotated[
        int | None,
        typer.Option(
            help="Synthetic: images to render (2048). Folder: use the first N in name order "
            "(all). Celeba: keep the best N by quality score (30000)."
        ),
    ] = None,
    max_resolution: Annotated[
        int | None,
        typer.Option(
            help="Largest power of two in the pyramid (4..1024). (default: 128; celeba: 1024)"
        ),
    ] = None,
    shard_size: Annotated[
        int | None, typer.Option(help=f"Samples per shard. {_default('shard_size')}")
    ] = None,
    max_reject_fraction: Annotated[
        float | None,
        typer.Option(
            help=f"Fail when more inputs than this are rejected. {_default('max_reject_fraction')}"
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help=f"Fixes the synthetic faces and the sample order. {_default('seed')}"),
    ] = None,
    png_compress_level: Annotated[
        int | None,
        typer.Option(help=f"zlib level of the PNGs (0-9). {_default('png_compress_level')}"),
    ] = None,
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
) -> None:
    """Build validated multi-resolution WebDataset shards (a Prefect flow).

    Writes DIR/manifest.json (every shard with its sha256), DIR/report.json (every input,
    accepted or rejected with a reason) and DIR/rNNNN/shard-*.tar at every power of two from 4
    to --max-resolution. Same inputs and options give byte-identical output; a killed build
    resumes where it stopped (an interrupted upload too). S3 credentials and endpoint come
    from boto3's usual chain (AWS_* variables, ~/.aws, an instance role).
    """
    from pipelines.dataset.upload import check_bucket
    from trainers.data.storage import S3Error, S3Url, is_s3_url

    given = {
        "source": source,
        "input": input,
        "landmarks": landmarks,
        "image_list": image_list,
        "out": out,
        "num_images": num_images,
        "max_resolution": max_resolution,
        "shard_size": shard_size,
        "max_reject_fraction": max_reject_fraction,
        "seed": seed,
        "png_compress_level": png_compress_level,
    }
    destination = None  # an S3Url when --out is one
    try:
        section = _params_section(params, "build_dataset") if params else {}
        options = section | {k: v for k, v in given.items() if v is not None}
        if options.get("out") is not None and is_s3_url(options["out"]):
            from pipelines.dataset.publish import staging_folder

            try:
                destination = S3Url.parse(str(options["out"]))
            except ValueError as error:
                raise ValueError(f"--out {error}") from None
            options["out"] = staging_folder(destination)
        config = BuildDatasetConfig(**options)
    except ValidationError as error:
        raise _fail(config_error_message(error), USAGE_ERROR) from None
    except ValueError as error:
        raise _fail(str(error), USAGE_ERROR) from None
    if destination is not None:
        try:
            check_bucket(destination)
        except S3Error as error:
            raise _fail(f"--out: {error}", USAGE_ERROR) from None

    _prefect_defaults()
    from pipelines.dataset.flow import BuildFailed, build_dataset, local_run_settings
    from pipelines.dataset.sources import SourceError

    try:
        with local_run_settings():
            if destination is None:
                result = build_dataset(config, workers=workers)
            else:
                from pipelines.dataset.publish import build_dataset_to_s3

                published = build_dataset_to_s3(config, destination, workers=workers)
                result = published.build
    except SourceError as error:
        raise _fail(str(error), USAGE_ERROR) from None
    except BuildFailed as error:
        raise _fail(str(error), RUNTIME_ERROR) from None
    except S3Error as error:
        raise _fail(
            f"upload to {destination} failed: {error}. The local build is kept in {config.out}; "
            "a re-run uploads only what S3 does not hold yet",
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


@data_app.command("verify")
def data_verify(
    directory: Annotated[
        str, typer.Argument(metavar="DIR", help="Dataset folder or s3://BUCKET/PREFIX.")
    ],
) -> None:
    """Re-hash every shard (streamed from S3 for s3://) against DIR/manifest.json; exit 1 naming
    each missing, extra or corrupted shard."""
    from trainers.data.storage import DatasetNotFoundError, load_manifest, verify_dataset

    try:
        result = verify_dataset(directory)
    except (DatasetNotFoundError, ValueError) as error:  # ValueError: a malformed s3:// URL
        raise _fail(str(error), USAGE_ERROR) from None
    except OSError as error:  # S3 unreachable, access denied, a shard unreadable
        raise _fail(f"could not verify {directory}: {error}", RUNTIME_ERROR) from None
    for kind in ("missing", "extra", "corrupted"):
        for path in getattr(result, kind):
            typer.secho(f"{kind}: {path}", err=True, fg=typer.colors.RED)
    if not result.ok:
        raise _fail(f"{directory} does not match its manifest", RUNTIME_ERROR)
    manifest = load_manifest(directory)
    counts = manifest.counts
    typer.echo(
        f"ok {directory}: {len(manifest.shards)} shards verified, {counts.accepted} images at "
        f"{', '.join(map(str, manifest.resolutions))} px, {manifest.total_bytes / 1e6:.1f} MB, "
        f"dataset digest {manifest.digest()[:12]}"
    )


@data_app.command("stats")
def data_stats(
    params: Annotated[
        Path,
        typer.Option(help="Read the real_statistics section of this params file (DVC stage)."),
    ] = Path("params.yaml"),
) -> None:
    """Compute the real side of the configured metrics (Inception features, SWD descriptors)
    once per dataset version, beside the dataset in <data>.stats/. Metrics that need the
    Inception weights are skipped with a warning when the weights cannot be had."""
    from trainers.metrics import RealStatisticsConfig

    try:
        config = RealStatisticsConfig.model_validate(_params_section(params, "real_statistics"))
    except (ValueError, ValidationError) as error:
        raise _fail(str(error), USAGE_ERROR) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trainers.data.storage import DatasetNotFoundError
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
                raise _fail(str(error), USAGE_ERROR) from None
    typer.echo(f"real statistics of {config.data} in {statistics_dir(config.data)}")


@dataclass
class _Source:
    """The generator of --checkpoint or --model, with what evaluation reads beside it."""

    sampler: Sampler  # the generator at the stage it is sampled at, with its prior
    data: str
    metrics: list[str]  # the run's configured metrics
    kimg: float
    discriminator: torch.nn.Module | None = None  # a checkpoint's (a family's own metrics)
    family_metrics: dict | None = None


def _load_source(checkpoint: Path | None, model: str | None, device) -> _Source:
    """Exactly one of --checkpoint and --model; exits 2 naming a bad one."""
    if (checkpoint is None) == (model is None):
        raise _fail("give exactly one of --checkpoint DIR and --model URI", USAGE_ERROR)
    if model is not None:
        from pipelines.registry import RegistryError, load_generator

        try:
            loaded = load_generator(model, resolve_tracking_uri())  # runs on the CPU
        except RegistryError as error:
            raise _fail(str(error), USAGE_ERROR) from None
        meta = loaded.metadata
        return _Source(loaded.sampler, meta["data"], meta["metrics"], meta["kimg"])
    from trainers.checkpoint import (
        CONFIG_NAME,
        load_networks,
        read_config,
        read_progress,
        read_stage,
    )
    from trainers.sampling import Sampler

    if not (checkpoint / CONFIG_NAME).is_file():
        raise _fail(f"--checkpoint {checkpoint}: not a ganforge checkpoint", USAGE_ERROR)
    config, stage = read_config(checkpoint), read_stage(checkpoint)
    networks = load_networks(checkpoint, device)
    return _Source(
        Sampler.of(networks["G"], config.family.prior, stage.resolution, stage.fade_alpha),
        config.data,
        list(config.metrics),
        read_progress(checkpoint).kimg,
        networks["D"],
        config.family.metrics(),
    )


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


@app.command("evaluate")
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
    out: Annotated[Path | None, typer.Option(help="Also write the results as JSON here.")] = None,
) -> None:
    """Measure registered metrics for a checkpoint's generator (its EMA copy where kept, at the
    resolution it had reached) or a registered model's, and print them."""
    import json

    from trainers.metrics import check_metric_names, names_help

    if metrics:
        try:
            check_metric_names(metrics.split(","))
        except ValueError as error:
            raise _fail(f"--metrics: {error}", USAGE_ERROR) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from trainers.data.storage import DatasetNotFoundError
    from trainers.metrics.driver import evaluate as measure
    from trainers.metrics.evaluation import Evaluation

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source = _load_source(checkpoint, model, device)
    names = metrics.split(",") if metrics else source.metrics or ["swd1k"]
    evaluation = Evaluation(
        source.sampler,
        data or source.data,
        seed=seed,
        discriminator=source.discriminator,
        family_metrics=source.family_metrics or {},
    )
    try:
        results = measure(names, evaluation)
    except DatasetNotFoundError as error:
        raise _fail(str(error), USAGE_ERROR) from None
    if not results:
        raise _fail(f"none of {names} could be measured (see the warnings; {names_help()})", 1)
    for name, value in results.items():
        typer.echo(f"{name} {value:.6g}")
    if out is not None:
        report = {
            "checkpoint" if checkpoint else "model": str(checkpoint or model),
            "kimg": source.kimg,
            "resolution": source.sampler.resolution,
            "metrics": results,
        }
        out.write_text(json.dumps(report, indent=2))


@app.command("sample")
def sample(
    out: Annotated[Path, typer.Option(help="PNG file to write the grid to.")],
    checkpoint: CheckpointOption = None,
    model: ModelOption = None,
    num: Annotated[int, typer.Option(min=1, max=1024, help="Images in the grid.")] = 64,
    seed: Annotated[int, typer.Option(help="Fixes the latents: same seed, same images.")] = 0,
) -> None:
    """Write a grid of generated images. The same --seed gives the same latents for a
    checkpoint and for the model registered from it, so their grids match."""
    import torch

    source = _load_source(checkpoint, model, torch.device("cpu"))
    source.sampler.write_grid(out, num, seed)
    typer.echo(
        f"wrote {out}: {num} images at {source.sampler.resolution}² (kimg {source.kimg:.3f})"
    )


@app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(metavar="MODEL_NAME", help="Registered model name.")],
    version: Annotated[str, typer.Option(help="The version to make champion.")],
) -> None:
    """Move the `champion` alias to --version only when its gate metric (the run's first
    measured metric, e.g. fid50k or swd1k; lower is better) beats the current champion's;
    otherwise exit 1 printing both numbers."""
    from pipelines.registry import GateRefused, RegistryError
    from pipelines.registry import promote as gate

    try:
        typer.echo(gate(name, version, resolve_tracking_uri()))
    except RegistryError as error:
        raise _fail(str(error), USAGE_ERROR) from None
    except GateRefused as error:
        raise _fail(str(error), RUNTIME_ERROR) from None


@app.command("train")
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
            "validated like the file: --set model.lr=0.0005 --set total_kimg=20.",
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset folder (overrides the config's data).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Ray Train workers (default: the config's workers).")
    ] = None,
    gpu: Annotated[
        bool, typer.Option("--gpu", help="One GPU per worker, nccl and bf16 autocast.")
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
            help="Continue --run-name (default: the latest run) from its latest checkpoint, "
            "in the same MLflow run.",
        ),
    ] = False,
    storage: Annotated[
        str,
        typer.Option(
            help="Where runs live: <storage>/<run name>/, a folder every node sees or "
            "s3://BUCKET/PREFIX."
        ),
    ] = "runs",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a GAN family on Ray Train (local Ray, or the cluster in RAY_ADDRESS); rank 0 logs
    to MLflow (MLFLOW_TRACKING_URI, default ./mlflow.db)."""
    from trainers.config import describe_validation_error, load_train_config

    extra = [*(overrides or [])]
    extra += [f"data={data}"] if data is not None else []
    extra += [f"workers={workers}"] if workers is not None else []
    try:
        train_config = load_train_config(config, extra)
    except ValidationError as error:
        raise _fail(f"{config}: {describe_validation_error(error)}", USAGE_ERROR) from None
    except (OSError, ValueError) as error:
        raise _fail(f"{config}: {error}", USAGE_ERROR) from None

    from trainers.launcher import LaunchError, LaunchRequest, TrainingFailed, launch

    _show_launcher_progress()
    request = LaunchRequest(
        config=train_config,
        storage=storage,
        run_name=run_name,
        resume=resume,
        use_gpu=gpu,
        stop_kimg=max_kimg,
        progress_bar=progress,
    )
    try:
        result = launch(request)
    except LaunchError as error:
        raise _fail(str(error), USAGE_ERROR) from None
    except TrainingFailed as error:
        raise _fail(str(error), RUNTIME_ERROR) from None
    typer.echo(
        f"trained {result.run_name} to kimg {result.kimg:.3f}; run folder {result.run_dir}; "
        f"checkpoint {result.checkpoint}"
        + (f"; best checkpoint {result.best_checkpoint}" if result.best_checkpoint else "")
    )


def _show_launcher_progress() -> None:
    """The launcher's progress lines (Ray ready, ...) on the console, as the workers' come
    through Ray."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("trainers")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # inside a Prefect flow the root logger would print them again


def _pipeline_config(path: Path):
    """The validated pipeline config at `path`; exits 2 naming the bad key."""
    from pipelines.end_to_end import PipelineConfig, load_pipeline_config
    from trainers.config import describe_validation_error

    try:
        return load_pipeline_config(path)
    except ValidationError as error:
        message = describe_validation_error(error, PipelineConfig)
        raise _fail(f"{path}: {message}", USAGE_ERROR) from None
    except (OSError, ValueError) as error:
        raise _fail(f"{path}: {error}", USAGE_ERROR) from None


@pipeline_app.command("run")
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
    _prefect_defaults()
    _show_launcher_progress()
    from pipelines.dataset.flow import local_run_settings
    from pipelines.end_to_end import run_pipeline
    from trainers.launcher import LaunchError, TrainingFailed

    tracking_uri = resolve_tracking_uri()
    try:
        with local_run_settings():
            outcomes = run_pipeline(pipeline, tracking_uri)
    except LaunchError as error:
        raise _fail(str(error), USAGE_ERROR) from None
    except (TrainingFailed, RuntimeError) as error:
        raise _fail(f"pipeline failed: {error}", RUNTIME_ERROR) from None
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


@pipeline_app.command("deploy")
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
        raise _fail(
            "PREFECT_API_URL is not set: a deployment lives on a Prefect server "
            "(`prefect server start`, then PREFECT_API_URL=http://<host>:4200/api)",
            USAGE_ERROR,
        )
    _pipeline_config(source / config)  # a bad config fails now, not at 3 am
    from pipelines.deploy import DeployError, deploy_pipeline

    try:
        deployment = deploy_pipeline(config, cron, name, work_pool, source)
    except DeployError as error:
        raise _fail(str(error), USAGE_ERROR) from None
    typer.echo(
        f"deployment ganforge-scheduled-pipeline/{name} ({deployment}) runs {config} on "
        f"'{cron}' in work pool {work_pool}; start a worker with "
        f"`prefect worker start --pool {work_pool}`"
    )


def main() -> None:
    app()
