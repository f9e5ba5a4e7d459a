"""Read a dataset's images: ShardReader streams one resolution as float NCHW batches in
[-1, 1] for DDP training; real_chunks reads them once, in manifest order, for evaluation.

Shards are split by rank, then by loader process (disjoint while there are enough of them),
and resampled with replacement inside each split, so the stream never runs dry: every rank
yields exactly `batches_per_epoch` batches per epoch whatever the shard count and world size,
and no rank waits at an epoch end for another (the hang of uneven DDP epochs).

A dataset is a folder or s3://BUCKET/PREFIX: S3 shards stream straight from boto3, no temp
files, no shell commands. An S3 shard is checked against the manifest before any of it is read,
since other writers can replace an object (storage.open_shard); one that differs is refused,
counted as a skip and not picked again, and never trained on. Local shards are not checked
(storage.LocalDataset.open_shard says why).
"""

from __future__ import annotations

import functools
import io
import logging
import multiprocessing
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from trainers.data import storage
from trainers.data.format import IMAGE_EXTENSION
from trainers.data.storage import (
    DatasetNotFoundError,
    dataset_at,
    load_manifest,
    rebuild_command,
)

log = logging.getLogger(__name__)
# For webdataset used directly on our S3 shards (wds.WebDataset("s3://...")); ShardReader opens
# them through storage.open_shard, which checks them first.
wds.gopen_schemes["s3"] = storage.gopen_s3


def assign_shards(urls: list[str], rank: int, world_size: int, process: int, processes: int):
    """This (rank, loader process)'s shards: disjoint slices while there are enough, shared
    (with different resampling seeds) when there are fewer shards than readers."""
    by_rank = urls[rank::world_size] if len(urls) >= world_size else urls
    return by_rank[process::processes] if len(by_rank) >= processes else by_rank


_BLOCK = 512
_END_BLOCK = bytes(_BLOCK)
_REGULAR_FILE = (b"0", b"\0")


def ustar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file of a plain ustar stream, as pipelines.dataset.process writes
    our shards.

    Own code because tarfile parses and checks every header field: 39 µs a sample at 64², a
    third of the PNG decode; this reads name, size and checksum only (2 µs). Raises ValueError
    on a bad checksum, a truncated member or an extended (pax/GNU) header."""
    while True:
        header = stream.read(_BLOCK)
        if header == _END_BLOCK or not header:
            return
        if len(header) < _BLOCK:
            raise ValueError("truncated tar header")
        stored = int(header[148:156].strip(b"\0 ") or b"0", 8)
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise ValueError("tar header checksum mismatch")
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        data = stream.read(size)
        if len(data) < size:
            raise ValueError(f"truncated tar member ({len(data)} of {size} bytes)")
        stream.read(-size % _BLOCK)  # padding to the next block
        kind = header[156:157]
        if kind not in _REGULAR_FILE:
            if kind in (b"x", b"g", b"L", b"K"):
                raise ValueError(f"tar member with an extended header ({kind!r}): not a shard")
            continue  # directories, links: no sample data
        name = header[:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        yield (f"{prefix}/{name}" if prefix else name), data


def tar_samples(
    urls: Iterable[str], open_shard: Callable[[str], BinaryIO], handler: Callable[[Exception], bool]
) -> Iterator[dict]:
    """webdataset's tarfile_to_samples with our opener and ustar_members as the tar parser:
    shard URLs -> file dicts (an empty dict ends each shard) -> samples grouped by key."""

    def files() -> Iterator[dict]:
        for url in urls:
            try:
                with open_shard(url) as stream:
                    for name, data in ustar_members(stream):
                        yield {"fname": name, "data": data, "__url__": url}
            except Exception as error:  # noqa: BLE001  (the handler decides: skip or raise)
                if not isinstance(error, storage.ShardMismatchError):  # already names the shard
                    error.args = (f"{url}: {error}",)
                if not handler(error):
                    raise
            yield {}  # end of shard: no sample spans two shards

    return wds.tariterators.group_by_keys(files(), handler=handler)


def decode_image(png: bytes) -> torch.Tensor:
    """PNG bytes -> uint8 [3, H, W]."""
    with Image.open(io.BytesIO(png), formats=(IMAGE_EXTENSION.upper(),)) as image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.array(image)  # a writable copy torch may own
    return torch.from_numpy(pixels).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]


def _is_decoded(image: torch.Tensor | None) -> bool:
    return image is not None  # a module-level function, so spawn-started loaders can pickle it


def to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 in [-1, 1]. On CPU through numpy, which is single-threaded:
    a torch op this size wakes the OpenMP pool, whose spinning threads take the cores the loader
    workers decode on (measured: 0.55x the reader's rate on 2 cores)."""
    if batch.device.type != "cpu":
        return batch.to(torch.float32).div_(127.5).sub_(1.0)
    pixels = batch.numpy().astype(np.float32)
    np.divide(pixels, 127.5, out=pixels)
    np.subtract(pixels, 1.0, out=pixels)
    return torch.from_numpy(pixels)


