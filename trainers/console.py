"""What the driver shows of its trainings: one line per running training, driven by rank 0's
reports, warnings once each, and every rank's log records in one file per run.

Rank 0 sends a `ProgressReport` at each log interval, and every rank its log records, over a
`ray.util.queue.Queue` the driver owns (a Ray actor). Ray Train V2 hands reported metrics to
its controller actor and to the driver only when `fit()` returns, whereas the queue reaches the
driver from any node, and through Ray Client, with each record once; worker stdout forwarded by
Ray's log monitors arrives once per monitor, with the bars' cursor codes in it.

On a terminal the display redraws its lines in place (rich); otherwise (a file, a pipe, a
scheduled run) it prints plain lines: a training's at most every PLAIN_EVERY_S.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from logging.handlers import QueueHandler
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.util.queue import Queue

PLAIN_EVERY_S = 30.0  # not on a terminal: a running training's line at most this often
FILE_FORMAT = "%(asctime)s %(rank)s %(levelname)s %(name)s: %(message)s"
DRIVER_LOGGERS = ("trainers", "pipelines")  # this process's records the display shows


def duration(seconds: float) -> str:
    """h:mm:ss"""
    return str(timedelta(seconds=round(seconds)))


@dataclass(frozen=True)
class ProgressReport:
    """Where a training is, as rank 0 tells the driver at each log interval."""

    kimg: float
    stop_kimg: float
    resolution: int
    fade_alpha: float
    images_per_second: float

    def stage(self) -> str:
        return f"{self.resolution}² α {self.fade_alpha:.2f}"

    def pace(self) -> str:
        """kimg done of the total, speed and the time left at this speed."""
        speed = self.images_per_second
        eta = duration((self.stop_kimg - self.kimg) * 1000 / speed) if speed > 0 else "?"
        return f"kimg {self.kimg:.4g}/{self.stop_kimg:.4g} {speed:.0f} img/s ETA {eta}"


class RankLogHandler(QueueHandler):
    """A worker's log records onto the driver's channel, tagged with the worker's rank."""

    def __init__(self, channel: Queue, rank: int):
        super().__init__(channel)
        self.rank = rank

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = super().prepare(record)  # message formatted, traceback included: picklable
        record.rank = f"rank {self.rank}"
        return record


def forward_worker_logs(channel: Queue, rank: int) -> None:
    """Every log record of this worker process (and Python warnings) goes to the driver."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(RankLogHandler(channel, rank))
    logging.captureWarnings(True)


class _EchoHandler(logging.Handler):
    """This process's warnings and errors onto the display, above its live lines."""

    def __init__(self, display: Display):
        super().__init__(logging.WARNING)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        self.display.echo(f"{record.levelname.lower()}: {record.getMessage()}")


