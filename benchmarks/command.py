"""Benchmark 1c: the whole `ganforge data build` command, as a user runs it, against a plain
single-process script, for a small and a large folder of 1024² JPEGs (96 and 2,000 by default).

Every side is timed from process start to exit (interpreter start, imports and all), in
alternating rounds. The command runs three times a round, once per way it finds its Prefect
API without being told: with no PREFECT_API_URL and GANFORGE_PREFECT_SERVER_KEEP_SECONDS=0 (a
temporary local server, started and stopped by the command, on the database in PREFECT_HOME:
an untimed first command migrates that database on a machine's first run); with no
PREFECT_API_URL and the default keeping (the local server an untimed first command started
and left for the next: the second build of a session onwards); and with a Prefect server
configured (the user's PREFECT_API_URL, else a `prefect server start` this benchmark runs).
Its fixed cost is the time from its start to its first task beginning work in a worker, which
it prints; the budget is FIXED_COST_BUDGET_S.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Row, figure
from pipelines.prefect_server import KEEP_ENV as KEEP

RESOLUTION = 256
FIXED_COST_BUDGET_S = 3.0  # issue 20: command start to the first image processed
FIRST_TASK = re.compile(r"the first began ([\d.]+) s after the command started")

# The baseline: what a user writes to do the image work of such a build and nothing else —
# decode, resize, write one PNG per input at one resolution.
PLAIN_LOOP = """
import sys
from pathlib import Path
from PIL import Image

inputs, out, count, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
for path in sorted(inputs.iterdir())[:count]:
    with Image.open(path) as image:
        image.convert("RGB").resize((size, size), Image.LANCZOS).save(out / f"{path.stem}.png")
"""


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def run(counts: list[int], repeats: int, work_root: Path) -> tuple[dict, list[Row]]:
    from tests.services import prefect_server

    configured = os.environ.get("PREFECT_API_URL")
    with contextlib.nullcontext(configured) if configured else prefect_server(work_root) as api:
        return _run(counts, repeats, work_root, api)


def _run(counts: list[int], repeats: int, work_root: Path, api: str) -> tuple[dict, list[Row]]:
    from benchmarks.inputs import make_jpeg_folder
    from pipelines.prefect_server import prefect_home
    from pipelines.prefect_server import stop as stop_kept_server

    folder = work_root / "command-inputs"
    started = time.perf_counter()
    make_jpeg_folder(folder, max(counts), workers=os.cpu_count() or 1)
    generation_s = time.perf_counter() - started
    local = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", KEEP)}
    modes = {
        "temporary_server": local | {KEEP: "0"},
        "kept_server": local,
        "configured_server": local | {"PREFECT_API_URL": api},
    }
    try:
        return _rounds(counts, repeats, work_root, folder, generation_s, modes)
    finally:  # the kept server goes with the benchmark, not ten idle minutes later
        stop_kept_server(prefect_home())


def _rounds(counts, repeats, work_root, folder, generation_s, modes) -> tuple[dict, list[Row]]:
    ganforge = str(Path(sys.executable).parent / "ganforge")

    def command(count: int, name: str, mode: str) -> dict:
        argv = [ganforge, "data", "build", "--source", "folder", "--input", str(folder),
                "--num-images", str(count), "--max-resolution", str(RESOLUTION),
                "--out", str(work_root / name)]  # fmt: skip
        seconds, stdout = _timed(argv, modes[mode])
        fixed = FIRST_TASK.search(stdout)
        return {"command_s": seconds, "fixed_cost_s": float(fixed[1]) if fixed else None}

    def loop(count: int, name: str) -> float:
        argv = [sys.executable, "-c", PLAIN_LOOP, str(folder), str(work_root / name),
                str(count), str(RESOLUTION)]  # fmt: skip
        return _timed(argv, modes["temporary_server"])[0]

    for mode in modes:  # Prefect's database, the OS's caches, the kept server's start
        command(8, f"warmup-{mode}", mode)
    cases, rows = [], []
    for count in counts:
        rounds = []
        for index in range(repeats):
            found = {"load_average_1min": os.getloadavg()[0]}
            found["plain_loop_s"] = loop(count, f"loop-{count}-{index}")
            for mode in modes:
                found[mode] = command(count, f"{mode}-{count}-{index}", mode)
            rounds.append(found)
            said = [f"plain loop {found['plain_loop_s']:.1f} s"] + [
                f"{mode} {found[mode]['command_s']:.1f} s (first task at "
                f"{found[mode]['fixed_cost_s']} s)"
                for mode in modes
            ]
            print(f"  {count} JPEGs {index + 1}/{repeats}: {', '.join(said)}, "
                  f"load {found['load_average_1min']:.1f}")  # fmt: skip
        loop_s = statistics.median(r["plain_loop_s"] for r in rounds)
        case = {"images": count, "plain_loop_s_median": loop_s, "rounds": rounds}
        for mode in modes:
            command_s = statistics.median(r[mode]["command_s"] for r in rounds)
            fixed_s = statistics.median(r[mode]["fixed_cost_s"] for r in rounds)
            case[mode] = {
                "command_s_median": command_s,
                "fixed_cost_s_median": fixed_s,
                # above 1: the command is faster than the plain loop; within the budget
                "command_vs_plain_loop": figure(loop_s, command_s, 1.0),
                "fixed_cost_vs_budget": figure(FIXED_COST_BUDGET_S, fixed_s, 1.0),
            }
            name = f"data build, {count} JPEGs, {mode.replace('_', ' ')}"
            rows.append(
                Row.of_figure(
                    name,
                    f"{command_s:.1f} s",
                    f"{loop_s:.1f} s plain loop",
                    case[mode]["command_vs_plain_loop"],
                )
            )
            rows.append(Row.of_figure("  fixed cost (start to first task)", f"{fixed_s:.2f} s",
                                      f"{FIXED_COST_BUDGET_S:g} s budget",
                                      case[mode]["fixed_cost_vs_budget"]))  # fmt: skip
        cases.append(case)
    payload = {
        "params": {
            "input_size": 1024,
            "max_resolution": RESOLUTION,
            "counts": list(counts),
            "repeats": repeats,
            "input_generation_s": generation_s,
            "configured_server": "the user's PREFECT_API_URL"
            if os.environ.get("PREFECT_API_URL")
            else "`prefect server start` run by this benchmark",
            "command": "ganforge data build --source folder --input DIR --num-images N "
            f"--max-resolution {RESOLUTION} --out OUT (all cores, the default executor)",
            "baseline_method": "python -c PLAIN_LOOP: PIL open, RGB, Lanczos to "
            f"{RESOLUTION}², one PNG per input; one process",
            "ratio_definition": "plain loop wall s / command wall s (process start to exit, "
            "median of the rounds); fixed cost: the command's own report of its first task's "
            "start, from process start",
        },
        "cases": cases,
    }
    return payload, rows
