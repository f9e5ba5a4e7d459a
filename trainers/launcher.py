"""Run a training config on Ray Train: one TorchTrainer worker per GPU (or CPU slot).

Local Ray by default (started with the settings in LOCAL_RAY_ENVIRONMENT), the cluster named
by RAY_ADDRESS otherwise. Every worker runs `trainers.loop.Trainer`; rank 0 logs to MLflow and
reports its progress to the driver's display (trainers.console). A run lives in
`<storage>/<run name>/` (Ray's checkpoints, sample grids, train.log); `resume` continues the
latest checkpoint there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from trainers.config import TrainConfig
from trainers.console import TrainingMonitor, display
from trainers.data.format import MANIFEST_NAME
from trainers.data.storage import (
    DatasetCorruptedError,
    DatasetNotFoundError,
    load_manifest,
    rebuild_command,
)
from trainers.files import is_url
from trainers.lineage import lineage_tags
from trainers.run_storage import RunStorage

log = logging.getLogger(__name__)

RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Ray environment variables the launcher sets where the user has not. They are read at
# `import ray` (the driver's console), at `ray.init` (the cluster's processes) and at `fit` (Ray
# Train's controller), so they go into os.environ before any of these.
RAY_CONSOLE_ENVIRONMENT = {
    # Both agents of a node whose raylet dies send the driver the tail of the raylet's log
    # (Ray prints the second copy once its dedup window passes); that the node was lost still
    # shows, once, in the GCS's message.
    "RAY_DEDUP_LOGS_SKIP_REGEX": "Raylet is terminated",
}
LOCAL_RAY_ENVIRONMENT = {
    # Token authentication stays on (Ray's default for a new local cluster); naming the mode
    # only stops ray.init's warning that it chose it.
    "RAY_AUTH_MODE": "token",
    # Ray starts one idle worker process per CPU when the driver connects; Ray Train's actors
    # all run with the controller's runtime env, so none of them can use those processes, which
    # cost 1 to 3 s of CPU each while the cluster and the controller start.
    "RAY_prestart_worker_first_driver": "0",
    # The preemption watcher is one more actor process (3 to 5 s of CPU as training starts)
    # that watches for nodes being drained, which a single local machine never is.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train's Prometheus metrics, which only a dashboard (off here) would show.
    "RAY_TRAIN_METRICS_ENABLED": "0",
}
LAUNCH_MARK = "%s at %.3f (unix time)"  # the launch timeline `make bench` splits
RUN_LOG_NAME = "train.log"  # in the run's local folder: every rank's log records, the driver's


def _lean_trainer_class(local_cluster: bool):
    """TorchTrainer without the helper actors this launcher never needs. Each is one more
    Python process importing Ray while the workers start (2 to 3 s of CPU apiece, measured):
    the DatasetManager serves Ray Datasets (our workers read shards themselves); the
    PlacementGroupCleaner frees the placement group of a controller that dies, which on a
    local cluster dies with it. Ray Train builds them in `_create_default_callbacks`, so that
    is where they are left out (tests/test_train_cli.py checks that training still runs)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    unneeded = (DatasetsCallback,) + (PlacementGroupCleanerCallback,) * local_cluster

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, unneeded)]

    return LeanTorchTrainer


class LaunchError(ValueError):
    """A problem the user can fix before any worker starts (exit status 2)."""


class TrainingFailed(RuntimeError):
    """Training started and failed (exit status 1); the message says what was kept."""


@dataclass(frozen=True)
class LaunchRequest:
    config: TrainConfig
    storage: str | Path  # runs live in <storage>/<run name>/: a folder or s3://BUCKET/PREFIX
    run_name: str | None = None  # default: <family>-<timestamp>; with resume: the latest run
    resume: bool = False
    use_gpu: bool = False  # nccl on one GPU per worker; gloo on CPUs (precision: the config's)
    stop_kimg: float | None = None  # stop here (with a checkpoint) instead of total_kimg
    tracking_uri: str | None = None  # MLflow store; None: MLFLOW_TRACKING_URI or ./mlflow.db
    show_progress: bool = True  # the training's line on the driver's display (trainers.console)
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags of a new run, besides lineage


@dataclass(frozen=True)
class LaunchResult:
    run_name: str
    run_dir: str  # <storage>/<run name>: a local path or an s3:// URL, as are the checkpoints
    kimg: float
    checkpoint: str | None
    best_checkpoint: str | None = None  # lowest gate value measured at a checkpoint, if any
    mlflow_run_id: str | None = None


