"""A dataset built for s3://BUCKET/PREFIX: built in a local staging folder by the build flow, then
uploaded (pipelines.dataset.upload: checksummed, manifest last). The staging folder is
removed after a complete upload and kept after a failure, so a re-run resumes the build from
its spools and uploads only what S3 does not hold yet."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from pipelines.dataset.config import BuildDatasetConfig
from pipelines.dataset.flow import BuildResult, build_dataset
from pipelines.dataset.upload import UploadSummary, upload_dataset
from trainers.data.storage import S3Url


def staging_folder(destination: S3Url) -> Path:
    """$XDG_CACHE_HOME/ganforge/staging/BUCKET/PREFIX (~/.cache when unset)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ganforge" / "staging" / destination.bucket / destination.key


@dataclass
class PublishResult:
    build: BuildResult
    destination: S3Url
    upload: UploadSummary


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def upload(local: Path, destination: S3Url) -> UploadSummary:
    return upload_dataset(local, destination)


@flow(name="build-dataset-to-s3", log_prints=True)
def build_dataset_to_s3(
    config: BuildDatasetConfig, destination: S3Url, workers: int = 1
) -> PublishResult:
    """config.out is the staging folder (see staging_folder)."""
    built = build_dataset(config, workers=workers)
    summary = upload(built.out, destination)
    shutil.rmtree(built.out)
    return PublishResult(built, destination, summary)
