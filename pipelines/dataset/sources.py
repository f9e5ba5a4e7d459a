"""Where inputs come from: a stable, indexed list of them, and a way to read each one (from a
folder, a .zip or .tar archive, or an S3 prefix)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pipelines.dataset.config import BuildDatasetConfig, SourceKind
from pipelines.dataset.validate import Reason, Rejected
from trainers.data.storage import S3Dataset, S3Url, open_object, read_bytes
from trainers.files import output_problem

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


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
    # entries neither read nor listed as ignored, each {"path", "reason"}: a symbolic link to a
    # folder (not followed, so no link loops), a folder that cannot be listed, a tar member
    # that is a link or a device
    skipped: list[dict[str, str]] = field(default_factory=list)


def name_bytes(name: str) -> bytes:
    """A file name as digests take it: UTF-8, and the raw bytes of a name that is not UTF-8
    (Python holds those as surrogates; they would not encode)."""
    return name.encode("utf-8", "surrogateescape")


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _no_images(root: Path | S3Url) -> SourceError:
    return SourceError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")


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
    names, skipped = _archive_names(config.input)
    images = sorted(filter(is_image_name, names), key=natural_key)
    ignored = sorted(n for n in names if not is_image_name(n))
    if config.source is SourceKind.celeba:
        return _list_celeba(config, images, ignored, skipped)
    if config.num_images is not None:
        images = images[: config.num_images]
    if not images:
        raise _no_images(config.input)
    listing_digest = hashlib.sha256(name_bytes("\n".join(images))).hexdigest()
    inputs = [InputRef(i, n) for i, n in enumerate(images)]
    return Listing(inputs, ignored, listing_digest, skipped=skipped)


def _list_celeba(
    config: BuildDatasetConfig, images: list[str], ignored: list[str], skipped: list[dict]
) -> Listing:
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
    digest.update(name_bytes("\n".join(r.path for r in inputs)))
    return Listing(inputs, ignored, digest.hexdigest(), missing, unlisted, chosen is None, skipped)


def check_paths(config: BuildDatasetConfig) -> None:
    """What the locations tell before anything runs, as a SourceError naming the option and
    the fix: the local inputs exist, a local --out can be written, and neither holds the other
    (a build whose --out is inside --input would read its own output on the next run). An
    s3:// location is not looked up here (no request before the build starts): listing
    --input, reading the landmarks and reaching --out's bucket say what is wrong with it."""
    for option, path in (
        ("--input", config.input),
        ("--landmarks", config.landmarks),
        ("--image-list", config.image_list),
    ):
        if isinstance(path, Path) and not path.exists():
            raise SourceError(f"{option} {path} does not exist")
    for option, path in (("--landmarks", config.landmarks), ("--image-list", config.image_list)):
        if isinstance(path, Path) and not path.is_file():
            raise SourceError(f"{option} {path} is not a file")
    if isinstance(config.input, Path) and not _holds_images(config.input):
        raise _no_images(config.input)
    if isinstance(config.out, Path):
        problem = output_problem(config.out, folder=True)
        if problem is not None:
            raise SourceError(f"--out {config.out}: {problem}")
    if config.input is None:
        return
    if _inside(config.out, config.input):
        raise SourceError(
            f"--out {config.out} is inside --input {config.input}: the next build would read "
            "its own output; write the dataset outside the input"
        )
    if _inside(config.input, config.out):
        raise SourceError(
            f"--input {config.input} is inside --out {config.out}, which the build rewrites; "
            "write the dataset elsewhere"
        )


def _inside(inner: Path | S3Url, outer: Path | S3Url) -> bool:
    """Whether `inner` is `outer` or below it: two local paths once resolved, two S3 locations
    by bucket and key (a local path and an S3 one never are)."""
    if isinstance(inner, Path) and isinstance(outer, Path):
        return inner.resolve().is_relative_to(outer.resolve())
    if isinstance(inner, S3Url) and isinstance(outer, S3Url):
        return inner.bucket == outer.bucket and PurePosixPath(inner.key).is_relative_to(outer.key)
    return False


def _archive_kind(root: Path) -> type[zipfile.ZipFile] | type[tarfile.TarFile] | None:
    """None for a folder, else the archive class; SourceError when it is neither."""
    if root.is_dir():
        return None
    try:
        if zipfile.is_zipfile(root):
            return zipfile.ZipFile
        if tarfile.is_tarfile(root):
            return tarfile.TarFile
    except OSError as error:
        raise SourceError(f"cannot read --input {root}: {error.strerror}") from None
    raise SourceError(f"--input {root} is neither a folder nor a .zip or .tar archive")


def _holds_images(root: Path) -> bool:
    """Whether the folder or archive holds a file named like an image: a walk that stops at
    the first, where the listing reads every name."""
    kind = _archive_kind(root)
    try:
        if kind is None:
            return any(is_image_name(n) for _, _, files in os.walk(root) for n in files)
        if kind is zipfile.ZipFile:
            with zipfile.ZipFile(root) as archive:
                return any(is_image_name(i.filename) for i in archive.infolist() if not i.is_dir())
        with tarfile.open(root) as archive:
            return any(is_image_name(m.name) for m in archive if m.isfile())
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as error:
        raise SourceError(f"cannot read --input {root}: {error}") from None


