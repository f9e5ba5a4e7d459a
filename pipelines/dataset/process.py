"""Worker side of a build: inputs → validated RGB → pyramid PNGs in a chunk spool, and
spools → shards.

Runs in plain worker processes, a local pool's or Ray's on any node (no Prefect, no torch
import): each chunk's encoded pyramids go to one spool file plus a JSON list of per-input
records, both written atomically under the dataset's WORK_DIR_NAME (a folder, or a prefix on
S3), so a killed build resumes from the chunks already written. Shards are assembled from spools
afterwards, once duplicates are known and the seeded order is fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image

from pipelines.dataset.config import BuildDatasetConfig, SourceKind
from pipelines.dataset.pyramid import box_pyramid, encode_png, square_master
from pipelines.dataset.sources import InputRef, read_input
from pipelines.dataset.validate import Reason, Rejected, decode, max_file_bytes, pixel_digest
from pipelines.dataset.writer import Writer
from trainers.data.format import ShardEntry, canonical_json, sample_key, shard_name

WORK_DIR_NAME = ".build"  # spools of a build in progress; removed when the build completes


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
    out: Writer  # where the dataset and its spools go


def spool_names(chunk_index: int) -> tuple[str, str]:
    """The chunk's spool and records file, relative to the dataset root."""
    stem = f"{WORK_DIR_NAME}/chunk-{chunk_index:06d}"
    return f"{stem}.bin", f"{stem}.json"


def _load(out: Writer, name: str) -> list[dict] | None:
    try:
        return json.loads(out.read(name))
    except FileNotFoundError:
        return None


def load_chunk_records(out: Writer, chunk_index: int) -> list[InputRecord] | None:
    """Records of a chunk finished by an earlier (possibly killed) build, or None."""
    done = _load(out, spool_names(chunk_index)[1])
    return None if done is None else [InputRecord(**r) for r in done]


def _read(config: BuildDatasetConfig, ref: InputRef) -> tuple[bytes, str]:
    """An input's raw bytes and their sha256, or Rejected: whatever reading it raises (a link
    loop, a damaged archive member, an encrypted one, an S3 object still unreadable after its
    retries) is this input's reject, not the build's."""
    assert config.input is not None
    try:
        raw = read_input(config.input, ref.path, max_file_bytes(config.max_pixels))
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


def score_name(chunk_index: int) -> str:
    return f"{WORK_DIR_NAME}/score-{chunk_index:06d}.json"


def load_chunk_scores(out: Writer, chunk_index: int) -> list[ScoreRecord] | None:
    """Scores of a chunk finished by an earlier (possibly killed) build, or None."""
    done = _load(out, score_name(chunk_index))
    return None if done is None else [ScoreRecord(**r) for r in done]


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
    spec.out.write(
        score_name(spec.chunk_index), json.dumps([dataclasses.asdict(r) for r in records]).encode()
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
    spool_name, records_name = spool_names(spec.chunk_index)
    spec.out.write(spool_name, bytes(spool))
    # The records file is the chunk's completion mark: written after its spool.
    spec.out.write(records_name, json.dumps([dataclasses.asdict(r) for r in records]).encode())
    return records


def read_pyramid(out: Writer, record: InputRecord) -> dict[int, bytes]:
    """{resolution: PNG} of an accepted input, from its chunk's spool: the levels lie one after
    another there, so one read (one ranged GET on S3) gets them all."""
    start = min(offset for offset, _ in record.spool.values())
    end = max(offset + length for offset, length in record.spool.values())
    data = out.read_range(spool_names(record.chunk_index)[0], start, end - start)
    return {
        int(resolution): data[offset - start : offset - start + length]
        for resolution, (offset, length) in record.spool.items()
    }


@dataclass(frozen=True)
class ShardSpec:
    out: Writer
    resolutions: list[int]
    shard_index: int
    samples: list[InputRecord]  # in shard order


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


def write_shard_group(spec: ShardSpec) -> list[ShardEntry]:
    """One shard index at every resolution: the same samples, in the same order. All its tar
    files are written at once, so each sample's pyramid is read from its spool once."""
    # stdlib tarfile, not wds.TarWriter: importing webdataset imports torch (1.7 s a worker);
    # members as TarWriter writes them (sorted extensions, <key>.<ext>), read by webdataset.
    hashing: dict[int, _HashingWriter] = {}
    with ExitStack() as files:
        tars = {}
        for resolution in spec.resolutions:
            name = shard_name(resolution, spec.shard_index)
            file = files.enter_context(spec.out.open_write(name))
            hashing[resolution] = _HashingWriter(file)
            # entered after its file, so closed (end blocks written) before the file is
            tars[resolution] = files.enter_context(
                tarfile.open(fileobj=hashing[resolution], mode="w|")
            )
        for record in spec.samples:
            metadata = canonical_json(
                {
                    "source_id": record.index,
                    "source_path": record.path,
                    "original_size": record.original_size,
                    "conversions": record.conversions,
                }
            )
            pyramid = read_pyramid(spec.out, record)
            for resolution, tar in tars.items():
                for extension, data in (("json", metadata), ("png", pyramid[resolution])):
                    name = f"{sample_key(record.index)}.{extension}"
                    tar.addfile(_tar_member(name, len(data)), io.BytesIO(data))
    return [
        ShardEntry(
            path=shard_name(resolution, spec.shard_index),
            resolution=resolution,
            count=len(spec.samples),
            bytes=hashing[resolution].bytes,
            sha256=hashing[resolution].sha256.hexdigest(),
        )
        for resolution in spec.resolutions
    ]
