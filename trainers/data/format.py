"""The on-disk dataset format: shard names, sample keys and the manifest schema.

This is the one module both the writer (pipelines.dataset) and the reader
(trainers.data.reader) import, so the two can never disagree on the layout:

    DIR/manifest.json                      written last; its presence means "complete"
    DIR/report.json                        every input, accepted or rejected with a reason
    DIR/r0004/shard-000000.tar ...         one folder per power-of-two resolution
    shard tar members: <key>.png <key>.json  (the same <key> at every resolution)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
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


class DatasetNotFoundError(FileNotFoundError):
    """No complete dataset (no manifest) at a path, or not the needed resolution."""


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes: sorted keys, fixed separators, trailing newline."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetNotFoundError(
            f"no dataset at {root}: {MANIFEST_NAME} is missing (build one with "
            f"`ganforge data build --source synthetic --out {root}`)"
        )
    return Manifest.model_validate_json(path.read_bytes())


class VerifyResult(BaseModel):
    missing: list[str]  # in the manifest, not on disk
    extra: list[str]  # on disk under a resolution folder, not in the manifest
    corrupted: list[str]  # size or sha256 differs from the manifest

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.corrupted)


def verify_dataset(root: Path) -> VerifyResult:
    """Re-hash every shard against the manifest."""
    root = Path(root)
    manifest = load_manifest(root)
    listed = {s.path: s for s in manifest.shards}
    on_disk = {
        p.relative_to(root).as_posix()
        for r in manifest.resolutions
        if (root / resolution_dir(r)).is_dir()
        for p in (root / resolution_dir(r)).iterdir()
    }
    missing, corrupted = [], []
    for path, entry in sorted(listed.items()):
        file = root / path
        if not file.is_file():
            missing.append(path)
        elif file.stat().st_size != entry.bytes or sha256_file(file) != entry.sha256:
            corrupted.append(path)
    return VerifyResult(missing=missing, extra=sorted(on_disk - listed.keys()), corrupted=corrupted)
