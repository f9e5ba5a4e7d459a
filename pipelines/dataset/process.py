"""Pool-worker side of a build: inputs → validated RGB → pyramid PNGs in a chunk spool, and
spools → shards.

Runs in plain worker processes (no Prefect, no torch import): each chunk's encoded pyramids go
to one spool file plus a JSON list of per-input records, both written atomically, so a killed
build resumes from the chunks already on disk. Shards are assembled from spools afterwards, once
duplicates are known and the seeded order is fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from pipelines.dataset.config import BuildDatasetConfig, SourceKind
from pipelines.dataset.pyramid import box_pyramid, encode_png, square_master
from pipelines.dataset.sources import InputRef, read_input
from pipelines.dataset.validate import Reason, Rejected, decode, max_file_bytes, pixel_digest
from trainers.data.format import ShardEntry, canonical_json, sample_key, shard_name
from trainers.files import atomic_file, write_atomic


@dataclass
class InputRecord:
    index: int
    path: str
    reason: str | None = None  # a validate.Reason value; None means accepted
    detail: str = ""
    conversions: list[str] = field(default_factory=list)
    original_size: list[int] | None = None  # [width, height]
    pixel_digest: str | None = None
    content_sha256: str = ""  # of the raw input bytes; feeds the source digest
    chunk_index: int = -1
    spool: dict[str, list[int]] = field(default_factory=dict)  # str(resolution) -> [offset, n]

    @property
    def accepted(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class ChunkSpec:
    config: BuildDatasetConfig
    chunk_index: int
    inputs: list[InputRef]
    work_dir: Path


def spool_paths(work_dir: Path, chunk_index: int) -> tuple[Path, Path]:
    stem = work_dir / f"chunk-{chunk_index:06d}"
    return stem.with_suffix(".bin"), stem.with_suffix(".json")


def load_chunk_records(work_dir: Path, chunk_index: int) -> list[InputRecord] | None:
    """Records of a chunk finished by an earlier (possibly killed) build, or None."""
    _, records_path = spool_paths(work_dir, chunk_index)
    if not records_path.is_file():
        return None
    return [InputRecord(**r) for r in json.loads(records_path.read_bytes())]


def _read(config: BuildDatasetConfig, ref: InputRef) -> tuple[bytes, str]:
    """An input's raw bytes and their sha256, or Rejected: whatever reading it raises (a link
    loop, a damaged archive member, an encrypted one) is this input's reject, not the build's."""
    assert config.input is not None
    try:
        raw = read_input(Path(config.input), ref.path, max_file_bytes(config.max_pixels))
    except Rejected:
        raise
    except Exception as error:
        raise Rejected(Reason.read_error, f"{type(error).__name__}: {error}") from None
    return raw, hashlib.sha256(raw).hexdigest()


def _landmarks(ref: InputRef) -> np.ndarray:
    assert ref.landmarks is not None
    return np.asarray(ref.landmarks, dtype=np.float32).reshape(5, 2)


def _face_crop(image: Image.Image, ref: InputRef, size: int) -> Image.Image:
    from pipelines.dataset import celeba

    try:
        return celeba.oriented_crop(image, _landmarks(ref), size)
    except ValueError as error:  # the crop misses the image: landmarks of another photo
        raise Rejected(Reason.bad_landmarks, str(error)) from None


def _source_image(config: BuildDatasetConfig, ref: InputRef, record: InputRecord) -> Image.Image:
    """The input as an RGB image the pyramid starts from. celeba: the face crop, resampled
    from the source straight to max_resolution (1024² in the CelebA-HQ recipe)."""
    if config.source is SourceKind.synthetic:
        from pipelines.dataset.synthetic import render_face

        record.original_size = [config.max_resolution, config.max_resolution]
        return render_face(config.seed, ref.index, config.max_resolution)
    raw, record.content_sha256 = _read(config, ref)
    if config.source is SourceKind.celeba:
        decoded = decode(raw, 1, config.max_pixels, draft=False)
        image = _face_crop(decoded.image, ref, config.max_resolution)
    else:
        decoded = decode(raw, config.max_resolution, config.max_pixels)
        image = decoded.image
    record.conversions = decoded.conversions
    record.original_size = list(decoded.original_size)
    return image


@dataclass
class ScoreRecord:
    """One celeba input's quality score, or why it cannot be used."""

    index: int
    path: str
    score: float | None = None
    reason: str | None = None  # a validate.Reason value; None means usable
    detail: str = ""
    content_sha256: str = ""


def score_paths(work_dir: Path, chunk_index: int) -> Path:
    return work_dir / f"score-{chunk_index:06d}.json"


def load_chunk_scores(work_dir: Path, chunk_index: int) -> list[ScoreRecord] | None:
    """Scores of a chunk finished by an earlier (possibly killed) build, or None."""
    path = score_paths(work_dir, chunk_index)
    if not path.is_file():
        return None
    return [ScoreRecord(**r) for r in json.loads(path.read_bytes())]


