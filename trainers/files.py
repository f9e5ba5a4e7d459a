"""Locations and local files: the one test of whether a location is a URL or a local path, and
the one atomic file write."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def is_url(location: str | Path) -> bool:
    """A URL (s3://BUCKET/PREFIX, sqlite:///mlflow.db, file:///...), not a local path: what
    every option that takes "a folder or a URL" (--data, --storage, a tracking URI) tells apart."""
    return "://" in str(location)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temp file beside it, flushed to disk and renamed
    onto `path` when the block ends, so readers see the old file or the whole new one. An error
    in the block removes the temp file and leaves `path` as it was.

    The file gets the mode of any new file (0644 under umask 022), not mkstemp's 0600: datasets
    and statistics are read by other users and by containers on a shared filesystem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes) -> None:
    """`data` as the whole of `path`, through atomic_file."""
    with atomic_file(path) as file:
        file.write(data)
