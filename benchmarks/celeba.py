"""Benchmark: `--source celeba` (CelebA in-the-wild + landmarks -> CelebA-HQ-style crops) on
generated scenes (tests/scenes.py: synthetic faces pasted into larger photos).

(a) Throughput: 1024² crops per second per worker, the build (score pass, oriented crop with
    padding and blur, 2x supersampled quad transform, pyramid, shards) against a plain PIL loop
    doing the least of the same work: decode, one bilinear quad transform straight to 1024²,
    Lanczos + PNG-encode every level. Interleaved rounds (build.run_case).
(b) Memory: the peak RSS of the whole build (this process, Prefect's API server, the pool
    workers) while it lists and scores a small and a large number of listed photos, the large
    one CelebA's 202,599 by default (symlinks to a few hundred distinct scenes, so the input
    costs no disk); the ratio large / small says whether memory grows with the input.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks.common import Row, figure, parallel_capacity, parallel_speedup

CROP_RESOLUTION = 1024
MEMORY_TARGET_BYTES = 4 << 30  # the bound for the full 202,599-photo input
MEMORY_KEPT = 64  # faces the memory builds keep (cropped at 32²: the listing and scoring count)
LANDMARKS = "list_landmarks_celeba.txt"


def baseline_crop(items: Sequence[tuple[Path, object]], compress_level: int) -> float:
    """Decode each scene, one bilinear QUAD transform of the recipe's square to 1024², then
    the pyramid as benchmarks.build does it; returns seconds."""
    from PIL import Image

    from benchmarks.build import _encode_pyramid
    from pipelines.dataset.celeba import crop_geometry

    started = time.perf_counter()
    for path, landmarks in items:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            quad = crop_geometry(landmarks).quad() + 0.5
            master = image.convert("RGB").transform(
                (CROP_RESOLUTION, CROP_RESOLUTION),
                Image.Transform.QUAD,
                quad.flatten().tolist(),
                Image.Resampling.BILINEAR,
            )
        _encode_pyramid(master, compress_level)
    return time.perf_counter() - started


def cpu_per_image(items: Sequence[tuple[Path, object]], compress_level: int) -> dict:
    """Where a worker's CPU goes per crop, in ms of process time (so another job's load does
    not count): the build's steps as pipelines.dataset.process runs them on each scene (it
    reads and decodes a scene twice: once to score it, once to crop it), and the plain loop's
    whole work on the same scenes."""
    from pipelines.dataset import celeba
    from pipelines.dataset.pyramid import box_pyramid, encode_png, square_master
    from pipelines.dataset.validate import decode, pixel_digest

    spent = dict.fromkeys(("read_decode", "score", "crop", "pyramid", "png", "digest"), 0.0)

    def timed(step: str, work, *args):
        started = time.process_time()
        result = work(*args)
        spent[step] += time.process_time() - started
        return result

    def read_decode(path: Path):
        return decode(path.read_bytes(), 1, 1 << 40, draft=False).image

    for path, landmarks in items:
        timed("score", celeba.quality_score, timed("read_decode", read_decode, path), landmarks)
        image = timed("read_decode", read_decode, path)
        crop = timed("crop", celeba.oriented_crop, image, landmarks, CROP_RESOLUTION)
        timed("digest", pixel_digest, crop)
        levels = timed("pyramid", lambda c: box_pyramid(square_master(c, CROP_RESOLUTION)), crop)
        for pixels in levels.values():
            timed("png", encode_png, pixels, compress_level)
    started = time.process_time()
    baseline_crop(items, compress_level)
    plain = time.process_time() - started
    per_image = {step: 1e3 * seconds / len(items) for step, seconds in spent.items()}
    return {
        "build_ms": per_image,
        "build_total_ms": sum(per_image.values()),
        "plain_loop_ms": 1e3 * plain / len(items),
    }


def throughput_case(
    num_images: int, workers_list: Sequence[int], repeats: int, work_root: Path
) -> tuple[dict, list[Row]]:
    from benchmarks.build import run_case
    from pipelines.dataset.config import BuildDatasetConfig, SourceKind
    from tests.scenes import write_celeba_inputs

    inputs = work_root / "celeba-inputs"
    started = time.perf_counter()
    scenes = write_celeba_inputs(inputs, num_images, seed=11)
    generation_s = time.perf_counter() - started
    items = [(inputs / "img_celeba" / s.name, s.landmarks) for s in scenes]

    def make_config(out: Path) -> BuildDatasetConfig:
        return BuildDatasetConfig(
            source=SourceKind.celeba,
            input=inputs / "img_celeba",
            landmarks=inputs / LANDMARKS,
            out=out,
            num_images=num_images,
            max_resolution=CROP_RESOLUTION,
        )

    level = make_config(work_root).png_compress_level
    capacity_before = parallel_capacity(max(workers_list))
    payload, rows = run_case(
        "celeba",
        f"celeba {CROP_RESOLUTION}² crops",
        make_config,
        lambda chunk: baseline_crop(chunk, level),
        items,
        workers_list,
        repeats,
        work_root,
    )
    # what `max(workers_list)` busy processes could get of this machine, before and after the
    # rounds: the most those workers can add, whatever the build does
    capacity = statistics.mean([capacity_before, parallel_capacity(max(workers_list))])
    payload["parallel_capacity"] = {"processes": max(workers_list), "vs_one": capacity}
    rows.append(
        Row.info(
            f"  machine: {max(workers_list)} busy processes vs 1 (a pure CPU loop)",
            f"{capacity:.2f}x",
        )
    )
    cpu = cpu_per_image(items[: min(len(items), 16)], level)
    payload["cpu_per_image"] = cpu
    steps = ", ".join(f"{step} {ms:.0f}" for step, ms in cpu["build_ms"].items())
    rows.append(
        Row.info(
            "  CPU per crop in a worker vs the plain loop",
            f"{cpu['build_total_ms']:.0f} ms ({steps}) vs {cpu['plain_loop_ms']:.0f} ms",
        )
    )
    # the plain loop in as many processes as the most workers, at once: what two image
    # workers give when nothing but their own image work runs (memory and caches shared)
    crop_speedup = parallel_speedup(max(workers_list), baseline_crop, items[:8], level)
    payload["plain_loop_speedup"] = {"processes": max(workers_list), "vs_one": crop_speedup}
    rows.append(
        Row.info(
            f"  machine: {max(workers_list)} plain crop loops at once vs 1",
            f"{crop_speedup:.2f}x",
        )
    )
    for build in payload["builds"]:
        build["crops_per_s_per_worker"] = build["images_per_s_wall"] / build["workers"]
        # where a worker's time goes: in tasks, or waiting (the flow's start and end, the
        # scheduling of each task, the last chunks' tail)
        tasks = [run["tasks"] for run in build["runs"]]
        build["workers_busy_fraction"] = statistics.median(t["busy_fraction"] for t in tasks)
        # the CPU the flow (this process) and Prefect's API server took from the workers
        build["flow_and_api_cpu_share"] = statistics.median(
            (run["cpu"]["main_process_s"] + run["cpu"]["long_lived_children_s"])
            / run["cpu"]["total_s"]
            for run in build["runs"]
        )
        rows.append(
            Row.info(
                f"celeba crops per worker, {build['workers']} worker(s)",
                f"{build['crops_per_s_per_worker']:.2f} crops/s",
            )
        )
        rows.append(
            Row.info(
                f"  workers busy in tasks, {build['workers']} worker(s)",
                f"{build['workers_busy_fraction']:.0%} of the flow",
            )
        )
        rows.append(
            Row.info(
                f"  flow and Prefect API, {build['workers']} worker(s)",
                f"{build['flow_and_api_cpu_share']:.0%} of the CPU",
            )
        )
        # What these workers would give were they in tasks all the flow's time, from what the
        # machine gives that many image loops at once and the crop's own extra work; below
        # it: time outside tasks and the flow's and the API's CPU.
        cores = crop_speedup if build["workers"] == max(workers_list) else build["workers"]
        build["vs_baseline_bound"] = cores * cpu["plain_loop_ms"] / cpu["build_total_ms"]
        rows.append(
            Row.info(
                f"  most {build['workers']} worker(s) could give (all busy, machine, CPU per crop)",
                f"{build['vs_baseline_bound']:.2f}x",
            )
        )
    params = {
        "num_images": num_images,
        "scene_generation_s": generation_s,
        "max_resolution": CROP_RESOLUTION,
        "workers": list(workers_list),
        "build_repeats": repeats,
        "baseline_method": "read + decode the scene JPEG, PIL QUAD transform (bilinear) of the "
        "recipe's square straight to 1024², Lanczos to each smaller power of two, PNG-encode "
        "every level at png_compress_level; one process",
    }
    return {"params": params} | payload, rows


class PeakRss:
    """Samples the summed RSS of this process and all its descendants every `interval` s."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # exited since the listing
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def watching(self) -> Iterator[PeakRss]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def listed_photos(root: Path, distinct: Path, count: int) -> Path:
    """root/img_celeba/ with `count` photos (symlinks to the distinct scenes, in turn) and the
    landmark file that lists them all."""
    from pipelines.dataset.celeba import LANDMARK_NAMES, read_landmarks

    rows = read_landmarks(distinct / LANDMARKS)
    (root / "img_celeba").mkdir(parents=True)
    lines = [str(count), " ".join(f"{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy")]
    for i in range(count):
        source, landmarks = rows[i % len(rows)]
        name = f"{i + 1:06d}.jpg"
        os.symlink(distinct / "img_celeba" / source, root / "img_celeba" / name)
        lines.append(name + " " + " ".join(f"{v:g}" for v in landmarks.reshape(-1)))
    (root / LANDMARKS).write_text("\n".join(lines) + "\n")
    return root


