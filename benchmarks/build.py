"""Benchmark 1: dataset build throughput against a plain PIL loop doing the same image work.

Cases: (a) synthetic faces -> 256² pyramid, (b) a folder of 1024² JPEGs -> pyramid up to 256².
Each case interleaves slices of its baseline loop with rounds of builds (1 and 2 workers), so
machine-load drift during the case hits both sides alike.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import CpuSnapshot, Row, figure

MAX_RESOLUTION = 256
TARGETS = {1: 0.8, 2: 1.5}  # build rate / baseline rate, by worker count
SYNTHETIC_SEED = 0

PREFECT_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def set_prefect_env() -> None:
    """Must run before prefect is first imported; a value the user already set wins."""
    for key, value in PREFECT_ENV.items():
        os.environ.setdefault(key, value)


def pyramid_sizes(max_resolution: int) -> list[int]:
    return [2**p for p in range(2, max_resolution.bit_length()) if 2**p <= max_resolution]


# --- baselines: plain PIL, no framework, one process ---------------------------------------


def _encode_pyramid(master, compress_level: int) -> int:
    """Resize master (max_resolution², RGB) to every smaller power of two with PIL's Lanczos and
    PNG-encode every level, master included; returns the encoded bytes."""
    from PIL import Image

    total = 0
    for size in pyramid_sizes(master.size[0]):
        level = master if size == master.size[0] else master.resize((size, size), Image.LANCZOS)
        buffer = io.BytesIO()
        level.save(buffer, format="PNG", compress_level=compress_level)
        total += buffer.tell()
    return total


def baseline_synthetic(indices: Sequence[int], compress_level: int) -> float:
    """render_face at 256², then resize + PNG-encode; returns seconds."""
    from pipelines.dataset.synthetic import render_face

    started = time.perf_counter()
    for i in indices:
        _encode_pyramid(render_face(SYNTHETIC_SEED, i, MAX_RESOLUTION), compress_level)
    return time.perf_counter() - started


def baseline_jpeg(paths: Sequence[Path], compress_level: int) -> float:
    """Read each JPEG, full decode (no draft scaling), Lanczos to 256², then every smaller level
    from that 256² master, PNG-encode each; returns seconds."""
    from PIL import Image

    started = time.perf_counter()
    for path in paths:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
            master = image.convert("RGB").resize((MAX_RESOLUTION, MAX_RESOLUTION), Image.LANCZOS)
        _encode_pyramid(master, compress_level)
    return time.perf_counter() - started


# --- the flow -----------------------------------------------------------------------------


@contextmanager
def orchestrator(warmup_root: Path) -> Iterator[dict]:
    """Prefect's test harness (one API server subprocess on a temp SQLite database) plus one tiny
    warm-up build; yields how long those took, which is paid once per process."""
    set_prefect_env()
    started = time.perf_counter()
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.dataset.config import BuildDatasetConfig
    from pipelines.dataset.flow import build_dataset

    imported = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=180):
        server_up = time.perf_counter()
        config = BuildDatasetConfig(
            out=warmup_root / "warmup", num_images=8, max_resolution=8, seed=SYNTHETIC_SEED
        )
        build_dataset(config, workers=1)
        warm = time.perf_counter()
        shutil.rmtree(warmup_root / "warmup", ignore_errors=True)
        yield {
            "orchestrator_start_s": warm - started,
            "import_s": imported - started,
            "api_server_start_s": server_up - imported,
            "warmup_build_s": warm - server_up,
            "warmup_build": {"num_images": 8, "max_resolution": 8, "workers": 1},
        }


def task_figures(runs: list, called_at: float, in_flow_seconds: float, slots: int) -> dict:
    """Where the workers' time went in one build: busy in tasks (by function), against the
    in-flow wall time x the slots that could run tasks; each task's overhead (from the flow's
    submit to its result, less its time in the worker: the executor's queue, transfer, a Ray
    worker's start) and dispatch gap (below); and how long the flow call took to get its first
    task going."""
    busy = sum(run.ended - run.started for run in runs)
    by_function = {}
    for name in sorted({run.name for run in runs}):
        mine = [run for run in runs if run.name == name]
        by_function[name] = {
            "tasks": len(mine),
            "busy_s": sum(run.ended - run.started for run in mine),
            "span_s": max(run.ended for run in mine) - min(run.started for run in mine),
        }
    overheads = [run.overhead for run in runs]
    # a worker's gaps between one task's end and its next one's start, while tasks wait: the
    # executor's own cost of handing a task over (its queue's wait does not count)
    gaps = []
    for worker in {(run.node, run.process) for run in runs}:
        mine = sorted((run for run in runs if (run.node, run.process) == worker),
                      key=lambda run: run.started)  # fmt: skip
        pairs = zip(mine, mine[1:], strict=False)
        gaps += [b.started - a.ended for a, b in pairs if b.submitted < a.ended]
    return {
        "tasks": len(runs),
        "slots": slots,
        "busy_s": busy,
        "busy_fraction": busy / (in_flow_seconds * slots) if runs else None,
        "overhead_per_task_s_median": statistics.median(overheads) if runs else None,
        "overhead_per_task_s_mean": statistics.fmean(overheads) if runs else None,
        "dispatch_gap_s_median": statistics.median(gaps) if gaps else None,
        "flow_call_to_first_task_s": min(r.started for r in runs) - called_at if runs else None,
        "by_function": by_function,
        "tasks_per_node": dict(Counter(run.node for run in runs)),
    }


def run_build(config, workers: int, executor: str = "local", slots: int | None = None) -> dict:
    from pipelines.dataset.flow import build_dataset, local_run_settings

    before = CpuSnapshot.take()
    called_at, started = time.time(), time.perf_counter()
    with local_run_settings():  # as `ganforge data build` runs it
        result = build_dataset(config, workers=workers, executor=executor)
    wall = time.perf_counter() - started
    for worker in multiprocessing.active_children():  # the pool's, still exiting: reaped, so
        worker.join()  # that their CPU counts in the snapshot
    cpu = CpuSnapshot.take().since(before)
    accepted = result.report["accepted"]
    return {
        "executor": executor,
        "workers": workers,
        "accepted": accepted,
        "rejected": result.report["rejected"],
        "shards": len(result.manifest.shards),
        "total_bytes": result.manifest.total_bytes,
        "in_flow_seconds": result.seconds,
        "wall_seconds": wall,
        "images_per_s_in_flow": accepted / result.seconds,
        "images_per_s_wall": accepted / wall,
        "flow_call_overhead_s": wall - result.seconds,
        # exited children = the spawn pool's workers; long-lived = Prefect's API server
        "cpu": cpu,
        "tasks": task_figures(result.runs, called_at, result.seconds, slots or workers),
    }


def run_case(
    name: str,
    label: str,
    make_config: Callable[[Path], object],
    baseline: Callable[[Sequence], float],
    items: Sequence,
    workers_list: Sequence[int],
    repeats: int,
    work_root: Path,
    keep_out: Path | None = None,
) -> tuple[dict, list[Row]]:
    """Baseline slices interleaved with the build rounds (slice, builds, slice, builds, slice),
    so drift in machine load hits both sides alike. The ratio uses the median wall time of
    each worker count's builds against the baseline's overall rate."""
    slices = [
        items[i * len(items) // (repeats + 1) : (i + 1) * len(items) // (repeats + 1)]
        for i in range(repeats + 1)
    ]
    baseline(items[:1])  # lazy imports and plugin registration, untimed
    baseline_runs = [{"images": len(slices[0]), "seconds": baseline(slices[0])}]
    runs: dict[int, list[dict]] = {w: [] for w in workers_list}
    for round_index in range(repeats):
        for workers in workers_list:
            out = work_root / f"{name}-w{workers}"
            runs[workers].append(run_build(make_config(out), workers))
            last = round_index == repeats - 1 and workers == workers_list[-1]
            if keep_out is not None and last:
                out.rename(keep_out)  # the reader benchmark reads it
            else:
                shutil.rmtree(out, ignore_errors=True)
        chunk = slices[round_index + 1]
        baseline_runs.append({"images": len(chunk), "seconds": baseline(chunk)})
    for run in baseline_runs:
        run["images_per_s"] = run["images"] / run["seconds"] if run["seconds"] else None
    baseline_rate = len(items) / sum(r["seconds"] for r in baseline_runs)

    builds, rows = [], []
    for workers, worker_runs in runs.items():
        accepted = worker_runs[0]["accepted"]
        wall = statistics.median(r["wall_seconds"] for r in worker_runs)
        in_flow = statistics.median(r["in_flow_seconds"] for r in worker_runs)
        target = TARGETS.get(workers)
        build = {
            "workers": workers,
            "accepted": accepted,
            "wall_seconds_median": wall,
            "in_flow_seconds_median": in_flow,
            "images_per_s_wall": accepted / wall,
            "images_per_s_in_flow": accepted / in_flow,
            "vs_baseline": figure(accepted / wall, baseline_rate, target),
            "vs_baseline_in_flow": figure(accepted / in_flow, baseline_rate, None),
            "runs": worker_runs,
        }
        builds.append(build)
        rows.append(
            Row.of_figure(
                f"build {label}, {workers} worker{'s' * (workers > 1)}",
                f"{build['images_per_s_wall']:.1f} img/s",
                f"{baseline_rate:.1f} img/s",
                build["vs_baseline"],
            )
        )
    payload = {
        "baseline": {
            "images": len(items),
            "seconds": sum(r["seconds"] for r in baseline_runs),
            "images_per_s": baseline_rate,
            "slices": baseline_runs,  # in run order, interleaved with the build rounds
        },
        "builds": builds,
    }
    return payload, rows


def synthetic_case(
    num_images: int,
    workers_list: Sequence[int],
    repeats: int,
    work_root: Path,
    keep_out: Path | None,
) -> tuple[dict, list[Row]]:
    from pipelines.dataset.config import BuildDatasetConfig, SourceKind

    def make_config(out: Path) -> BuildDatasetConfig:
        return BuildDatasetConfig(
            source=SourceKind.synthetic,
            out=out,
            num_images=num_images,
            max_resolution=MAX_RESOLUTION,
            seed=SYNTHETIC_SEED,
        )

    level = make_config(work_root).png_compress_level
    payload, rows = run_case(
        "synthetic",
        f"synthetic->{MAX_RESOLUTION}²",
        make_config,
        lambda indices: baseline_synthetic(indices, level),
        list(range(num_images)),
        workers_list,
        repeats,
        work_root,
        keep_out,
    )
    params = {
        "source": "synthetic",
        "num_images": num_images,
        "max_resolution": MAX_RESOLUTION,
        "resolutions": pyramid_sizes(MAX_RESOLUTION),
        "seed": SYNTHETIC_SEED,
        "png_compress_level": level,
        "workers": list(workers_list),
        "build_repeats": repeats,
        "baseline_method": "render_face(seed, i, 256); PIL Lanczos resize of it to each smaller "
        "power of two; PNG-encode all levels at png_compress_level; one process",
    }
    return {"params": params} | payload, rows


def jpeg_case(
    num_images: int, workers_list: Sequence[int], repeats: int, work_root: Path
) -> tuple[dict, list[Row]]:
    from benchmarks.inputs import JPEG_QUALITY, JPEG_SIZE, make_jpeg_folder
    from pipelines.dataset.config import BuildDatasetConfig, SourceKind

    folder = work_root / "jpeg-inputs"
    started = time.perf_counter()
    input_bytes = make_jpeg_folder(folder, num_images, workers=max(workers_list))
    generation_s = time.perf_counter() - started
    paths = sorted(folder.iterdir())

    def make_config(out: Path) -> BuildDatasetConfig:
        return BuildDatasetConfig(
            source=SourceKind.folder,
            input=folder,
            out=out,
            num_images=None,
            max_resolution=MAX_RESOLUTION,
            seed=SYNTHETIC_SEED,
        )

    level = make_config(work_root).png_compress_level
    payload, rows = run_case(
        "jpeg",
        f"jpeg {JPEG_SIZE}²->{MAX_RESOLUTION}²",
        make_config,
        lambda items: baseline_jpeg(items, level),
        paths,
        workers_list,
        repeats,
        work_root,
    )
    params = {
        "source": "folder",
        "num_images": num_images,
        "input_size": JPEG_SIZE,
        "input_jpeg_quality": JPEG_QUALITY,
        "input_bytes": input_bytes,
        "input_generation_s": generation_s,
        "max_resolution": MAX_RESOLUTION,
        "resolutions": pyramid_sizes(MAX_RESOLUTION),
        "png_compress_level": level,
        "workers": list(workers_list),
        "build_repeats": repeats,
        "baseline_method": "read file; PIL open + full decode (no draft); Lanczos to 256²; "
        "PIL Lanczos of that to each smaller power of two; PNG-encode all levels at "
        "png_compress_level; one process",
    }
    return {"params": params} | payload, rows