class Display:
    """The driver's console (stderr): messages, the pipeline's stage, and on a terminal one
    live line per running training (with the stage's above them)."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(
            file=sys.stderr, markup=False, emoji=False, highlight=False, soft_wrap=True
        )
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal
        self._progress = None  # rich's Progress, while open on a terminal
        self._rows: dict[str, int] = {}  # live line of each key: rich task ids
        self._echo = _EchoHandler(self)
        self._saved_levels: dict[str, tuple[int, bool]] = {}

    def __enter__(self) -> Display:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,  # a finished training leaves its final line, not its bar
                refresh_per_second=2,
            )
            self._progress.start()
        for name in DRIVER_LOGGERS:
            logger = logging.getLogger(name)
            self._saved_levels[name] = (logger.level, logger.propagate)
            # INFO reaches the run's log file (TrainingMonitor); not propagated, since inside a
            # Prefect flow the root logger would print these records a second time
            logger.setLevel(logging.INFO)
            logger.propagate = False
            logger.addHandler(self._echo)
        return self

    def __exit__(self, *exc) -> None:
        for name, (level, propagate) in self._saved_levels.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self._echo)
            logger.setLevel(level)
            logger.propagate = propagate
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._rows.clear()

    def echo(self, text: str) -> None:
        """One line (above the live lines on a terminal)."""
        self.console.print(text)

    def stage(self, text: str) -> None:
        """The pipeline's stage: a line, and on a terminal the live line's text."""
        self.echo(f"pipeline: {text}")
        self.show("pipeline", f"pipeline: {text}", restart=True)

    def show(
        self,
        key: str,
        description: str,
        completed: float | None = None,
        total: float | None = None,
        status: str = "",
        restart: bool = False,
    ) -> None:
        """Set the live line `key` (terminal only); `restart` resets its elapsed time."""
        if self._progress is None:
            return
        row = self._rows.get(key)
        if row is None:
            self._rows[key] = self._progress.add_task(description, total=total, status=status)
        elif restart:
            self._progress.reset(row, description=description, total=total, status=status)
        else:
            self._progress.update(
                row, description=description, completed=completed, total=total, status=status
            )

    def hide(self, key: str) -> None:
        row = self._rows.pop(key, None)
        if row is not None and self._progress is not None:
            self._progress.remove_task(row)
            self._progress.refresh()  # else a line printed next comes above its last drawing


_active: Display | None = None


@contextlib.contextmanager
def display() -> Iterator[Display]:
    """The process's display: the one a caller opened (the CLI command, the pipeline flow),
    else one opened for this block."""
    global _active
    if _active is not None:
        yield _active
        return
    with Display() as opened:
        _active = opened
        try:
            yield opened
        finally:
            _active = None


class TrainingMonitor:
    """One training seen from the driver: its line on the display, its log file (every rank's
    records and the driver's own), and a thread that takes rank 0's reports and the records off
    the channel. Leaves one final line: finished (after `finished`) or failed."""

    def __init__(
        self, shown: Display, run_name: str, family: str, log_path: Path, show_progress: bool
    ):
        self.display, self.run_name, self.family = shown, run_name, family
        self.log_path, self.show_progress = log_path, show_progress
        self.last: ProgressReport | None = None
        self._kimg: float | None = None  # set by `finished`
        self._printed = -float("inf")  # when the last plain line was printed
        self._echoed: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channel: Queue | None = None

    def __enter__(self) -> TrainingMonitor:
        self.started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.FileHandler(self.log_path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter(FILE_FORMAT, defaults={"rank": "driver"}))
        logging.getLogger("trainers").addHandler(self._file)
        self.display.echo(f"{self.run_name}: log of every worker in {self.log_path}")
        if self.show_progress:
            self.display.show(self.run_name, self.family, status="starting Ray Train workers")
        return self

    def listen(self, channel: Queue) -> None:
        """Start taking reports and records off `channel` (a thread, until exit)."""
        self._channel = channel
        self._thread = threading.Thread(target=self._take_all, name="training-monitor")
        self._thread.start()

    def finished(self, kimg: float) -> None:
        self._kimg = kimg

    def __exit__(self, error_type, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._drain()
        logging.getLogger("trainers").removeHandler(self._file)
        self._file.close()
        self.display.hide(self.run_name)
        elapsed = duration(time.monotonic() - self.started)
        if error_type is None and self._kimg is not None:
            speed = f", {self.last.images_per_second:.0f} img/s at the end" if self.last else ""
            self.display.echo(
                f"{self.family} finished at kimg {self._kimg:.4g} in {elapsed}{speed} "
                f"(run {self.run_name})"
            )
        else:
            where = f" at kimg {self.last.kimg:.4g}" if self.last else ""
            self.display.echo(
                f"{self.family} failed{where} after {elapsed} (run {self.run_name}; "
                f"log {self.log_path})"
            )

    # -- the channel --------------------------------------------------------------------------

    def _take_all(self) -> None:
        from ray.exceptions import RayError
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self._take(self._channel.get(timeout=0.5))
            except Empty:
                continue
            except RayError:  # the queue is gone (Ray shutting down): nothing more comes
                return

    def _drain(self) -> None:
        """What the workers sent before they ended (each `put` returned once queued)."""
        from ray.exceptions import RayError

        if self._channel is None:
            return
        with contextlib.suppress(RayError):
            for item in self._channel.get_nowait_batch(self._channel.qsize()):
                self._take(item)
            self._channel.shutdown(force=True)

    def _take(self, item: ProgressReport | logging.LogRecord) -> None:
        if isinstance(item, ProgressReport):
            self._progress(item)
            return
        self._file.handle(item)
        seen = (item.levelname, item.name, item.getMessage())
        # the same warning from every rank (a skipped shard, say) shows once
        if item.levelno >= logging.WARNING and seen not in self._echoed:
            self._echoed.add(seen)
            self.display.echo(f"{item.levelname.lower()} ({self.run_name}, {item.rank}): {seen[2]}")

    def _progress(self, report: ProgressReport) -> None:
        self.last = report
        if not self.show_progress:
            return
        description = f"{self.family} {report.stage()}"
        if self.display.live:
            self.display.show(
                self.run_name, description, report.kimg, report.stop_kimg, report.pace()
            )
        elif time.monotonic() - self._printed >= PLAIN_EVERY_S:
            self._printed = time.monotonic()
            self.display.echo(f"{description} {report.pace()}")