def memory_case(
    listed: Sequence[int], distinct: int, workers: int, work_root: Path
) -> tuple[dict, list[Row]]:
    from benchmarks.build import run_build
    from pipelines.dataset.config import BuildDatasetConfig, SourceKind
    from tests.scenes import write_celeba_inputs

    scenes = work_root / "celeba-distinct"
    write_celeba_inputs(scenes, distinct, seed=12)
    runs = []
    for count in listed:
        root = listed_photos(work_root / f"celeba-listed-{count}", scenes, count)
        config = BuildDatasetConfig(
            source=SourceKind.celeba,
            input=root / "img_celeba",
            landmarks=root / LANDMARKS,
            out=work_root / f"celeba-memory-{count}",
            num_images=MEMORY_KEPT,
            max_resolution=32,
            max_reject_fraction=1.0,  # the kept faces are copies of a few scenes: duplicates
        )
        with PeakRss().watching() as rss:
            build = run_build(config, workers)
        runs.append({"listed_photos": count, "peak_rss_bytes": rss.peak, "build": build})
        print(
            f"  {count} listed photos: peak RSS {rss.peak / 2**30:.2f} GiB, "
            f"{build['wall_seconds']:.0f} s"
        )
    small, large = runs[0], runs[-1]
    growth = figure(small["peak_rss_bytes"], large["peak_rss_bytes"], None)
    bounded = large["peak_rss_bytes"] < MEMORY_TARGET_BYTES
    rows = [
        Row(
            f"celeba peak RSS, {large['listed_photos']} vs {small['listed_photos']} photos",
            f"{large['peak_rss_bytes'] / 2**30:.2f} GiB",
            f"{small['peak_rss_bytes'] / 2**30:.2f} GiB",
            1 / growth["ratio"] if growth["ratio"] else None,
            None,
            bounded,
        )
    ]
    payload = {
        "params": {
            "listed_photos": list(listed),
            "distinct_scenes": distinct,
            "kept": MEMORY_KEPT,
            "max_resolution": 32,
            "workers": workers,
            "method": "peak of the summed RSS of this process and every descendant (Prefect's "
            "API server, the spawn pool's workers), sampled every 0.2 s during the flow call",
        },
        "target_peak_rss_bytes": MEMORY_TARGET_BYTES,
        "meets_target": bounded,
        "growth_large_over_small": large["peak_rss_bytes"] / small["peak_rss_bytes"],
        "runs": runs,
    }
    return payload, rows
