"""What a usage error costs: seconds from starting `ganforge` to its exit 2, per command, the
median over the mistakes of tests/mistakes.py made with that command (each `repeats` times),
against a bare start of the same interpreter. The budget is 2 s, interpreter start included."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import Row
from tests.mistakes import MISTAKES, applies, make_scene, run

BUDGET_S = 2.0


def _python_start_s(repeats: int) -> float:
    """Median seconds of `python -c pass` in this environment (site and the .pth files of its
    packages included, as for the `ganforge` script)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_all(repeats: int) -> tuple[dict, list[Row]]:
    usage_errors = [m for m in MISTAKES if m.status == 2 and applies(m)]
    seconds: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="ganforge-mistakes-") as folder:
        scene = Path(folder)
        make_scene(scene)
        for _ in range(repeats):  # rounds over every mistake: load drift hits all alike
            for mistake in usage_errors:
                outcome = run(mistake, scene)
                assert outcome.status == 2, (mistake.name, outcome.lines)
                seconds[mistake.command].append(outcome.seconds)
    python_start = _python_start_s(max(3, repeats))
    commands = {
        command: {
            "median_s": statistics.median(times),
            "max_s": max(times),
            "runs": len(times),
            "meets_target": statistics.median(times) <= BUDGET_S,
        }
        for command, times in sorted(seconds.items())
    }
    payload = {
        "budget_s": BUDGET_S,
        "python_start_s": python_start,
        "definition": "seconds from starting `ganforge` to its exit 2, interpreter start "
        "included; median over the usage errors of tests/mistakes.py made with the command",
        "commands": commands,
    }
    rows = [
        Row(
            f"usage error: {command} (<= {BUDGET_S:g} s)",
            f"{figures['median_s']:.2f} s",
            f"{python_start:.2f} s python",
            figures["median_s"] / python_start,
            None,
            figures["meets_target"],
        )
        for command, figures in commands.items()
    ]
    return payload, rows
