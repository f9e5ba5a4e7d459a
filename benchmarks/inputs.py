"""Benchmark inputs made once per run: a folder of 1024² JPEG faces.

Kept import-light: its function runs in spawn pool workers.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

JPEG_SIZE = 1024
JPEG_QUALITY = 90
JPEG_SEED = 1  # not the synthetic benchmark's seed, so no face appears in both


def jpeg_name(index: int) -> str:
    return f"face-{index:05d}.jpg"


def write_jpeg(job: tuple[str, int]) -> int:
    from pipelines.dataset.synthetic import render_face

    folder, index = job
    path = Path(folder) / jpeg_name(index)
    render_face(JPEG_SEED, index, JPEG_SIZE).save(path, format="JPEG", quality=JPEG_QUALITY)
    return path.stat().st_size


def make_jpeg_folder(folder: Path, count: int, workers: int) -> int:
    """Render `count` faces at 1024² into folder as quality-90 JPEGs; returns total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), i) for i in range(count)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return sum(pool.map(write_jpeg, jobs, chunksize=8))
