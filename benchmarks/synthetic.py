"""Benchmark 3: render_face at 256² on one core (an absolute rate, as the issue states it)."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

from benchmarks.common import Row

TARGET_IMAGES_PER_S = 50.0
SIZE = 256
SEED = 0


@contextmanager
def one_core():
    """Pin the calling thread to one CPU (Linux); restore the previous mask afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    previous = os.sched_getaffinity(0)
    cpu = min(previous)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, previous)


def run(indices: int, repeats: int) -> tuple[dict, list[Row]]:
    from pipelines.dataset.synthetic import render_face

    for i in range(3):  # warm caches and lazy imports
        render_face(SEED, i, SIZE)
    rounds = []
    with one_core() as cpu:
        for _ in range(repeats):
            started = time.perf_counter()
            for i in range(indices):
                render_face(SEED, i, SIZE)
            seconds = time.perf_counter() - started
            rounds.append({"seconds": seconds, "images_per_s": indices / seconds})
    median = statistics.median(r["images_per_s"] for r in rounds)
    meets = median >= TARGET_IMAGES_PER_S
    payload = {
        "params": {
            "size": SIZE,
            "seed": SEED,
            "indices": indices,
            "repeats": repeats,
            "pinned_cpu": cpu,
            "note": "one process, calling thread pinned to one CPU; rate is the median round",
        },
        "results": {
            "rounds": rounds,
            "images_per_s": median,
            "ms_per_image": 1000 / median,
            "target_images_per_s": TARGET_IMAGES_PER_S,
            "meets_target": meets,
            "ratio": None,  # an absolute rate: the issue states this target as images/s
        },
    }
    row = Row(
        name=f"synthetic render {SIZE}² (1 core)",
        value=f"{median:.1f} img/s",
        baseline="(absolute)",
        ratio=None,
        target=TARGET_IMAGES_PER_S,
        meets=meets,
        target_is_absolute=True,
    )
    return payload, [row]
