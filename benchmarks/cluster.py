"""Benchmark 1d: a build's tasks on a Ray cluster of 2 nodes on this machine (2 raylets of 1 CPU
each, as tests/cluster.py starts them) against the local process pool with the same total CPUs
(2 workers), in alternating rounds: `--source celeba` crops per second (1024², scored, cropped,
written), the scheduling overhead per task, and how busy the workers were.

Each cluster build is a new Ray job, as each `ganforge data build --executor ray` is: its first
task on each node waits for that node to start a worker process, which counts as overhead.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from benchmarks.common import Row, alternate, figure

CROP_RESOLUTION = 1024
NODES, CPUS_PER_NODE = 2, 1


def run(num_images: int, repeats: int, work_root: Path) -> tuple[dict, list[Row]]:
    from benchmarks.build import run_build
    from pipelines.dataset.config import BuildDatasetConfig, SourceKind
    from tests.cluster import CLUSTER_ENV, LocalCluster
    from tests.scenes import write_celeba_inputs

    inputs = work_root / "cluster-inputs"
    write_celeba_inputs(inputs, num_images, seed=13)

    def config(name: str) -> BuildDatasetConfig:
        return BuildDatasetConfig(
            source=SourceKind.celeba,
            input=inputs / "img_celeba",
            landmarks=inputs / "list_landmarks_celeba.txt",
            out=work_root / f"cluster-out-{name}",
            num_images=num_images,
            max_resolution=CROP_RESOLUTION,
        )

    started = time.perf_counter()
    cluster = LocalCluster(work_root / "ray", CPUS_PER_NODE).start(nodes=NODES)
    cluster_start_s = time.perf_counter() - started
    saved = {name: os.environ.get(name) for name in ("RAY_ADDRESS", *CLUSTER_ENV)}
    os.environ.update(CLUSTER_ENV | {"RAY_ADDRESS": cluster.address})  # read when Ray joins
    try:

        def pool(_: int) -> dict:
            build = run_build(config("pool"), NODES * CPUS_PER_NODE)
            return build | {"crops_per_s": build["accepted"] / build["wall_seconds"]}

        def ray_cluster(_: int) -> dict:
            build = run_build(config("ray"), 1, "ray", slots=NODES * CPUS_PER_NODE)
            return build | {"crops_per_s": build["accepted"] / build["wall_seconds"]}

        rounds, medians = alternate(
            "cluster",
            repeats,
            {"pool": (pool, "crops_per_s"), "ray_cluster": (ray_cluster, "crops_per_s")},
        )
    finally:
        cluster.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def median(side: str, key: str) -> float | None:
        found = [r[side]["tasks"][key] for r in rounds if r[side]["tasks"][key] is not None]
        return statistics.median(found) if found else None

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.0f} ms"

    gaps = {side: median(side, "dispatch_gap_s_median") for side in ("pool", "ray_cluster")}

    speed = figure(medians["ray_cluster"], medians["pool"], None)
    rows = [
        Row.of_figure(
            f"celeba on a {NODES}-node Ray cluster vs pool, {NODES * CPUS_PER_NODE} CPUs each",
            f"{medians['ray_cluster']:.2f} crops/s",
            f"{medians['pool']:.2f} crops/s",
            speed,
        ),
        Row("  scheduling overhead per task, Ray", ms(gaps["ray_cluster"]), ms(gaps["pool"]),
            None, None, None),
    ]  # fmt: skip
    payload = {
        "params": {
            "source": "celeba",
            "num_images": num_images,
            "max_resolution": CROP_RESOLUTION,
            "nodes": NODES,
            "cpus_per_node": CPUS_PER_NODE,
            "pool_workers": NODES * CPUS_PER_NODE,
            "repeats": repeats,
            "cluster_start_s": cluster_start_s,
            "method": "in-process flow calls on Prefect's test server, alternating the local "
            "pool and the cluster; crops/s = accepted / wall s of the flow call; scheduling "
            "overhead per task = a worker's gap between the end of one task and the start of "
            "the next while tasks wait (median)",
        },
        "ray_cluster_vs_pool": speed,
        "crops_per_s_median": medians,
        # a worker's gap between two tasks while tasks wait (benchmarks.build.task_figures)
        "dispatch_gap_s_median": gaps,
        "flow_call_to_first_task_s_median": {
            side: median(side, "flow_call_to_first_task_s") for side in ("pool", "ray_cluster")
        },
        "rounds": rounds,
    }
    return payload, rows
