"""Where a dataset's bytes live and how they are read: a folder (LocalDataset) or
s3://BUCKET/PREFIX (S3Dataset), with the same methods, so dataset_at, load_manifest,
verify_dataset and the readers serve both. What lies under the root is trainers.data.format's.

    s3://BUCKET/PREFIX/manifest.json        as in a dataset folder
    s3://BUCKET/PREFIX/r0004/shard-000000.tar ...

S3 goes through boto3: the one parser of s3:// URLs, one client per process, streamed reads
that resume after a mid-stream failure, shards checked against the manifest before a byte of
them is read. Credentials, region and endpoint come only from boto3's standard chain (AWS_*
variables such as AWS_ENDPOINT_URL_S3, ~/.aws, an instance role); nothing here logs, prints or
stores them. Every request retries transient errors ("standard" mode: backoff with jitter,
MAX_ATTEMPTS). boto3 is imported on first use: a local dataset never needs it.
(Writing a dataset is the build's: pipelines.dataset.writer.)
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ValidationError

from trainers.data.format import MANIFEST_NAME, Manifest, ShardEntry, resolution_dir

log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """No complete dataset (no manifest) at a path, or not the needed resolution."""


class DatasetCorruptedError(ValueError):
    """A dataset whose manifest is not a ganforge manifest: damaged, a finding at run time."""


def sha256_stream(stream: BinaryIO, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of what is left of `stream`, as the manifest lists a shard's."""
    digest = hashlib.sha256()
    while block := stream.read(chunk_bytes):
        digest.update(block)
    return digest.hexdigest()


class LocalDataset:
    """A dataset folder; S3Dataset has the same methods for s3://BUCKET/PREFIX."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def url(self, name: str) -> str:
        """What webdataset opens."""
        return str(self.root / name)

    def read(self, name: str) -> bytes:
        if not (self.root / name).is_file():
            raise FileNotFoundError(f"{name} is missing")
        return (self.root / name).read_bytes()

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self.open(name) as file:
            file.seek(offset)
            return file.read(length)

    def open_shard(self, shard: ShardEntry) -> BinaryIO:
        """A listed shard, unchecked: hashing costs 7% of the reader's images/s (64², parse +
        PNG decode), and a local dataset is checked by DVC and `ganforge data verify`."""
        return self.open(shard.path)

    def files(self, folders: list[str]) -> dict[str, int | None]:
        """Name (relative to the root) -> size of every entry of these folders (None: not a
        regular file)."""
        return {
            p.relative_to(self.root).as_posix(): p.stat().st_size if p.is_file() else None
            for folder in folders
            if (self.root / folder).is_dir()
            for p in (self.root / folder).iterdir()
        }


# --- S3 ------------------------------------------------------------------------------------------

S3_SCHEME = "s3://"
MAX_ATTEMPTS = 8  # per request, botocore's standard retry mode (backoff with jitter, max 20 s)
READ_ATTEMPTS = 5  # per read of a streamed object that fails mid-way (then resumed by Range)
READ_BUFFER = 1 << 20  # bytes per read from the socket; the tar parser reads 512-byte headers
# connections one client keeps: a process's threads (a build's tasks, a loader's reads) each
# have a request in flight, a multipart upload several parts
MAX_POOL_CONNECTIONS = 32
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def is_s3_url(location: str | Path) -> bool:
    return str(location).startswith(S3_SCHEME)


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # an object key or a prefix, no leading or trailing "/"; "" is the bucket's root

    @classmethod
    def parse(cls, text: str) -> S3Url:
        """s3://BUCKET[/KEY]; ValueError naming what is wrong (keys stay usable as local paths
        below a staging folder: no empty, "." or ".." parts)."""
        if not is_s3_url(text):
            raise ValueError(f"{text}: not an s3:// URL")
        bucket, _, key = text[len(S3_SCHEME) :].partition("/")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(
                f"{text}: '{bucket}' is not an S3 bucket name (3-63 characters: lowercase "
                "letters, digits, '.', '-')"
            )
        key = key.rstrip("/")
        if key and any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"{text}: the key has an empty, '.' or '..' part")
        return cls(bucket, key)

    def join(self, name: str) -> S3Url:
        return S3Url(self.bucket, f"{self.key}/{name}" if self.key else name)

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"


class S3Error(OSError):
    """An S3 request that failed after its retries; the message names the URL and S3's error
    code, never a credential."""


_clients: dict[int, Any] = {}
_clients_lock = threading.Lock()


def client():
    """This process's S3 client (thread-safe; a forked loader process makes its own)."""
    pid = os.getpid()
    if pid not in _clients:
        with _clients_lock:
            if pid not in _clients:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=MAX_POOL_CONNECTIONS,
                )
                _clients[pid] = boto3.session.Session().client("s3", config=config)
    return _clients[pid]