class ShardReader:
    """Iterable of float batches [batch_per_worker, 3, R, R] on `device` for one rank (one Ray
    Train worker); len() batches per epoch. `loader_processes` decode in parallel (torch
    DataLoader workers; 0: in this process)."""

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        batch_per_worker: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        loader_processes: int = 2,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        device: torch.device | str | None = None,
    ):
        manifest = load_manifest(root)
        shards = manifest.shards_at(resolution)
        if not shards:
            build = rebuild_command(root, manifest, max(resolution, *manifest.resolutions))
            raise DatasetNotFoundError(
                f"{root} has no shards at resolution {resolution} (it has "
                f"{manifest.resolutions}); build them with `{build}`"
            )
        self._dataset = dataset_at(root)
        self._shards = {self._dataset.url(s.path): s for s in shards}
        self.urls = list(self._shards)
        self._refused: set[str] = set()  # this process's shards that differ from the manifest
        self.resolution = resolution
        self.batch_per_worker = batch_per_worker
        self.rank, self.world_size = rank, world_size
        self.loader_processes = loader_processes
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        samples = sum(s.count for s in shards)
        # Default: one pass over the data in expectation, the same count on every rank.
        self.batches_per_epoch = batches_per_epoch or max(
            1, samples // (batch_per_worker * world_size)
        )
        self.epoch = 0
        # Loader processes ship uint8 (4x fewer bytes through shared memory, and to the device);
        # the float conversion happens where the batch is used.
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._skipped = multiprocessing.get_context().Value("q", 0)

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def skipped(self) -> int:
        """Corrupt samples (or unreadable shard parts) skipped so far, over all loader
        processes."""
        return self._skipped.value

    def _stream_seed(self) -> list[int]:
        info = torch.utils.data.get_worker_info()  # this loader process, None in the worker
        process = info.id if info else 0
        return [self.seed, self.epoch, self.rank, process]

    def _shard_urls(self) -> Iterator[str]:
        """Endless resampled shard URLs for this rank and loader process, less the refused."""
        info = torch.utils.data.get_worker_info()
        process, processes = (info.id, info.num_workers) if info else (0, 1)
        urls = assign_shards(self.urls, self.rank, self.world_size, process, processes)
        rng = random.Random(str(self._stream_seed()))
        while True:
            usable = [url for url in urls if url not in self._refused]
            if not usable:
                raise storage.ShardMismatchError(
                    ", ".join(urls), "every shard this reader was given differs from the manifest"
                )
            yield rng.choice(usable)

    def _open_shard(self, url: str) -> BinaryIO:
        return self._dataset.open_shard(self._shards[url])

    def _shuffle(self, samples: Iterator[dict]) -> Iterator[dict]:
        rng = random.Random(str(self._stream_seed() + ["shuffle"]))
        return wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, 100), rng=rng)(samples)

    def _skip(self, error: Exception) -> bool:
        """webdataset handler: count, warn and go on (never raise, never hang). A refused shard
        is not picked again by this process."""
        if isinstance(error, storage.ShardMismatchError):
            self._refused.add(error.url)
        with self._skipped.get_lock():
            self._skipped.value += 1
        log.warning("skipping corrupt data: %s", error)
        return True

    def _decode(self, sample: dict) -> torch.Tensor | None:
        try:
            image = decode_image(sample[IMAGE_EXTENSION])
        except (KeyError, OSError, ValueError) as error:
            self._skip(ValueError(f"{sample.get('__url__')}:{sample.get('__key__')}: {error}"))
            return None
        if image.shape[1:] != (self.resolution, self.resolution):
            self._skip(ValueError(f"{sample.get('__key__')}: size {tuple(image.shape[1:])}"))
            return None
        return image

    def _pipeline(self) -> wds.DataPipeline:
        return wds.DataPipeline(
            self._shard_urls,
            functools.partial(tar_samples, open_shard=self._open_shard, handler=self._skip),
            self._shuffle,
            wds.map(self._decode),
            wds.select(_is_decoded),
            wds.batched(self.batch_per_worker, collation_fn=torch.stack, partial=False),
        )

    def __iter__(self) -> Iterator[torch.Tensor]:
        loader = wds.WebLoader(
            self._pipeline(),
            batch_size=None,
            num_workers=self.loader_processes,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        ).with_epoch(self.batches_per_epoch)
        self.epoch += 1  # next epoch resamples differently
        for batch in loader:
            yield to_model_range(batch.to(self.device, non_blocking=True))


def real_chunks(
    data: str | Path,
    resolution: int,
    device: torch.device,
    *,
    chunk_size: int,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(chunk index, images [n, 3, R, R] in [-1, 1] on `device`) of the dataset's first `limit`
    images (all by default) in manifest order, chunk k holding images k·chunk_size ...; rank r
    decodes chunks r, r + W, ... only. Evaluation's reader: every image once, no shuffling."""
    dataset = dataset_at(data)
    shards = load_manifest(data).shards_at(resolution)
    total = sum(s.count for s in shards)
    limit = total if limit is None else min(limit, total)
    first = 0  # global index of the shard's first image
    for shard in shards:
        wanted = range(max(first, 0), min(first + shard.count, limit))
        chunks = {i // chunk_size for i in wanted if (i // chunk_size) % world_size == rank}
        if chunks:
            with dataset.open_shard(shard) as stream:
                encoded = [p for n, p in ustar_members(stream) if n.endswith(IMAGE_EXTENSION)]
            for chunk in sorted(chunks):  # a chunk across two shards comes in two parts
                start = max(chunk * chunk_size, wanted.start) - first
                stop = min((chunk + 1) * chunk_size, wanted.stop) - first
                if start < stop:  # only this rank's images are decoded
                    images = torch.stack([decode_image(p) for p in encoded[start:stop]])
                    yield chunk, to_model_range(images).to(device)
        first += shard.count
        if first >= limit:
            break
