"""The whole mission as one Prefect flow (`ganforge pipeline run`, `make run`):

  dvc repro (the dataset, then its real statistics) → per training config: train on Ray Train
  (the job measures the config's metrics over all its workers; each checkpoint records what was
  measured at it) → log the measurements at the best checkpoint on the pipeline's run, for
  comparison → register in MLflow (alias candidate) → promote (champion, through the gate) →
  sample grids from the registered model and the champion it was compared with → the report.

A pipeline run is a parent MLflow run with one child run per training. A re-run skips what did
not change: `dvc repro` skips its own stages, and a training whose input key (resolved config,
dataset manifest digest, training code) matches a finished, registered child run is reused.
The driver's display (trainers.console) shows the stage and each running training.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, task
from prefect.cache_policies import NONE

import trainers
from pipelines.outcomes import PIPELINE_LOG_NAME, REPORT_NAME, FamilyOutcome, PipelineRun
from pipelines.pipeline_config import PipelineConfig, load_pipeline_config
from pipelines.registry import Release
from trainers.config import TrainConfig
from trainers.console import display
from trainers.files import is_url

if TYPE_CHECKING:
    from trainers.checkpoint import Progress

INPUT_KEY_TAG = "ganforge.pipeline.input_key"  # on a training's run: what it was trained from
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under another in the UI


@dataclass(frozen=True)
class Trained:
    family: str
    run_id: str
    checkpoint: Path  # the best by the gate metric, else the latest
    progress: Progress  # the checkpoint's record: kimg, and the metrics measured there
    reused: bool  # True: an earlier pipeline run trained and registered this already

    @classmethod
    def at(cls, checkpoint: Path, family: str, run_id: str, reused: bool) -> Trained:
        from trainers.checkpoint import read_progress

        return cls(family, run_id, checkpoint, read_progress(checkpoint), reused)


# -- tasks -------------------------------------------------------------------------------------


@task(retries=1, retry_delay_seconds=5, cache_policy=NONE)
def reproduce(stage: str | None, log_path: Path) -> None:
    """`dvc repro [STAGE]`: builds what changed (of the stage and what it depends on), skips the
    rest; its output goes to `log_path`. Stage commands call `ganforge`, so this interpreter's
    bin folder leads PATH."""
    from pipelines.prefect_server import KEEP_ENV

    bin_dir = str(Path(sys.executable).parent)
    environment = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # one build in a long run: a local Prefect server kept after it would serve no next build
    environment.setdefault(KEEP_ENV, "0")
    command = [str(Path(bin_dir) / "dvc"), "repro", *([stage] if stage else [])]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        result = subprocess.run(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(
            f"{' '.join(command[1:])} failed (exit {result.returncode}); the end of its output "
            f"({log_path}):\n{tail}"
        )


def code_digest() -> str:
    """sha256 of the training code (every .py under trainers/): a change retrains."""
    digest = hashlib.sha256()
    root = Path(trainers.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def input_key(config: TrainConfig) -> str:
    """What a training's result depends on: its resolved config, the dataset version, the code."""
    from trainers.data.storage import load_manifest

    data = config.data if is_url(config.data) else str(Path(config.data).resolve())
    parts = {
        "config": config.model_dump(mode="json") | {"data": data},
        "dataset": load_manifest(data).digest(),
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _is_training_failure(task, task_run, state) -> bool:
    """Retry a training that failed at run time (it resumes from its latest checkpoint), not
    one the launcher refused (a config or dataset problem: the same again)."""
    from trainers.launcher import TrainingFailed

    try:
        state.result()
    except TrainingFailed:
        return True
    except Exception:
        return False
    return False


def resumable(storage: Path, run_name: str) -> bool:
    """Whether an earlier attempt (a retry, or a killed pipeline run) left a checkpoint of the
    run to resume. One that failed before its first checkpoint left nothing to resume: its
    folder (with the log of that failure) moves aside, so the run starts afresh under its name."""
    from trainers.run_storage import RunStorage

    if RunStorage(storage).checkpoints(run_name):
        return True
    if (storage / run_name).exists():
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        (storage / run_name).rename(storage / f"{run_name}.failed-{stamp}")
    return False


@task(retries=1, retry_condition_fn=_is_training_failure, cache_policy=NONE)
def train(
    config: TrainConfig, storage: Path, parent_run_id: str, tracking_uri: str, key: str
) -> Trained:
    """One Ray Train job, nested under the pipeline's MLflow run; resumes its own latest
    checkpoint when an earlier attempt (a retry, or a killed pipeline run) left one."""
    from trainers.launcher import LaunchRequest, launch

    family = config.model.family
    run_name = f"{family}-{key[:12]}"  # the same on a retry and in a later pipeline run
    resume = resumable(storage, run_name)
    result = launch(
        LaunchRequest(
            config=config,
            storage=storage,
            run_name=run_name,
            resume=resume,
            tracking_uri=tracking_uri,
            tags={PARENT_RUN_TAG: parent_run_id, INPUT_KEY_TAG: key},
        )
    )
    checkpoint = Path(result.best_checkpoint or result.checkpoint)  # storage is a local folder
    return Trained.at(checkpoint, family, result.mlflow_run_id, reused=False)


@task(cache_policy=NONE)
def log_measurements(trained: Trained, tracking_uri: str, parent_run_id: str) -> None:
    """The metrics the training job measured (over all its workers) at the checkpoint that
    will be registered, logged on the parent run as <family>/<metric>: the families side by
    side."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    step = trained.progress.images
    for name, value in trained.progress.metrics.items():
        client.log_metric(parent_run_id, f"{trained.family}/{name}", value, step=step)


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def register(trained: Trained, tracking_uri: str):
    from pipelines.registry import register_generator

    return register_generator(trained.checkpoint, trained.run_id, tracking_uri)


@task(cache_policy=NONE)
def promote(name: str, version: str, tracking_uri: str) -> str:
    """The gate's decision; a refusal is an outcome, not a failure of the pipeline."""
    from pipelines.registry import GateRefused
    from pipelines.registry import promote as gate

    try:
        return gate(name, version, tracking_uri)
    except GateRefused as refused:
        return str(refused)


@task(cache_policy=NONE)
def current_champion(name: str, tracking_uri: str) -> Release | None:
    from pipelines.registry import champion

    return champion(name, tracking_uri)


@task(cache_policy=NONE)
def sample_grid(uri: str, tracking_uri: str, out: Path, count: int, seed: int) -> Path:
    """A grid from the registered model, as a user pulling it gets it."""
    from pipelines.registry import load_generator

    return load_generator(uri, tracking_uri).sampler.write_grid(out, count, seed)


@task(cache_policy=NONE)
def write_report(
    parent_run_id: str, outcomes: list[FamilyOutcome], out: Path, tracking_uri: str
) -> Path:
    """The outcomes and grids onto the parent run, then the report built from that run."""
    from pipelines.report import record_outcomes
    from pipelines.report import write_report as write

    record_outcomes(parent_run_id, outcomes, tracking_uri)
    return write(parent_run_id, tracking_uri, out, log=True)


# -- the flow ----------------------------------------------------------------------------------


def _open_parent_run(config: PipelineConfig, tracking_uri: str, name: str) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from trainers.lineage import git_state, package_versions
    from trainers.tracking import experiment_id, flatten

    client = MlflowClient(tracking_uri)
    tags = git_state(Path(trainers.__file__).parent) | package_versions()
    run = client.create_run(
        experiment_id(client, config.experiment, tracking_uri), run_name=name, tags=tags
    )
    params = flatten(config.model_dump(mode="json"))
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


def _previous(config: TrainConfig, key: str, tracking_uri: str):
    """(Trained, Release) of a finished run trained from `key` whose generator is registered,
    or None: what a re-run reuses instead of training again."""
    from mlflow import MlflowClient

    from pipelines.registry import Release
    from trainers.tracking import experiment_id

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [experiment_id(client, config.experiment, tracking_uri)],
        filter_string=f"tags.`{INPUT_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        if not versions:
            continue
        version = max(versions, key=lambda v: int(v.version))
        checkpoint = Path(version.tags["ganforge.checkpoint"])
        if checkpoint.is_dir():  # else train again: the checkpoint is gone
            trained = Trained.at(checkpoint, config.model.family, run.info.run_id, reused=True)
            return trained, Release.of(version)
    return None


@flow(name="ganforge-pipeline")
def run_pipeline(config: PipelineConfig, tracking_uri: str) -> PipelineRun:
    """dvc repro → for each training: train → log its measurements → register → promote →
    sample grids → the report."""
    from mlflow import MlflowClient

    name = f"pipeline-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    storage = config.storage.resolve()
    folder = storage / name
    log = folder / PIPELINE_LOG_NAME

    def grid_of(release: Release) -> Path:
        path = folder / f"{release.name}-v{release.version}.png"
        return sample_grid(release.uri, tracking_uri, path, config.samples, config.seed)

    with display() as shown:
        if config.repro:
            shown.stage(f"dataset (dvc repro build_dataset; its output in {log})")
            reproduce("build_dataset", log)
            shown.stage("real statistics (dvc repro)")
            reproduce(None, log)
        parent = _open_parent_run(config, tracking_uri, name)
        outcomes, status = [], "FAILED"
        try:
            for index, path in enumerate(config.trainings, 1):
                training = config.training(path)
                which = f"{index} of {len(config.trainings)}: {training.model.family}"
                key = input_key(training)
                previous = _previous(training, key, tracking_uri)
                if previous is None:
                    shown.stage(f"training {which}")
                    trained, release = train(training, storage, parent, tracking_uri, key), None
                else:
                    shown.stage(f"training {which} (unchanged: reused)")
                    trained, release = previous
                log_measurements(trained, tracking_uri, parent)
                if release is None:
                    shown.stage(f"registration {which}")
                    release = register(trained, tracking_uri)
                before = current_champion(release.name, tracking_uri)
                decision = "promotion off (promote: false)"
                if config.promote:
                    shown.stage(f"promotion {which}")
                    decision = promote(release.name, release.version, tracking_uri)
                grid = grid_of(release)
                champion_grid = None
                if before is not None:
                    champion_grid = grid if before.version == release.version else grid_of(before)
                outcomes.append(
                    FamilyOutcome(
                        family=trained.family,
                        run_id=trained.run_id,
                        candidate=release,
                        champion_before=before,
                        metrics=trained.progress.metrics,
                        promotion=decision,
                        grid=grid,
                        champion_grid=champion_grid,
                        reused=trained.reused,
                    )
                )
            shown.stage("report")
            report = write_report(parent, outcomes, folder / REPORT_NAME, tracking_uri)
            status = "FINISHED"
        finally:
            MlflowClient(tracking_uri).set_terminated(parent, status=status)
    return PipelineRun(name=name, run_id=parent, outcomes=outcomes, report=report)


@flow(name="ganforge-scheduled-pipeline")
def scheduled_pipeline(config: str = "configs/pipeline/quickstart.yaml") -> PipelineRun:
    """What a deployment runs (`ganforge pipeline deploy`): the pipeline config read when the
    run starts, from the checkout the worker runs in, logging to the worker's
    MLFLOW_TRACKING_URI (default ./mlflow.db)."""
    from trainers.tracking import resolve_tracking_uri

    return run_pipeline(load_pipeline_config(Path(config)), resolve_tracking_uri())
