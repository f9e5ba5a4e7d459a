"""Shared helpers: machine description, CPU accounting, result files and the summary table."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        # No .pyc caching (e.g. PYTHONDONTWRITEBYTECODE=1) makes every spawn worker compile its
        # imports from source: a fixed cost per build worker.
        "python_dont_write_bytecode": sys.dont_write_bytecode,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict:
    import numpy
    import PIL
    import torch

    found = {"torch": torch.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__}
    for name in ("prefect", "webdataset"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def alternate(
    case: str, repeats: int, sides: dict[str, tuple[Callable[[int], dict], str]]
) -> tuple[list[dict], dict[str, float]]:
    """Each side (name: (measure round i, the figure it returns)) once per round, in turn, so
    load drift hits every side alike; returns the rounds and each side's median figure."""
    rounds = []
    for i in range(repeats):
        rounds.append({name: measure(i) for name, (measure, _) in sides.items()})
        said = ", ".join(
            f"{name} {rounds[-1][name][key]:.1f} {key}" for name, (_, key) in sides.items()
        )
        print(f"  {case} {i + 1}/{repeats}: {said}")
    medians = {
        name: statistics.median(r[name][key] for r in rounds) for name, (_, key) in sides.items()
    }
    return rounds, medians


def _spin(seconds: float) -> int:
    """Counts loop turns for `seconds` of wall time: pure CPU, no memory traffic."""
    turns, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        turns += 1
    return turns


def parallel_capacity(processes: int, seconds: float = 2.0) -> float:
    """How many cores `processes` busy processes get now, against one alone: the summed turns
    of a pure-CPU loop in `processes` spawned processes at once, over one process's. On an
    idle machine with that many cores, about `processes`; less when other jobs hold cores (or
    a virtual machine's vCPUs share physical ones)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        list(pool.map(_spin, [0.1] * processes))  # the workers started
        alone = pool.submit(_spin, seconds).result()
        together = sum(pool.map(_spin, [seconds] * processes))
    return together / alone


def parallel_speedup(processes: int, work: Callable[..., float], *args) -> float:
    """How much faster `processes` copies of `work` (which returns the seconds it took for a
    fixed amount of work) run in spawned processes at once than one alone: `processes` × its
    time alone / their mean time together. Below parallel_capacity where the copies slow each
    other through what a spin loop does not use (memory bandwidth, shared caches)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        list(pool.map(work, *[[a] * processes for a in args]))  # started, imports done
        alone = pool.submit(work, *args).result()
        together = list(pool.map(work, *[[a] * processes for a in args]))
    return processes * alone / statistics.mean(together)


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


def figure(value: float | None, baseline: float | None, target: float | None) -> dict:
    """A ratio with its target; meets_target is None when there is no target to meet."""
    r = ratio(value, baseline)
    return {
        "ratio": r,
        "target": target,
        "meets_target": None if target is None or r is None else bool(r >= target),
    }


@dataclass
class CpuSnapshot:
    """CPU seconds of this process, its reaped children (e.g. a closed pool's workers) and its
    live children (e.g. Prefect's API server subprocess), at one moment."""

    wall: float
    self_s: float
    reaped_children_s: float
    live_children: dict[int, float] = field(default_factory=dict)

    @classmethod
    def take(cls) -> CpuSnapshot:
        me = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        live: dict[int, float] = {}
        try:
            import psutil

            for child in psutil.Process().children(recursive=True):
                try:
                    t = child.cpu_times()
                    live[child.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except ImportError:
            pass
        return cls(
            wall=time.perf_counter(),
            self_s=me.ru_utime + me.ru_stime,
            reaped_children_s=children.ru_utime + children.ru_stime,
            live_children=live,
        )

    def since(self, earlier: CpuSnapshot) -> dict:
        live = sum(
            self.live_children[pid] - earlier.live_children[pid]
            for pid in self.live_children.keys() & earlier.live_children.keys()
        )
        wall = self.wall - earlier.wall
        used = {
            "main_process_s": self.self_s - earlier.self_s,
            "exited_children_s": self.reaped_children_s - earlier.reaped_children_s,
            "long_lived_children_s": live,
        }
        total = sum(used.values())
        return used | {"total_s": total, "wall_s": wall, "cores_busy": total / wall if wall else 0}


def write_result(results_dir: Path, name: str, payload: dict) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    document = {
        "benchmark": name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
    } | payload
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


@dataclass
class Row:
    name: str
    value: str  # the measured rate, formatted
    baseline: str  # what it is compared with, formatted
    ratio: float | None
    target: float | None
    meets: bool | None
    target_is_absolute: bool = False

    @classmethod
    def info(cls, name: str, value: str) -> Row:
        """A measured value with no baseline or target beside it."""
        return cls(name, value, "-", None, None, None)

    @classmethod
    def of_figure(cls, name: str, value: str, baseline: str, fig: dict) -> Row:
        """A table row for a ratio made by figure()."""
        return cls(name, value, baseline, fig["ratio"], fig["target"], fig["meets_target"])


def format_table(rows: list[Row]) -> str:
    header = ("figure", "measured", "baseline", "ratio", "target", "ok")
    cells = [header]
    for row in rows:
        if row.target is None:
            target = "-"
        else:
            target = f">= {row.target:g}" + ("/s" if row.target_is_absolute else "x")
        ok = "-" if row.meets is None else ("yes" if row.meets else "NO")
        cells.append(
            (
                row.name,
                row.value,
                row.baseline,
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                target,
                ok,
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(text.ljust(w) for text, w in zip(c, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
