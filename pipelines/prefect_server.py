"""The local Prefect server that `ganforge data build` keeps for reuse when no PREFECT_API_URL is
set: Prefect's own temporary server (the same uvicorn app and settings) that outlives the command
for GANFORGE_PREFECT_SERVER_KEEP_SECONDS idle seconds, so the next command skips its 2-3 s start.

Files in PREFECT_HOME, beside the database the server runs on:
  ganforge-server.json       the kept server: pid, port, url and the settings it runs with
  ganforge-server.lock       held while a command looks for or starts a server (a few ms)
  ganforge-server-PORT.lease every command using the server holds it shared (flock) until it
                             exits; the server stops only when it can take it exclusively and
                             has been idle that long, or when the state file no longer names it
  ganforge-server.log        the server's output, shown when it fails to start

Deleting the state file (or `stop`) has the server stop as soon as no command uses it.

The locks are the kernel's (flock), so a command that dies releases its lease with it.

Run as `python -m pipelines.prefect_server KEEP_SECONDS -- UVICORN_ARGS…` by `PrefectApi`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

KEEP_ENV = "GANFORGE_PREFECT_SERVER_KEEP_SECONDS"
DEFAULT_KEEP_SECONDS = 600.0  # ten idle minutes: a session of small builds reuses one server
STATE_NAME = "ganforge-server.json"
LOCK_NAME = "ganforge-server.lock"
LOG_NAME = "ganforge-server.log"
WATCH_SECONDS = 1.0  # how often the server looks at its lease and the state file


def keep_seconds() -> float:
    """Idle seconds a local server is kept after its last command; 0: stopped with the command."""
    value = os.environ.get(KEEP_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_KEEP_SECONDS
    except ValueError:
        raise ValueError(f"{KEEP_ENV}={value!r}: expected a number of seconds") from None
    if not seconds >= 0:  # negative, or nan
        raise ValueError(f"{KEEP_ENV}={value!r}: expected 0 or more seconds")
    return seconds


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect reads it from the environment (its default: ~/.prefect)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def settings(environment: dict[str, str]) -> dict[str, str]:
    """What a server's behaviour depends on: the interpreter and every PREFECT_* variable but
    the client's (the API's URL; the logging level, which --debug changes). A command reuses a
    kept server only when its own are the same."""
    client = ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL")
    prefect = {k: v for k, v in environment.items() if k.startswith("PREFECT_")}
    prefect = {k: v for k, v in prefect.items() if k not in client}
    return {"python": sys.executable} | dict(sorted(prefect.items()))


@contextlib.contextmanager
def locked(path: Path, operation: int) -> Iterator[int]:
    """`path` open and flock-ed with `operation` for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def read_state(home: Path) -> dict | None:
    try:
        state = json.loads((home / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(home: Path, state: dict) -> None:
    partial = home / f"{STATE_NAME}.partial"
    partial.write_text(json.dumps(state))
    partial.replace(home / STATE_NAME)  # atomic: a reader sees the old state or the new


def lease_path(home: Path, port: int) -> Path:
    return home / f"ganforge-server-{port}.lease"


class Lease:
    """A command's shared hold on a kept server: while any is held, the server stays."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path) -> Lease | None:
        """The lease, or None when the server holds it itself: it is stopping."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def stop(home: Path) -> int | None:
    """Has the kept server of `home` stop as soon as no command uses it (within WATCH_SECONDS
    when none does): its pid, or None where none was kept."""
    with locked(home / LOCK_NAME, fcntl.LOCK_EX):
        state = read_state(home)
        (home / STATE_NAME).unlink(missing_ok=True)
    return state.get("pid") if state else None


def _watch(home: Path, keep: float, lease: Path) -> None:
    """Stops this server (SIGTERM, uvicorn's graceful exit) once no command has held its lease
    for `keep` seconds, or as soon as the state file names another server or none."""
    last_held = time.monotonic()
    fd = os.open(lease, os.O_RDWR | os.O_CREAT, 0o600)
    while True:
        time.sleep(WATCH_SECONDS)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a command holds it
            last_held = time.monotonic()
            continue
        state = read_state(home)
        ours = state is not None and state.get("pid") == os.getpid()
        if ours and time.monotonic() - last_held < keep:
            fcntl.flock(fd, fcntl.LOCK_UN)
            continue
        # Stopping: held exclusively, the lease refuses every command from here on (they
        # start a server of their own), and the lock goes only with this process.
        with locked(home / LOCK_NAME, fcntl.LOCK_EX):
            state = read_state(home)
            if state is not None and state.get("pid") == os.getpid():
                (home / STATE_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            lease.unlink()
        os.kill(os.getpid(), signal.SIGTERM)
        return


def main(argv: list[str]) -> None:
    """KEEP_SECONDS -- UVICORN_ARGS…: uvicorn's command line, with the watcher beside it."""
    keep, separator, *uvicorn_args = argv
    if separator != "--":
        raise SystemExit("usage: python -m pipelines.prefect_server KEEP_SECONDS -- UVICORN_ARGS…")
    port = int(uvicorn_args[uvicorn_args.index("--port") + 1])
    home = prefect_home()
    lease = lease_path(home, port)
    threading.Thread(target=_watch, args=(home, float(keep), lease), daemon=True).start()
    from uvicorn.main import main as uvicorn_command

    uvicorn_command.main(args=uvicorn_args, prog_name="uvicorn")


if __name__ == "__main__":
    main(sys.argv[1:])