@contextmanager
def s3_request(action: str, url: S3Url) -> Iterator[None]:
    """botocore's errors as FileNotFoundError (no such key or bucket) or S3Error."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(f"{url} does not exist") from None
        if code == "NoSuchBucket":
            raise FileNotFoundError(f"{url}: bucket '{url.bucket}' does not exist") from None
        raise S3Error(f"{action} {url}: {error}") from None
    except NoCredentialsError as error:
        raise S3Error(
            f"{action} {url}: {error} (boto3 looks in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE and ~/.aws, then an instance role)"
        ) from None
    except BotoCoreError as error:  # endpoint unreachable, ...
        raise S3Error(f"{action} {url}: {error}") from None


class ObjectStream(io.RawIOBase):
    """One GET's body as a raw stream: the object, or its bytes [start, end). A read that fails
    mid-way (connection reset, timeout, short body) is resumed where it stopped, by a Range GET
    pinned to the object's ETag (so a replaced object is an error, not a splice), up to
    READ_ATTEMPTS times with backoff. Given an ETag, the first GET is pinned to it too."""

    def __init__(self, url: S3Url, etag: str | None = None, start: int = 0, end: int | None = None):
        self.url = url
        self._position = start
        self._end = end
        self._etag = etag
        self._body = None
        self._get()

    def _get(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self.url.bucket, "Key": self.url.key}
        if self._etag is not None:
            arguments["IfMatch"] = self._etag
        if self._position or self._end is not None:
            last = "" if self._end is None else self._end - 1  # HTTP ranges include the last
            arguments["Range"] = f"bytes={self._position}-{last}"
        with s3_request("read", self.url):
            response = client().get_object(**arguments)
        if self._body is None:  # the first GET: what the stream holds in all
            self.size: int = response["ContentLength"]
        self._etag = response["ETag"]
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        from botocore.exceptions import (
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        transient = (IncompleteReadError, ReadTimeoutError, ResponseStreamingError, ConnectionError)
        if self._end is not None and self._position >= self._end:
            return 0  # the range is read: no resumed GET of an empty range
        for attempt in range(READ_ATTEMPTS):
            try:
                data = self._body.read(len(buffer))
                break
            except transient as error:
                if attempt == READ_ATTEMPTS - 1:
                    raise S3Error(f"read {self.url} at byte {self._position}: {error}") from None
                log.warning(
                    "read %s failed at byte %d (%s); resuming", self.url, self._position, error
                )
                time.sleep(0.2 * 2**attempt)
                self._body.close()
                self._get()
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
        super().close()


def open_object(url: S3Url, etag: str | None = None) -> io.BufferedReader:
    """The object, streamed; its size (as S3 declared it, before any byte is read) is
    `.raw.size`."""
    return io.BufferedReader(ObjectStream(url, etag), buffer_size=READ_BUFFER)


def read_bytes(location: Path | S3Url) -> bytes:
    """The whole of one file: a local path or an S3 object (streamed, with resumed reads)."""
    if isinstance(location, S3Url):
        with open_object(location) as stream:
            return stream.read()
    return Path(location).read_bytes()


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_) -> BinaryIO:
    """webdataset's opener for s3:// (webdataset has none): the streamed object, no temp file,
    no shell command."""
    if mode != "rb":
        raise ValueError(f"{url}: s3:// shards are opened for reading only")
    return open_object(S3Url.parse(url))


class ShardMismatchError(ValueError):
    """A shard whose bytes are not the manifest's; refused before any of it is read."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason} (run `ganforge data verify` on the dataset)")
        self.url = url


def open_shard(url: S3Url, size: int, sha256: str) -> BinaryIO:
    """The shard's stream, once S3 has shown it holds the manifest's bytes; ShardMismatchError
    otherwise, before a sample is read.

    Other writers can replace an object at any time, so: one HEAD gives the object's size,
    ETag and the SHA256 S3 computed when it was written (a single-PUT upload, as
    pipelines.dataset.writer makes, has the whole object's), compared with the manifest's. An
    object S3 keeps no such checksum of (a multipart upload; a copy made by a tool that sends
    none) is hashed by a first read instead. Then the stream is pinned to that ETag: a
    replacement in between is an error, never other bytes."""
    with s3_request("check", url):
        head = client().head_object(Bucket=url.bucket, Key=url.key, ChecksumMode="ENABLED")
    if (stored_size := head["ContentLength"]) != size:
        raise ShardMismatchError(str(url), f"{stored_size} bytes, the manifest lists {size}")
    etag, stored = head["ETag"], head.get("ChecksumSHA256")
    multipart = "-" in etag or "-" in (stored or "")  # S3's marks of a multipart object
    if stored and not multipart:
        if base64.b64decode(stored).hex() != sha256:
            raise ShardMismatchError(str(url), "S3's SHA256 of it differs from the manifest's")
    else:
        with open_object(url, etag) as stream:
            if sha256_stream(stream) != sha256:
                raise ShardMismatchError(str(url), "sha256 differs from the manifest's")
    return open_object(url, etag)