def _archive_names(root: Path | S3Url) -> tuple[list[str], list[dict[str, str]]]:
    """Every file's path relative to the folder, archive or S3 prefix (POSIX separators), and
    the entries skipped with why (Listing.skipped; none under an S3 prefix, which holds only
    objects)."""
    if isinstance(root, S3Url):
        try:  # a key ending in "/" is a console's folder marker, not a file
            return [name for name in S3Dataset(root).files([""]) if not name.endswith("/")], []
        except OSError as error:  # no such bucket, access denied, S3 unreachable
            raise SourceError(f"cannot list --input {root}: {error}") from None
    if not root.exists():
        raise SourceError(f"--input {root} does not exist")
    kind = _archive_kind(root)
    try:
        if kind is None:
            return _folder_names(root)
        if kind is zipfile.ZipFile:
            with zipfile.ZipFile(root) as archive:
                return [i.filename for i in archive.infolist() if not i.is_dir()], []
        with tarfile.open(root) as archive:
            members = archive.getmembers()
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as error:
        raise SourceError(f"cannot read --input {root}: {error}") from error
    skipped = [
        {"path": m.name, "reason": f"{_member_kind(m)} member, not read"}
        for m in members
        if not (m.isfile() or m.isdir())
    ]
    return [m.name for m in members if m.isfile()], skipped


def _folder_names(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Every non-folder entry under root (a broken link or a link loop too: reading it rejects
    it with the reason). Links to folders are not followed, so no loop can be walked."""
    names, skipped = [], []

    def cannot_list(error: OSError) -> None:
        path = Path(error.filename).relative_to(root).as_posix()
        skipped.append({"path": path, "reason": f"folder not listed: {error.strerror}"})

    for folder, subfolders, files in os.walk(root, onerror=cannot_list):
        here = Path(folder)
        names += [(here / name).relative_to(root).as_posix() for name in files]
        skipped += [
            {"path": (here / name).relative_to(root).as_posix(), "reason": "link to a folder"}
            for name in subfolders
            if (here / name).is_symlink()
        ]
    return names, sorted(skipped, key=lambda s: s["path"])


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link (to {member.linkname})"
    if member.islnk():
        return f"hard link (to {member.linkname})"
    return "device or fifo"


def _unsafe_name(name: str) -> bool:
    """An archive member or an S3 key named to leave the archive or the --input prefix ('..'
    parts, an absolute path or a drive): never read, whatever it holds."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or ".." in PurePosixPath(posix).parts or posix[1:2] == ":"


def read_input(root: Path | S3Url, name: str, max_bytes: int) -> bytes:
    """Raw bytes of one input (runs in the build's workers; archives are opened once per
    process, S3 objects streamed with retries). Rejected for a member or key named to leave the
    archive or prefix, a file over max_bytes or not a regular file; OSError (or an archive's
    own error) when it cannot be read."""
    if isinstance(root, Path) and root.is_dir():
        # O_NONBLOCK: a fifo named like an image must not hang the build (no effect on files).
        with os.fdopen(os.open(root / name, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise Rejected(Reason.read_error, "not a regular file")
            return _capped(file, status.st_size, max_bytes)
    if _unsafe_name(name):
        where = "--input's prefix" if isinstance(root, S3Url) else "the archive"
        raise Rejected(Reason.unsafe_path, f"the name leaves {where}")
    if isinstance(root, S3Url):
        with open_object(root.join(name)) as stream:  # its size is declared before any byte
            return _capped(stream, stream.raw.size, max_bytes)
    archive = _open_archive(root)
    if isinstance(archive, zipfile.ZipFile):
        with archive.open(name) as member:
            return _capped(member, archive.getinfo(name).file_size, max_bytes)
    info = _tar_members(root)[name]
    member = archive.extractfile(info)
    assert member is not None
    return _capped(member, info.size, max_bytes)


def _capped(stream: BinaryIO, size: int, max_bytes: int) -> bytes:
    """The stream's bytes; Rejected(too_large) past max_bytes, as declared or as read (an
    archive's declared size may lie), so no input costs more memory than that."""
    data = stream.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise Rejected(Reason.too_large, f"{max(size, len(data)):,} bytes > {max_bytes:,}")
    return data


@cache
def _open_archive(root: Path) -> zipfile.ZipFile | tarfile.TarFile:
    return zipfile.ZipFile(root) if zipfile.is_zipfile(root) else tarfile.open(root)


@cache
def _tar_members(root: Path) -> dict[str, tarfile.TarInfo]:
    archive = _open_archive(root)
    assert isinstance(archive, tarfile.TarFile)
    return {m.name: m for m in archive.getmembers()}
