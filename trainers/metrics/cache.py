"""The cache of real-image statistics: the real side of a metric is computed once per dataset
version and kept beside the dataset (or, for s3://, in this machine's cache), keyed by
everything that changes its numbers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trainers import distributed
from trainers.data.storage import S3Url, is_s3_url, load_manifest
from trainers.files import atomic_file
from trainers.metrics.inception import cache_dir

log = logging.getLogger(__name__)

STATISTICS_VERSION = 1  # bump when the way real statistics are computed changes


def statistics_dir(data: str | Path) -> Path:
    """Where a dataset's real statistics live: beside it, not inside (the dataset folder is
    one DVC output, the statistics another); for s3://BUCKET/PREFIX, in this machine's cache."""
    if is_s3_url(data):
        url = S3Url.parse(str(data))
        return cache_dir() / "stats" / url.bucket / f"{url.key}.stats"
    data = Path(data)
    return data.parent / f"{data.name}.stats"


def cached(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The array at `path`, or computed (on every rank) and written atomically by rank 0. A
    plain .npy: byte-identical for equal arrays (npz archives stamp the time), so DVC's hash
    of the statistics stage is reproducible."""
    if path.is_file():
        return torch.from_numpy(np.load(path))
    array = compute()
    if distributed.rank() == 0:
        with atomic_file(path) as file:
            np.save(file, array.numpy())
        log.info("real statistics written to %s", path)
    return array


def real_statistics_path(data: str | Path, resolution: int, settings: str) -> Path:
    """Keyed by everything that changes the numbers: the dataset version (manifest digest),
    the resolution and the metric's settings."""
    digest = load_manifest(data).digest()
    key = hashlib.sha256(f"{STATISTICS_VERSION}:{digest}:{resolution}:{settings}".encode())
    return statistics_dir(data) / f"{resolution}" / f"{settings}-{key.hexdigest()[:16]}.npy"
