"""Where runs live (`ganforge train --storage`): a local folder or s3://BUCKET/PREFIX, reached
through pyarrow's filesystems as Ray Train reaches its storage_path (on S3 with the usual AWS
settings, e.g. AWS_ENDPOINT_URL_S3). A run is <storage>/<run name>/ holding its
checkpoint_<images>/ folders (`checkpoint_name`), whose names sort in training order."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.files import is_url

if TYPE_CHECKING:  # trainers.checkpoint imports torch: the launcher starts Ray before that
    from trainers.checkpoint import Progress

CHECKPOINT_PREFIX = "checkpoint_"
# The files rank 0 writes into a checkpoint (trainers.checkpoint), named here, where nothing
# imports torch: the command line checks a --checkpoint folder before importing it.
STATE_NAME = "state.pt"
CONFIG_NAME = "config.json"
PROGRESS_NAME = "progress.json"


def checkpoint_name(images: int) -> str:
    """The folder of the checkpoint written after `images` real images were shown, under Ray
    and without it alike: zero-padded, so that names sort in training order."""
    return f"{CHECKPOINT_PREFIX}{images:012d}"


class RunStorage:
    def __init__(self, location: str | Path):
        import pyarrow.fs

        location = str(location)
        if is_url(location):
            self.filesystem, self.root = pyarrow.fs.FileSystem.from_uri(location)
            self.uri = location.rstrip("/")
        else:
            self.filesystem = pyarrow.fs.LocalFileSystem()
            self.root = self.uri = str(Path(location).resolve())

    @property
    def is_local(self) -> bool:
        return not is_url(self.uri)

    def location(self, *parts: str) -> str:
        """What users and Ray are told: a local path or an s3:// URL."""
        return "/".join([self.uri, *parts])

    def local_dir(self, run: str) -> Path:
        """Where this machine keeps a run's own files (sample grids, its log): beside the
        checkpoints when those are local, else a local temp folder (grids reach MLflow too)."""
        if self.is_local:
            return Path(self.location(run))
        return Path(tempfile.gettempdir()) / "ganforge-runs" / run

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _names(self, *parts: str) -> dict[str, bool]:
        """Entries of a folder: name -> is a folder; {} when it does not exist."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self._path(*parts), allow_not_found=True)
        return {
            info.base_name: info.type == pyarrow.fs.FileType.Directory
            for info in self.filesystem.get_file_info(selector)
        }

    def exists(self, run: str) -> bool:
        import pyarrow.fs

        return self.filesystem.get_file_info(self._path(run)).type != pyarrow.fs.FileType.NotFound

    def checkpoints(self, run: str) -> list[str]:
        """The run's checkpoint folder names, in training order."""
        return sorted(
            name
            for name, is_dir in self._names(run).items()
            if is_dir and name.startswith(CHECKPOINT_PREFIX)
        )

    def latest_run(self) -> str | None:
        """The run whose last checkpoint was written last (by its progress record's time)."""
        import pyarrow.fs

        last = [(run, self.checkpoints(run)[-1:]) for run, d in self._names().items() if d]
        paths = {run: self._path(run, names[0], PROGRESS_NAME) for run, names in last if names}
        infos = self.filesystem.get_file_info(list(paths.values()))
        found = [
            (info.mtime_ns, run)
            for run, info in zip(paths, infos, strict=True)
            if info.type == pyarrow.fs.FileType.File
        ]
        return max(found)[1] if found else None

    def read_progress(self, run: str, checkpoint: str) -> Progress:
        from trainers.checkpoint import Progress

        with self.filesystem.open_input_stream(self._path(run, checkpoint, PROGRESS_NAME)) as f:
            return Progress.from_json(json.loads(f.read()))

    def _complete_checkpoints(self, run: str) -> Iterator[tuple[str, Progress]]:
        """(name, progress record) of every checkpoint holding every file its writers wrote:
        rank 0's and one RNG file per rank (a kill can interrupt a copy)."""
        from trainers.checkpoint import rng_name

        needed = {STATE_NAME, CONFIG_NAME, PROGRESS_NAME}
        for checkpoint in self.checkpoints(run):
            files = set(self._names(run, checkpoint))
            if not needed <= files:
                continue
            try:
                progress = self.read_progress(run, checkpoint)
            except (OSError, ValueError, TypeError, KeyError):
                continue  # a progress file cut short by the kill that interrupted its copy
            if all(rng_name(rank) in files for rank in range(progress.world_size)):
                yield checkpoint, progress

    def latest_complete_checkpoint(self, run: str) -> str | None:
        """The newest complete checkpoint (by images shown); None if there is none."""
        found = [(progress.images, name) for name, progress in self._complete_checkpoints(run)]
        return max(found)[1] if found else None

    def best_checkpoint(self, run: str) -> str | None:
        """The complete checkpoint with the lowest gate value measured at it (by its progress
        record; the earliest of equals); None if no checkpoint was measured."""
        scored = [
            (progress.gate_value, name)
            for name, progress in self._complete_checkpoints(run)
            if progress.gate_value is not None
        ]
        return min(scored)[1] if scored else None

    @contextlib.contextmanager
    def local_copy(self, run: str, checkpoint: str) -> Iterator[Path]:
        """The checkpoint as a local folder: itself, or a temporary download of it."""
        if self.is_local:
            yield Path(self._path(run, checkpoint))
            return
        import pyarrow.fs

        with tempfile.TemporaryDirectory(prefix="ganforge-checkpoint-") as directory:
            pyarrow.fs.copy_files(
                self._path(run, checkpoint),
                directory,
                source_filesystem=self.filesystem,
                destination_filesystem=pyarrow.fs.LocalFileSystem(),
            )
            yield Path(directory)
