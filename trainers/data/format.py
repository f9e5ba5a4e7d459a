"""The on-disk dataset format: shard names, sample keys and the manifest schema.

This is the one module both the writer (pipelines.dataset) and the reader
(trainers.data.reader) import, so the two can never disagree on the layout. DIR is a folder or
s3://BUCKET/PREFIX (trainers.data.s3):

    DIR/manifest.json                      written last; its presence means "complete"
    DIR/report.json                        every input, accepted or rejected with a reason
    DIR/r0004/shard-000000.tar ...         one folder per power-of-two resolution
    shard tar members: <key>.png <key>.json  (the same <key> at every resolution)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from trainers.data.s3 import S3Dataset

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


class DatasetNotFoundError(FileNotFoundError):
    """No complete dataset (no manifest) at a path, or not the needed resolution."""


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes: sorted keys, fixed separators, trailing newline."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def sha256_stream(stream: BinaryIO, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while block := stream.read(chunk_bytes):
        digest.update(block)
    return digest.hexdigest()


class LocalDataset:
    """A dataset folder. trainers.data.s3.S3Dataset has the same methods for s3://BUCKET/PREFIX,
    so the manifest loader, the verifier and the readers serve both."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def url(self, name: str) -> str:
        """What webdataset opens."""
        return str(self.root / name)

    def read(self, name: str) -> bytes:
        if not (self.root / name).is_file():
            raise FileNotFoundError(f"{name} is missing")
        return (self.root / name).read_bytes()

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def open_shard(self, shard: ShardEntry) -> BinaryIO:
        """A listed shard, unchecked: hashing costs 7% of the reader's images/s (64², parse +
        PNG decode), and a local dataset is checked by DVC and `ganforge data verify`."""
        return self.open(shard.path)

    def files(self, folders: list[str]) -> dict[str, int | None]:
        """Name (relative to the root) -> size of every entry of these folders (None: not a
        regular file)."""
        return {
            p.relative_to(self.root).as_posix(): p.stat().st_size if p.is_file() else None
            for folder in folders
            if (self.root / folder).is_dir()
            for p in (self.root / folder).iterdir()
        }


def dataset_at(root: str | Path) -> LocalDataset | S3Dataset:
    """The dataset at a folder or at s3://BUCKET/PREFIX."""
    from trainers.data import s3  # boto3 only where a dataset is on S3

    if s3.is_s3_url(root):
        return s3.S3Dataset(s3.S3Url.parse(str(root)))
    return LocalDataset(Path(root))


def load_manifest(root: str | Path) -> Manifest:
    try:
        data = dataset_at(root).read(MANIFEST_NAME)
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"no dataset at {root}: {error} (build one with "
            f"`ganforge data build --source synthetic --out {root}`)"
        ) from None
    return Manifest.model_validate_json(data)


class VerifyResult(BaseModel):
    missing: list[str]  # in the manifest, not in the dataset
    extra: list[str]  # in a resolution folder, not in the manifest
    corrupted: list[str]  # size or sha256 differs from the manifest

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.corrupted)


def verify_dataset(root: str | Path) -> VerifyResult:
    """Re-hash every shard (streamed, for s3://) against the manifest."""
    dataset = dataset_at(root)
    manifest = load_manifest(root)
    listed = {s.path: s for s in manifest.shards}
    present = dataset.files([resolution_dir(r) for r in manifest.resolutions])
    missing, corrupted = [], []
    for path, entry in sorted(listed.items()):
        if present.get(path) is None:
            missing.append(path)
        elif present[path] != entry.bytes:
            corrupted.append(path)
        else:
            with dataset.open(path) as stream:
                if sha256_stream(stream) != entry.sha256:
                    corrupted.append(path)
    return VerifyResult(
        missing=missing, extra=sorted(present.keys() - listed.keys()), corrupted=corrupted
    )