class S3Dataset:
    """A dataset under s3://BUCKET/PREFIX; the same methods as LocalDataset."""

    def __init__(self, root: S3Url):
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def url(self, name: str) -> str:
        return str(self.root.join(name))

    def read(self, name: str) -> bytes:
        with open_object(self.root.join(name)) as stream:
            return stream.read()

    def open(self, name: str) -> BinaryIO:
        return open_object(self.root.join(name))

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """One GET of `length` bytes from `offset` (resumed like any read if it is cut)."""
        with ObjectStream(self.root.join(name), start=offset, end=offset + length) as stream:
            return stream.readall()

    def open_shard(self, shard: ShardEntry) -> BinaryIO:
        """A listed shard, refused (ShardMismatchError) unless it holds the manifest's bytes."""
        return open_shard(self.root.join(shard.path), shard.bytes, shard.sha256)

    def files(self, folders: list[str]) -> dict[str, int]:
        """Name (relative to the root) -> size of every object under these folders ("": all)."""
        root = f"{self.root.key}/" if self.root.key else ""
        paginator = client().get_paginator("list_objects_v2")
        found = {}
        for folder in folders:
            prefix = f"{root}{folder}/" if folder else root
            with s3_request("list", self.root.join(folder) if folder else self.root):
                for page in paginator.paginate(Bucket=self.root.bucket, Prefix=prefix):
                    for item in page.get("Contents", []):
                        found[item["Key"][len(root) :]] = item["Size"]
        return found


# --- a folder or S3 ----------------------------------------------------------------------------


def dataset_at(root: str | Path) -> LocalDataset | S3Dataset:
    """The dataset at a folder or at s3://BUCKET/PREFIX."""
    if is_s3_url(root):
        return S3Dataset(S3Url.parse(str(root)))
    return LocalDataset(Path(root))


def load_manifest(root: str | Path) -> Manifest:
    """DatasetNotFoundError when there is no manifest, DatasetCorruptedError when it is not a
    ganforge manifest."""
    if not is_s3_url(root) and Path(root).is_file():
        raise DatasetNotFoundError(
            f"{root} is a file; give the dataset folder (the one holding {MANIFEST_NAME})"
        )
    try:
        data = dataset_at(root).read(MANIFEST_NAME)
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"no dataset at {root}: {error} (build one with "
            f"`ganforge data build --source synthetic --out {root}`)"
        ) from None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as error:  # not JSON, or not our schema
        raise DatasetCorruptedError(
            f"corrupted: {dataset_at(root).url(MANIFEST_NAME)} is not a ganforge manifest "
            f"({error.errors()[0]['msg']})"
        ) from None


def rebuild_command(root: str | Path, manifest: Manifest, max_resolution: int) -> str:
    """The `ganforge data build` that makes the dataset at root again, as its manifest records
    it, up to max_resolution (the locations of its inputs are not recorded: named in capitals)."""
    params = manifest.params | {"max_resolution": max_resolution}
    source = params.pop("source", "synthetic")
    inputs = {"folder": ["--input INPUT"], "celeba": ["--input INPUT", "--landmarks FILE"]}
    options = [
        f"--{key.replace('_', '-')} {value}" for key, value in params.items() if value is not None
    ]
    return " ".join(
        ["ganforge data build", f"--source {source}", *inputs.get(source, []), *options]
        + [f"--out {root}"]
    )


class VerifyResult(BaseModel):
    missing: list[str]  # in the manifest, not in the dataset
    extra: list[str]  # in a resolution folder, not in the manifest
    corrupted: list[str]  # size or sha256 differs from the manifest

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.corrupted)


def verify_dataset(root: str | Path) -> VerifyResult:
    """Re-hash every shard (streamed, for s3://) against the manifest."""
    dataset = dataset_at(root)
    manifest = load_manifest(root)
    listed = {s.path: s for s in manifest.shards}
    present = dataset.files([resolution_dir(r) for r in manifest.resolutions])
    missing, corrupted = [], []
    for path, entry in sorted(listed.items()):
        if present.get(path) is None:
            missing.append(path)
        elif present[path] != entry.bytes:
            corrupted.append(path)
        else:
            with dataset.open(path) as stream:
                if sha256_stream(stream) != entry.sha256:
                    corrupted.append(path)
    return VerifyResult(
        missing=missing, extra=sorted(present.keys() - listed.keys()), corrupted=corrupted
    )
