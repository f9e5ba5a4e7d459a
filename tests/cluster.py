"""A Ray cluster of several nodes on this machine, as on separate hosts: `ray start --head`
plus one `ray start --address` per further node, each its own raylet with its own CPUs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
# A loopback test cluster: no auth token, so drivers started by tests connect as they are.
# A killed raylet is declared dead after 3 missed 1 s health checks (Ray's default: 5 x 3 s).
CLUSTER_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raylet_pids() -> set[int]:
    """Every raylet process on this machine (one per node)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "raylet":
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: state, parent pid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


def kill(pid: int) -> None:
    """SIGKILL, then wait (up to 30 s) until the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def parent_pid(pid: int) -> int:
    return int(_stat(pid)[1])


def _parents() -> dict[int, int]:
    """Every process on this machine -> its parent pid."""
    parents = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit():
                parents[int(proc.name)] = parent_pid(int(proc.name))
    return parents


def with_descendants(roots: set[int], parents: dict[int, int]) -> set[int]:
    found = set(roots)
    while True:  # add children until none is left out
        children = {pid for pid, parent in parents.items() if parent in found} - found
        if not children:
            return found
        found |= children


def command_line(pid: int) -> bytes:
    """/proc/<pid>/cmdline (Ray's process titles are in it); b"" for a process gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def processes_titled(title: bytes, roots: set[int]) -> list[int]:
    """Pids, in order, of the processes whose command line holds `title` (Ray's titles, e.g.
    b"RayTrainWorker") and that run under one of `roots` (a `ganforge train` process, a
    cluster's raylets): never another run's on the machine, nor the data-loader processes a
    titled process forked (they inherit its title)."""
    parents = _parents()
    titled = {pid for pid in with_descendants(roots, parents) if title in command_line(pid)}
    return sorted(pid for pid in titled if parents[pid] not in titled)


class LocalCluster:
    """`nodes` raylets of `cpus_per_node` CPUs each; the first is the head."""

    def __init__(self, temp_dir: Path, cpus_per_node: int = 1):
        self.address = f"127.0.0.1:{free_port()}"
        self.temp_dir, self.cpus_per_node = temp_dir, cpus_per_node
        self.env = os.environ | CLUSTER_ENV
        self.raylets: list[int] = []  # ours, head first

    def _start(self, *args: str) -> int:
        before = raylet_pids()
        subprocess.run(
            [RAY, "start", f"--num-cpus={self.cpus_per_node}", "--disable-usage-stats", *args],
            check=True,
            capture_output=True,
            env=self.env,
        )
        # ours among the raylets that appeared (another test session may start its own now):
        # every node of this cluster runs in the head's temp dir
        (new,) = [pid for pid in raylet_pids() - before if self._marked(pid)]
        self.raylets.append(new)
        return new

    def _marked(self, pid: int) -> bool:
        return str(self.temp_dir).encode() in command_line(pid)

    def start(self, nodes: int) -> LocalCluster:
        self._start(
            "--head",
            f"--port={self.address.split(':')[1]}",
            "--include-dashboard=false",
            f"--temp-dir={self.temp_dir}",
        )
        self.ensure_nodes(nodes)
        return self

    def add_node(self) -> int:
        """One more node; returns its raylet's pid."""
        return self._start(f"--address={self.address}")

    def alive(self) -> list[int]:
        return [pid for pid in self.raylets if running(pid)]

    def ensure_nodes(self, nodes: int) -> None:
        """Add nodes until `nodes` of ours are alive (after a test killed some)."""
        self.raylets = self.alive()
        while len(self.raylets) < nodes:
            self.add_node()

    def node_id(self, pid: int) -> str:
        """The Ray node id of a raylet of ours (hex, as Ray's runtime context gives it)."""
        for argument in command_line(pid).split(b"\0"):
            if argument.startswith(b"--node_id="):
                return argument.removeprefix(b"--node_id=").decode()
        raise ValueError(f"raylet {pid} has no --node_id")

    def kill_raylet(self, pid: int) -> None:
        """SIGKILL a node's raylet and every process under it (its workers, agents), as a lost
        host. The workers are killed too rather than left to notice: they test their raylet
        with kill(pid, 0), which a zombie passes, and where PID 1 does not reap orphans (as in
        some containers) a killed raylet stays one."""
        for each in with_descendants({pid}, _parents()):
            kill(each)

    def raylet_of(self, pid: int) -> int | None:
        """The raylet (of ours) a worker process runs under: Ray forks workers from it."""
        while pid > 1:
            if pid in self.raylets:
                return pid
            try:
                pid = parent_pid(pid)
            except OSError:
                return None
        return None

    def stop(self) -> None:
        """SIGKILL this cluster's own processes: every one whose command line names its temp
        dir (GCS, raylets, monitors) and their descendants (agents, workers). `ray stop` would
        stop every Ray on the machine, another test session's too."""
        parents = _parents()
        ours = {pid for pid in parents if self._marked(pid)}
        for pid in with_descendants(ours, parents):
            kill(pid)
