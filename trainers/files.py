"""Locations and local files: the one test of whether a location is a URL or a local path, the
one check that an output can be written, the one atomic file write, and the one YAML reader."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def is_url(location: str | Path) -> bool:
    """A URL (s3://BUCKET/PREFIX, sqlite:///mlflow.db, file:///...), not a local path: what
    every option that takes "a folder or a URL" (--data, --storage, a tracking URI) tells apart."""
    return "://" in str(location)


def output_problem(path: str | Path, *, folder: bool) -> str | None:
    """Why `path` cannot be written as a folder (to write in) or as a file (to replace), or
    None when it can. Checked before any work starts, so a mistake costs no build or run."""
    path = Path(path).absolute()
    if path.exists():
        if path.is_dir() != folder:
            return "is a file; give a folder" if folder else "is a folder; give a file name"
        nearest = path if folder else path.parent
    else:
        nearest = path.parent
        while not nearest.exists():  # what would be created, down from the nearest that exists
            nearest = nearest.parent
        if not nearest.is_dir():
            return f"{nearest} is a file, not a folder"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"cannot write in {nearest} (permission denied); choose another place"
    return None


def yaml_problem(error: Exception) -> str:
    """A YAML syntax error in one line: where, then what (PyYAML's own text spans 4-5 lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {problem}"


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; ValueError naming the place of a syntax error (the caller names
    the file), OSError when it cannot be read."""
    import yaml

    text = Path(path).read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(yaml_problem(error)) from None


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
