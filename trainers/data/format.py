"""The on-disk dataset format: shard names, sample keys and the manifest schema; names and
types only, no I/O (trainers.data.storage reads a dataset, pipelines.dataset writes one).

This is the one module both the writer (pipelines.dataset) and the reader
(trainers.data.reader) import, so the two can never disagree on the layout. DIR is a folder or
s3://BUCKET/PREFIX:

    DIR/manifest.json                      written last; its presence means "complete"
    DIR/report.json                        every input, accepted or rejected with a reason
    DIR/r0004/shard-000000.tar ...         one folder per power-of-two resolution
    shard tar members: <key>.png <key>.json  (the same <key> at every resolution)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
IMAGE_EXTENSION = "png"
METADATA_EXTENSION = "json"
MIN_RESOLUTION = 4
MAX_RESOLUTION = 1024


def check_resolution(value: int) -> int:
    """A pydantic validator body: value must be a power of two the pyramid can hold."""
    if value < MIN_RESOLUTION or value > MAX_RESOLUTION or value & (value - 1):
        raise ValueError(
            f"must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got {value}"
        )
    return value


def resolutions_up_to(max_resolution: int) -> list[int]:
    """Every power of two from 4 to max_resolution, ascending (the ProGAN pyramid)."""
    return [2**p for p in range(2, max_resolution.bit_length()) if 2**p <= max_resolution]


def resolution_dir(resolution: int) -> str:
    return f"r{resolution:04d}"


def shard_name(resolution: int, shard_index: int) -> str:
    """Path of a shard relative to the dataset root."""
    return f"{resolution_dir(resolution)}/shard-{shard_index:06d}.tar"


def sample_key(input_index: int) -> str:
    """Key of a sample: fixed by the input's position in the source, equal at every resolution."""
    return f"img{input_index:08d}"


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str  # relative to the dataset root, see shard_name()
    resolution: int
    count: int  # samples in the shard
    bytes: int
    sha256: str


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: int
    accepted: int
    rejected: int
    converted: int  # accepted inputs whose mode or orientation was converted
    not_selected: int = 0  # celeba: usable inputs below the best num_images by quality score


class Manifest(BaseModel):
    """Everything a reader or `ganforge data verify` needs; deterministic (no timestamps)."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    ganforge_version: str
    params: dict[str, Any]  # the build_dataset config that produced this dataset
    source_digest: str  # sha256 over the source's inputs (or generator version + seed)
    counts: Counts
    resolutions: list[int]
    shards: list[ShardEntry]
    total_bytes: int

    def shards_at(self, resolution: int) -> list[ShardEntry]:
        return [s for s in self.shards if s.resolution == resolution]

    def digest(self) -> str:
        """Identity of this dataset version (used to key cached statistics)."""
        return hashlib.sha256(canonical_json(self.model_dump())).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes: sorted keys, fixed separators, trailing newline. A file name that is
    not UTF-8 (held as surrogates) is written as JSON's \\udcXX escape, which reads back as it."""
    text = json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace")
