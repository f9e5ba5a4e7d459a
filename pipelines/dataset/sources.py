"""Where inputs come from: a stable, indexed list of them, and a way to read each one."""

from __future__ import annotations

import hashlib
import re
import tarfile
import zipfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

from pipelines.dataset.config import BuildDatasetConfig, SourceKind
from trainers.data.storage import S3Dataset, S3Url, read_bytes

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


class SourceError(Exception):
    """The source itself is unusable (missing path, unreadable archive): nothing can be built."""


@dataclass(frozen=True)
class InputRef:
    index: int  # position in the source's stable order; fixes the sample key
    path: str  # relative path inside the source (synthetic: "synthetic/<seed>/<index>")
    landmarks: tuple[float, ...] | None = None  # celeba: the 5 (x, y) points, flattened


@dataclass(frozen=True)
class Listing:
    inputs: list[InputRef]
    ignored: list[str]  # files skipped because their extension is not an image's
    digest: str  # sha256 of the listing itself; content hashes are added as inputs are read
    missing: list[InputRef] = field(default_factory=list)  # celeba: listed, not in --input
    unlisted: list[str] = field(default_factory=list)  # celeba: images the landmarks don't list
    scored: bool = False  # celeba without image_list: the best num_images by quality score


def natural_key(name: str) -> list:
    """Name order with digit runs compared as numbers: 2.jpg before 10.jpg, so the files of a
    CelebA-HQ download named by index keep their index as their position."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_inputs(config: BuildDatasetConfig) -> Listing:
    if config.source is SourceKind.synthetic:
        from pipelines.dataset.synthetic import GENERATOR_VERSION

        assert config.num_images is not None
        refs = [InputRef(i, f"synthetic/{config.seed}/{i}") for i in range(config.num_images)]
        identity = f"synthetic-v{GENERATOR_VERSION}:seed={config.seed}:n={config.num_images}"
        return Listing(refs, [], hashlib.sha256(identity.encode()).hexdigest())
    assert config.input is not None
    names = _archive_names(config.input)
    images = sorted(
        (n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS), key=natural_key
    )
    ignored = sorted(n for n in names if PurePosixPath(n).suffix.lower() not in IMAGE_EXTENSIONS)
    if config.source is SourceKind.celeba:
        return _list_celeba(config, images, ignored)
    if config.num_images is not None:
        images = images[: config.num_images]
    if not images:
        raise SourceError(
            f"no images in {config.input} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    listing_digest = hashlib.sha256("\n".join(images).encode()).hexdigest()
    return Listing([InputRef(i, n) for i, n in enumerate(images)], ignored, listing_digest)


def _list_celeba(config: BuildDatasetConfig, images: list[str], ignored: list[str]) -> Listing:
    """The images the landmark file lists, by file name (at any depth of --input), in the
    file's order; with image_list, exactly its images, keyed by their CelebA-HQ index."""
    from pipelines.dataset import celeba

    assert config.landmarks is not None
    try:
        rows = celeba.read_landmarks(config.landmarks)
        chosen = celeba.read_image_list(config.image_list) if config.image_list else None
    except OSError as error:  # on S3 there is no file name: the message names the object
        what = f"{error.filename}: {error.strerror}" if error.filename else error
        raise SourceError(f"cannot read {what}") from None
    except (celeba.LandmarkFileError, celeba.ImageListError) as error:
        raise SourceError(str(error)) from None
    found: dict[str, str] = {}
    for path in images:
        found.setdefault(PurePosixPath(path).name, path)
    points = {name: tuple(float(v) for v in row.reshape(-1)) for name, row in rows}
    if chosen is None:
        wanted = [(i, name) for i, (name, _) in enumerate(rows)]
    else:
        unknown = [name for _, name in chosen if name not in points]
        if unknown:
            raise SourceError(
                f"{config.image_list} names {len(unknown)} images that {config.landmarks} has no "
                f"landmarks for, e.g. {', '.join(unknown[:3])}"
            )
        wanted = chosen
    inputs = [InputRef(i, found[n], points[n]) for i, n in wanted if n in found]
    missing = [InputRef(i, n, points[n]) for i, n in wanted if n not in found]
    unlisted = sorted((p for n, p in found.items() if n not in points), key=natural_key)
    if not inputs:
        raise SourceError(
            f"none of the {len(wanted)} images {config.landmarks} lists is in {config.input}"
        )
    digest = hashlib.sha256()
    for part in (config.landmarks, config.image_list):
        digest.update(read_bytes(part) if part else b"-")
    digest.update("\n".join(r.path for r in inputs).encode())
    return Listing(inputs, ignored, digest.hexdigest(), missing, unlisted, chosen is None)


def _archive_names(root: Path | S3Url) -> list[str]:
    """Every regular file's path relative to the folder, archive or S3 prefix, POSIX separators."""
    if isinstance(root, S3Url):
        try:  # a key ending in "/" is a console's folder marker, not a file
            return [name for name in S3Dataset(root).files([""]) if not name.endswith("/")]
        except OSError as error:  # no such bucket, access denied, S3 unreachable
            raise SourceError(f"cannot list --input {root}: {error}") from None
    if not root.exists():
        raise SourceError(f"--input {root} does not exist")
    try:
        if root.is_dir():
            return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        if zipfile.is_zipfile(root):
            with zipfile.ZipFile(root) as archive:
                return [i.filename for i in archive.infolist() if not i.is_dir()]
        if tarfile.is_tarfile(root):
            with tarfile.open(root) as archive:
                return [m.name for m in archive.getmembers() if m.isfile()]
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as error:
        raise SourceError(f"cannot read --input {root}: {error}") from error
    raise SourceError(f"--input {root} is neither a folder nor a .zip or .tar archive")


def read_input(root: Path | S3Url, name: str) -> bytes:
    """Raw bytes of one input (runs in workers; archives are opened once per process, S3
    objects streamed with retries)."""
    if isinstance(root, S3Url):
        return S3Dataset(root).read(name)
    if root.is_dir():
        return (root / name).read_bytes()
    archive = _open_archive(root)
    if isinstance(archive, zipfile.ZipFile):
        return archive.read(name)
    member = archive.extractfile(_tar_members(root)[name])
    assert member is not None
    return member.read()


@cache
def _open_archive(root: Path) -> zipfile.ZipFile | tarfile.TarFile:
    return zipfile.ZipFile(root) if zipfile.is_zipfile(root) else tarfile.open(root)


@cache
def _tar_members(root: Path) -> dict[str, tarfile.TarInfo]:
    archive = _open_archive(root)
    assert isinstance(archive, tarfile.TarFile)
    return {m.name: m for m in archive.getmembers()}
