"""Where a build's CPU work (score, process and write chunks) runs, behind one seam:
`submit(fn, spec)` gives a concurrent.futures.Future of fn(spec), whichever runs it.

- `local`: a spawn process pool of `workers` on this machine (the default on one machine);
- `ray`: one Ray task per call, on any node of the cluster in RAY_ADDRESS (local Ray without
  one). A task whose node is lost (its raylet gone) is run again elsewhere by Ray itself
  (TASK_RETRIES); every task writes its output whole or not at all, so a rerun writes the
  same bytes and no other task is redone.

Imported by the flow, never by the worker functions; it imports neither Prefect nor, before a
Ray build starts, Ray. Each call also reports where and when it ran (TaskRun), for the build's
summary and `make bench`.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

# Ray's retries of a task whose worker or node died (not of an error the task raised: those
# the flow's Prefect tasks retry). A lost node costs its in-flight tasks one retry each.
TASK_RETRIES = 3


class NotShared(Exception):
    """A local path the build's workers need is not on every node's filesystem."""


class ExecutorKind(StrEnum):
    local = "local"  # a process pool of --workers on this machine
    ray = "ray"  # Ray tasks on the cluster in RAY_ADDRESS (local Ray when it is unset)


def default_kind() -> ExecutorKind:
    """ray when RAY_ADDRESS names a cluster, local otherwise."""
    return ExecutorKind.ray if os.environ.get("RAY_ADDRESS") else ExecutorKind.local


@dataclass(frozen=True)
class TaskRun:
    """One executor call: where it ran and, in unix seconds, when."""

    name: str  # the function
    node: str  # a Ray node id, or this host's name for the local pool
    process: int  # the worker process's id on that node
    submitted: float  # the flow handed it over
    started: float  # a worker began it
    ended: float  # the worker finished it
    done: float  # the flow had its result

    @property
    def overhead(self) -> float:
        """Seconds spent getting the call to a worker and its result back."""
        return (self.done - self.submitted) - (self.ended - self.started)


def _timed(fn: Callable[[Any], Any], spec: Any) -> tuple[Any, str, int, float, float]:
    """Runs in the worker: fn(spec), the node and process it ran in, when it started and
    ended."""
    started = time.time()
    result = fn(spec)
    return result, _node(), os.getpid(), started, time.time()


def _node() -> str:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def _missing(paths: list[str]) -> list[str]:
    """Runs on one node: those of the paths it does not see."""
    return [path for path in paths if not os.path.exists(path)]


def _warm_up() -> None:
    """Imports what the worker functions need, while the flow is still starting."""
    import pipelines.dataset.process  # noqa: F401
    import pipelines.dataset.synthetic  # noqa: F401


class BuildExecutor:
    """The seam: submit(fn, spec) -> Future of fn(spec); every call's TaskRun in `runs`."""

    def __init__(self) -> None:
        self.runs: list[TaskRun] = []
        self._lock = threading.Lock()

    def _submit(self, fn: Callable[[Any], Any], spec: Any) -> Future:
        raise NotImplementedError

    def check_shared(self, paths: list[Path]) -> None:
        """Raises NotShared unless every worker sees these local paths (a build's input and
        output folders must be on a filesystem every node mounts at the same path)."""

    def submit(self, fn: Callable[[Any], Any], spec: Any) -> Future:
        submitted = time.time()
        inner = self._submit(fn, spec)
        outer: Future = Future()

        def finish(future: Future) -> None:
            try:
                result, node, process, started, ended = future.result()
            except BaseException as error:  # noqa: BLE001 - handed to the waiting task as is
                outer.set_exception(error)
                return
            run = TaskRun(fn.__name__, node, process, submitted, started, ended, time.time())
            with self._lock:
                self.runs.append(run)
            outer.set_result(result)

        inner.add_done_callback(finish)
        return outer

    def close(self) -> None:
        raise NotImplementedError


class LocalPool(BuildExecutor):
    """A spawn process pool (no fork of a threaded process). Its workers start at once, so
    their interpreter start and imports overlap whatever the caller does next."""

    def __init__(self, workers: int):
        super().__init__()
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        for _ in range(workers):
            self._pool.submit(_warm_up)

    def _submit(self, fn: Callable[[Any], Any], spec: Any) -> Future:
        return self._pool.submit(_timed, fn, spec)

    def close(self) -> None:
        # Without waiting for the workers to exit (0.2-0.8 s): the build's last writes go on
        # meanwhile, and the interpreter joins them when it exits.
        self._pool.shutdown(wait=False, cancel_futures=True)


class RayTasks(BuildExecutor):
    """Ray tasks of one CPU each on the cluster in RAY_ADDRESS (joined here unless this
    process already is), or on local Ray started here."""

    def __init__(self) -> None:
        super().__init__()
        import logging

        import ray

        self._joined = not ray.is_initialized()
        if self._joined:
            ray.init(
                address=os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
        self._remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_timed)

    def _submit(self, fn: Callable[[Any], Any], spec: Any) -> Future:
        return self._remote.remote(fn, spec).future()

    def check_shared(self, paths: list[Path]) -> None:
        """One look from each node that can run a task (a node added later by the autoscaler is
        assumed to mount what the others do)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        look = ray.remote(num_cpus=0)(_missing)  # not queued behind the build's own tasks
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
        wanted = [str(path) for path in paths]
        looks = [
            look.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(wanted)
            for node in nodes
        ]
        unseen = {node: found for node, found in zip(nodes, ray.get(looks), strict=True) if found}
        if unseen:
            node, missing = next(iter(unseen.items()))
            raise NotShared(
                f"{', '.join(missing)} is not on the filesystem of {len(unseen)} of the "
                f"cluster's {len(nodes)} nodes (e.g. node {node[:12]}…): give the input and "
                "--out as s3://BUCKET/PREFIX, or as paths every node mounts"
            )

    def close(self) -> None:
        import ray

        if self._joined:
            ray.shutdown()


def start(kind: ExecutorKind, workers: int) -> BuildExecutor:
    return LocalPool(workers) if kind is ExecutorKind.local else RayTasks()


_started_ahead: dict[tuple[ExecutorKind, int], BuildExecutor] = {}


@contextmanager
def started_ahead(kind: ExecutorKind, workers: int) -> Iterator[None]:
    """Starts the executor that a build in the block takes (`running`), so that its workers
    start while the caller waits for something else (the command: its Prefect API); closes it
    if no build took it."""
    _started_ahead[(kind, workers)] = start(kind, workers)
    try:
        yield
    finally:
        left = _started_ahead.pop((kind, workers), None)
        if left is not None:
            left.close()


@contextmanager
def running(kind: ExecutorKind, workers: int) -> Iterator[BuildExecutor]:
    """The executor started ahead for (kind, workers), or a new one; closed at the end."""
    taken = _started_ahead.pop((kind, workers), None) or start(kind, workers)
    try:
        yield taken
    finally:
        taken.close()