def score_chunk(spec: ChunkSpec) -> list[ScoreRecord]:
    """celeba's first pass: decode each input and score its face (see celeba.quality_score);
    faces whose crop is under celeba.MIN_FACE_SIDE source pixels are rejected as too small."""
    from pipelines.dataset import celeba

    records = []
    for ref in spec.inputs:
        record = ScoreRecord(index=ref.index, path=ref.path)
        try:
            raw, record.content_sha256 = _read(spec.config, ref)
            image = decode(raw, 1, spec.config.max_pixels, draft=False).image
            side = celeba.crop_geometry(_landmarks(ref)).side
            if side < celeba.MIN_FACE_SIDE:
                raise Rejected(
                    Reason.too_small,
                    f"face crop {side:.0f} px < {celeba.MIN_FACE_SIDE} px ({image.size[0]}x"
                    f"{image.size[1]} image)",
                )
            try:
                record.score = celeba.quality_score(image, _landmarks(ref))
            except ValueError as error:  # the crop misses the image
                raise Rejected(Reason.bad_landmarks, str(error)) from None
        except Rejected as rejected:
            record.reason, record.detail = rejected.reason.value, rejected.detail
        records.append(record)
    write_atomic(
        score_paths(spec.work_dir, spec.chunk_index),
        json.dumps([dataclasses.asdict(r) for r in records]).encode(),
    )
    return records


def process_chunk(spec: ChunkSpec) -> list[InputRecord]:
    config = spec.config
    spool = bytearray()
    records = []
    for ref in spec.inputs:
        record = InputRecord(index=ref.index, path=ref.path, chunk_index=spec.chunk_index)
        try:
            image = _source_image(config, ref, record)
            record.pixel_digest = pixel_digest(image)
            for resolution, pixels in sorted(
                box_pyramid(square_master(image, config.max_resolution)).items()
            ):
                png = encode_png(pixels, config.png_compress_level)
                record.spool[str(resolution)] = [len(spool), len(png)]
                spool += png
        except Rejected as rejected:
            record.reason, record.detail = rejected.reason.value, rejected.detail
        records.append(record)
    spool_path, records_path = spool_paths(spec.work_dir, spec.chunk_index)
    write_atomic(spool_path, bytes(spool))
    # The records file is the chunk's completion mark: written after its spool.
    write_atomic(records_path, json.dumps([dataclasses.asdict(r) for r in records]).encode())
    return records


class SpoolReader:
    """Reads encoded images back from chunk spools, keeping each spool file open once."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self._files: dict[int, BinaryIO] = {}

    def read(self, record: InputRecord, resolution: int) -> bytes:
        offset, length = record.spool[str(resolution)]
        spool = self._files.get(record.chunk_index)
        if spool is None:
            spool_path, _ = spool_paths(self.work_dir, record.chunk_index)
            spool = self._files[record.chunk_index] = open(spool_path, "rb")  # noqa: SIM115
        spool.seek(offset)
        return spool.read(length)

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc) -> None:
        for spool in self._files.values():
            spool.close()


@dataclass(frozen=True)
class ShardSpec:
    out: Path
    work_dir: Path
    resolutions: list[int]
    shard_index: int
    samples: list[InputRecord]  # in shard order


def warm_up() -> None:
    """Submitted once per pool worker at the start of a build: imports what processing needs
    while the flow lists the inputs."""
    import pipelines.dataset.synthetic  # noqa: F401


class _HashingWriter:
    """File wrapper that hashes and counts the bytes tarfile streams through it."""

    def __init__(self, file: BinaryIO):
        self.file, self.sha256, self.bytes = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    """Fixed owner, mode and mtime: the tar bytes are a function of the samples alone."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "", ""
    return info


def _write_shard(
    out: Path, spools: SpoolReader, resolution: int, shard_index: int, samples: list[InputRecord]
) -> ShardEntry:
    # stdlib tarfile, not wds.TarWriter: importing webdataset imports torch (1.7 s a worker);
    # members as TarWriter writes them (sorted extensions, <key>.<ext>), read by webdataset.
    with atomic_file(out / shard_name(resolution, shard_index)) as f:
        hashing = _HashingWriter(f)
        with tarfile.open(fileobj=hashing, mode="w|") as tar:
            for record in samples:
                members = {
                    "json": canonical_json(
                        {
                            "source_id": record.index,
                            "source_path": record.path,
                            "original_size": record.original_size,
                            "conversions": record.conversions,
                        }
                    ),
                    "png": spools.read(record, resolution),
                }
                for extension, data in members.items():
                    name = f"{sample_key(record.index)}.{extension}"
                    tar.addfile(_tar_member(name, len(data)), io.BytesIO(data))
    return ShardEntry(
        path=shard_name(resolution, shard_index),
        resolution=resolution,
        count=len(samples),
        bytes=hashing.bytes,
        sha256=hashing.sha256.hexdigest(),
    )


def write_shard_group(spec: ShardSpec) -> list[ShardEntry]:
    """One shard index at every resolution: the same samples, in the same order."""
    with SpoolReader(spec.work_dir) as spools:
        return [
            _write_shard(spec.out, spools, r, spec.shard_index, spec.samples)
            for r in spec.resolutions
        ]
