"""Benchmark 2: ShardReader throughput against the same decoding without webdataset/DataLoader,
and against a plain folder of PNGs read through a map-style torch DataLoader."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

from benchmarks.common import Row, figure

BATCH_PER_WORKER = 32
LOADER_PROCESSES = 2
TARGET_VS_RAW = 0.8


def shard_pngs(root: Path, resolution: int) -> list[bytes]:
    """Every PNG member of the dataset's shards at one resolution, in shard order."""
    from trainers.data.storage import load_manifest

    pngs = []
    for shard in load_manifest(root).shards_at(resolution):
        with tarfile.open(root / shard.path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".png"):
                    file = tar.extractfile(member)
                    assert file is not None
                    pngs.append(file.read())
    return pngs


class PngFolder:
    """Map-style dataset over a folder of PNG files (module level so workers can unpickle it)."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from trainers.data.reader import decode_image

        return decode_image(self.files[index].read_bytes())


def time_shard_reader(root: Path, resolution: int, batches: int) -> dict:
    from trainers.data.reader import ShardReader

    reader = ShardReader(
        root,
        resolution,
        BATCH_PER_WORKER,
        loader_processes=LOADER_PROCESSES,
        batches_per_epoch=batches,
    )
    return _time_batches(reader, resolution) | {"skipped": reader.skipped}


def _time_batches(batches, resolution: int, convert=None) -> dict:
    """Drain an iterable of batches, converting each if asked; rate and time to first batch."""
    images, first = 0, None
    started = time.perf_counter()
    for batch in batches:
        if convert is not None:
            batch = convert(batch)
        images += batch.shape[0]
        if first is None:
            first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    assert batch.shape[1:] == (3, resolution, resolution), batch.shape
    return {
        "images": images,
        "seconds": seconds,
        "first_batch_s": first,
        "images_per_s": images / seconds,
    }


def time_raw_loop(pngs: list[bytes], resolution: int, batches: int) -> dict:
    """One process: PIL decode of in-memory PNG bytes -> uint8 tensor -> stacked float batch."""
    import torch

    from trainers.data.reader import decode_image, to_model_range

    started = time.perf_counter()
    k = 0
    for _ in range(batches):
        images = []
        for _ in range(BATCH_PER_WORKER):
            images.append(decode_image(pngs[k % len(pngs)]))
            k += 1
        batch = to_model_range(torch.stack(images))
    seconds = time.perf_counter() - started
    assert batch.shape[1:] == (3, resolution, resolution), batch.shape
    return {"images": k, "seconds": seconds, "images_per_s": k / seconds}


def time_folder_loader(files: list[Path], resolution: int, batches: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from trainers.data.reader import to_model_range

    dataset = PngFolder(files)
    # Sampling with replacement, like the shard reader's resampled stream: one epoch of
    # exactly `batches` batches however many files there are.
    sampler = RandomSampler(
        dataset,
        replacement=True,
        num_samples=batches * BATCH_PER_WORKER,
        generator=torch.Generator().manual_seed(0),
    )
    loader = DataLoader(
        dataset,
        batch_size=BATCH_PER_WORKER,
        sampler=sampler,
        num_workers=LOADER_PROCESSES,
        drop_last=True,
    )
    return _time_batches(loader, resolution, convert=to_model_range)


def run(root: Path, work_root: Path, batches_by_resolution: dict[int, int]) -> tuple[dict, list]:
    import torch  # noqa: F401  (imported before timing, and before any loader forks)

    results, rows = {}, []
    for resolution, batches in batches_by_resolution.items():
        started = time.perf_counter()
        pngs = shard_pngs(root, resolution)
        read_s = time.perf_counter() - started
        folder = work_root / f"png-folder-{resolution}"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, png in enumerate(pngs):
            files.append(folder / f"{i:06d}.png")
            files[-1].write_bytes(png)

        time_raw_loop(pngs, resolution, 2)  # lazy imports and first torch ops, untimed
        raw = time_raw_loop(pngs, resolution, batches)
        raw["read_shards_into_memory_s"] = read_s  # not part of the timed loop
        reader = time_shard_reader(root, resolution, batches)
        folder_loader = time_folder_loader(files, resolution, batches)

        vs_raw = figure(reader["images_per_s"], raw["images_per_s"], TARGET_VS_RAW)
        vs_folder = figure(reader["images_per_s"], folder_loader["images_per_s"], None)
        results[str(resolution)] = {
            "resolution": resolution,
            "distinct_images": len(pngs),
            "batches": batches,
            "shard_reader": reader,
            "raw_loop": raw,
            "folder_dataloader": folder_loader,
            "reader_vs_raw": vs_raw,
            "reader_vs_folder_dataloader": vs_folder,
        }
        measured = f"{reader['images_per_s']:.0f} img/s"
        for against, baseline, fig in (
            ("raw loop", raw, vs_raw),
            ("folder DataLoader", folder_loader, vs_folder),
        ):
            rows.append(
                Row.of_figure(
                    f"reader {resolution}² vs {against}",
                    measured,
                    f"{baseline['images_per_s']:.0f} img/s",
                    fig,
                )
            )
    payload = {
        "params": {
            "dataset": "synthetic build of benchmark 1a (max_resolution 256)",
            "process": "a fresh spawn-started interpreter (fork start method for the loaders): "
            "forked DataLoader workers of a process that ran a Prefect flow exit with status 1",
            "batch_per_worker": BATCH_PER_WORKER,
            "loader_processes": LOADER_PROCESSES,
            "batches": {str(r): b for r, b in batches_by_resolution.items()},
            "shard_reader": "ShardReader(root, res, batch_per_worker, loader_processes, "
            "batches_per_epoch=batches), CPU device; "
            "timed from iter() to the last batch, worker start included",
            "raw_loop": "one process; shard PNG bytes read into memory first (untimed); "
            "the reader's decode_image (PIL) -> stack -> float in [-1, 1], so the ratio is the "
            "pipeline's own cost",
            "folder_dataloader": "the same PNGs as files; map-style Dataset opening each with "
            "PIL; DataLoader(batch_size=batch_per_worker, num_workers=loader_processes, "
            "RandomSampler with replacement); "
            "float conversion in the main process; worker start included",
        },
        "results": results,
    }
    return payload, rows