def check_dataset(config: TrainConfig) -> None:
    """Every resolution the run trains must be in the dataset; else a LaunchError that names
    what is missing and the command that builds it."""
    root = config.data  # a folder or s3://BUCKET/PREFIX
    try:
        manifest = load_manifest(root)
    except DatasetNotFoundError:
        build = f"ganforge data build --out {root} --max-resolution {config.model.resolution}"
        raise LaunchError(
            f"no dataset at {root} (no {MANIFEST_NAME}); build it with `{build}`"
        ) from None
    except (OSError, DatasetCorruptedError) as error:  # S3 unreachable, access denied
        raise LaunchError(f"cannot read the dataset at {root}: {error}") from None
    missing = [r for r in config.resolutions if not manifest.shards_at(r)]
    if missing:
        build = rebuild_command(root, manifest, config.model.resolution)
        raise LaunchError(
            f"dataset {root} has no shards at resolution {missing} (it has "
            f"{manifest.resolutions}); build them with `{build}`"
        )


def resolve_run_name(request: LaunchRequest, storage: RunStorage) -> str:
    if request.resume:
        name = request.run_name or storage.latest_run()
        if name is None:
            raise LaunchError(f"--resume: no run with a checkpoint under {storage.uri}")
        if not storage.checkpoints(name):
            raise LaunchError(f"--resume: run {name!r} has no checkpoint under {storage.uri}")
        return name
    name = request.run_name or (
        f"{request.config.model.family}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    if not RUN_NAME_PATTERN.match(name):
        raise LaunchError(f"--run-name {name!r}: use letters, digits, '.', '_' and '-'")
    if storage.exists(name):
        raise LaunchError(
            f"run {name!r} already exists in {storage.uri}: pass --resume to continue it, "
            "or choose another --run-name"
        )
    return name


class _RaySession:
    """The loop's `Session` on Ray Train: resume point and checkpoint reporting."""

    def __init__(self, storage: str, run_name: str):
        self.storage, self.run_name = storage, run_name

    @contextlib.contextmanager
    def restore_dir(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            # A worker killed right after reporting can take the report with it before Ray's
            # controller registers it; the checkpoint is stored all the same, so a restarted
            # group resumes from it rather than from zero (in a new MLflow run).
            storage = RunStorage(self.storage)
            kept = storage.latest_complete_checkpoint(self.run_name)
            if kept is None:
                yield None
                return
            with storage.local_copy(self.run_name, kept) as directory:
                yield directory
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path, name: str) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def placement(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def _train_worker(payload: dict) -> None:
    """Entry point of every Ray Train worker."""
    import ray.train.torch
    import torch

    from trainers.console import forward_worker_logs
    from trainers.loop import RunOptions, Trainer

    rank = ray.train.get_context().get_world_rank()
    forward_worker_logs(payload["channel"], rank)
    if rank == 0:
        log.info(LAUNCH_MARK, "train function entered", time.time())
    # offline by default: MLflow's usage telemetry would call out of a cluster node
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    use_gpu = payload["use_gpu"]
    config = TrainConfig.model_validate(payload["config"])
    # torch's threads follow the CPUs Ray reserved, whatever OMP_NUM_THREADS the worker holds
    torch.set_num_threads(config.cpus_per_worker)
    if rank == 0:
        log.info("torch threads per worker: %d", torch.get_num_threads())
    storage = RunStorage(payload["storage"])
    options = RunOptions(
        device=ray.train.torch.get_device() if use_gpu else torch.device("cpu"),
        stop_kimg=payload["stop_kimg"],
        run_dir=storage.local_dir(payload["run_name"]),
        tracking_uri=payload["tracking_uri"],
        run_name=payload["run_name"],
        channel=payload["channel"],
        tags=payload["tags"],
    )
    session = _RaySession(payload["storage"], payload["run_name"])
    trainer = Trainer(config, options, session)
    try:
        trainer.run()
    except BaseException:
        trainer.close(failed=True)
        raise
    trainer.close()


def _root_cause(error: BaseException) -> str:
    """The first worker's own exception message out of Ray's wrapping."""
    failures = getattr(error, "worker_failures", None) or {}
    for failure in failures.values():
        return f"{type(failure).__name__}: {failure}"
    return f"{type(error).__name__}: {error}"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def launch(request: LaunchRequest) -> LaunchResult:
    """Validate, start (or join) Ray, run the TorchTrainer with its line on the driver's
    display, and report where things are."""
    config = request.config
    check_dataset(config)
    if not is_url(config.data):  # workers run in other directories
        config = config.model_copy(update={"data": str(Path(config.data).resolve())})
    for resolution in config.resolutions:
        for workers in config.world_sizes:  # an elastic run may go on with any of them
            try:
                config.batch_per_worker(resolution, workers)
            except ValueError as error:
                elastic = f"min_workers={config.min_workers}: " * (workers < config.workers)
                raise LaunchError(f"{elastic}{error}") from None
    storage = RunStorage(request.storage)
    run_name = resolve_run_name(request, storage)
    address = os.environ.get("RAY_ADDRESS")
    if request.use_gpu and not address and not _cuda_available():
        raise LaunchError("--gpu: no CUDA device here; drop --gpu to train on CPU")
    log_path = storage.local_dir(run_name) / RUN_LOG_NAME
    with (
        display() as shown,
        TrainingMonitor(
            shown, run_name, config.model.family, log_path, request.show_progress
        ) as monitor,
    ):
        result = _fit(request, config, storage, run_name, address, monitor)
        monitor.finished(result.kimg)
    return result


def _fit(
    request: LaunchRequest,
    config: TrainConfig,
    storage: RunStorage,
    run_name: str,
    address: str | None,  # RAY_ADDRESS: the cluster to join; None starts a local one
    monitor: TrainingMonitor,
) -> LaunchResult:
    """Start (or join) Ray and run the TorchTrainer, rank 0 reporting to `monitor`."""
    from trainers.tracking import resolve_tracking_uri

    if "ray" not in sys.modules:  # a process that imported Ray before keeps its settings
        # a cluster in RAY_ADDRESS is configured by whoever started it
        settings = RAY_CONSOLE_ENVIRONMENT | ({} if address else LOCAL_RAY_ENVIRONMENT)
        for name, value in settings.items():
            os.environ.setdefault(name, value)
    if not sys.stdout.isatty():  # Ray's messages to the driver ("(raylet) A worker died ...")
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # come with color codes otherwise
    import ray

    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
            # workers' stdout and stderr stay in Ray's session logs: their log records reach
            # the driver once each over the training's channel (trainers.console)
            log_to_driver=False,
        )
    log.info(LAUNCH_MARK, "Ray ready" + (" (local cluster)" * (not address)), time.time())
    if not address:  # a local cluster never grows: workers it cannot place would wait forever
        cpus = ray.cluster_resources().get("CPU", 0)
        if config.workers * config.cpus_per_worker > cpus:
            raise LaunchError(
                f"workers={config.workers} x cpus_per_worker={config.cpus_per_worker} CPUs, and "
                f"this machine's Ray has {cpus:g}; lower either, or join a cluster with RAY_ADDRESS"
            )
    import ray.train
    from ray.train.torch import TorchConfig  # imports torch: after the cluster has started
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # an actor on the driver's node, so that losing another node does not lose it, taking no
    # CPU, since it runs beside training workers that hold every CPU; a hard affinity: a soft
    # one was seen placed on another node (whose loss then cut every worker's log and warning)
    driver = ray.get_runtime_context().get_node_id()
    driver_node = NodeAffinitySchedulingStrategy(driver, soft=False)
    channel = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": driver_node})
    monitor.listen(channel)
    # the code's git state is where this file is, whatever the working directory
    tags = lineage_tags(config.data, Path(__file__).parent) | request.tags
    payload = {
        "config": config.model_dump(mode="json"),
        "tags": tags,
        "use_gpu": request.use_gpu,
        "stop_kimg": request.stop_kimg,
        "storage": storage.uri,
        "run_name": run_name,
        "tracking_uri": resolve_tracking_uri(request.tracking_uri),
        "channel": channel,
    }
    trainer = _lean_trainer_class(local_cluster=not address)(
        _train_worker,
        train_loop_config=payload,
        torch_config=TorchConfig(backend="nccl" if request.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=(config.world_sizes[0], config.workers)
            if config.min_workers
            else config.workers,
            use_gpu=request.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker}
            | ({"GPU": 1} if request.use_gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage.uri,
            # the latest checkpoint is always kept (to resume); with metrics, the one with the
            # lowest gate value too
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.checkpoints_to_keep,
                checkpoint_score_attribute="gate_value" if config.metrics else None,
                checkpoint_score_order="min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            # Ray Train's own lines stay in its log files (<Ray session dir>/logs/train/), off
            # the console: INFO for every resource request, worker group start and checkpoint;
            # WARNING with a traceback each time a slow-starting actor misses a 5 s deadline.
            # A failure still reaches the user as fit()'s exception (TrainingFailed below).
            logging_config=ray.train.LoggingConfig(log_level="ERROR"),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as error:
        kept = storage.latest_complete_checkpoint(run_name)
        restarts = f" (its max_failures={config.max_failures} restarts used up)" * bool(
            config.max_failures
        )
        where = (
            f"the latest state is in {storage.location(run_name, kept)}; continue it with the "
            "same command plus "
            f"--run-name {run_name} --storage {request.storage} --resume"
            if kept
            else "no checkpoint was written"
        )
        raise TrainingFailed(f"training failed{restarts}: {_root_cause(error)}; {where}") from error
    # Ray's checkpoint paths are in its filesystem's terms (no s3:// scheme): by folder name
    latest = PurePosixPath(result.checkpoint.path).name if result.checkpoint else None
    progress = storage.read_progress(run_name, latest) if latest else None
    best = storage.best_checkpoint(run_name)
    return LaunchResult(
        run_name,
        storage.location(run_name),
        progress.kimg if progress else 0.0,
        storage.location(run_name, latest) if latest else None,
        storage.location(run_name, best) if best else None,
        progress.mlflow_run_id if progress else None,
    )
