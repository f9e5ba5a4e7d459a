"""Datasets on S3, through boto3: the one parser of s3:// URLs, one client per process, streamed
reads that resume after a mid-stream failure, and the checked upload of a built dataset.

Credentials, region and endpoint come only from boto3's standard chain (AWS_* variables such as
AWS_ENDPOINT_URL_S3, ~/.aws, an instance role); nothing here logs, prints or stores them.
Every request retries transient errors ("standard" mode: backoff with jitter, MAX_ATTEMPTS).

    s3://BUCKET/PREFIX/manifest.json        as a local dataset folder (see trainers.data.format)
    s3://BUCKET/PREFIX/r0004/shard-000000.tar ...

boto3 is imported on first use: the build's pool workers import trainers.data.format, and a
local dataset never needs it.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from trainers.data.format import (
    MANIFEST_NAME,
    MAX_RESOLUTION,
    REPORT_NAME,
    ShardEntry,
    load_manifest,
    resolution_dir,
    resolutions_up_to,
    sha256_stream,
)

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
MAX_ATTEMPTS = 8  # per request, botocore's standard retry mode (backoff with jitter, max 20 s)
READ_ATTEMPTS = 5  # per read of a streamed object that fails mid-way (then resumed by Range)
READ_BUFFER = 1 << 20  # bytes per read from the socket; the tar parser reads 512-byte headers
# Files up to S3's single-PUT limit go up in one request: S3 then keeps the SHA256 of the whole
# object, which a reader compares with the manifest before reading a byte (open_shard). Larger
# files go up in parts of PART_BYTES, several at once; the checksum S3 keeps of those is the
# SHA256 of the parts' SHA256s (s3_checksums computes the same), which no reader can compare.
MULTIPART_THRESHOLD = 5 << 30
PART_BYTES = 64 << 20
PART_CONCURRENCY = 4  # parts of one file in flight
FILE_CONCURRENCY = 8  # files in flight (shards are usually smaller than a part)
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
    """This process's S3 client (thread-safe; a forked loader worker makes its own)."""
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
                    max_pool_connections=FILE_CONCURRENCY * PART_CONCURRENCY,
                )
                _clients[pid] = boto3.session.Session().client("s3", config=config)
    return _clients[pid]


@contextmanager
def _request(action: str, url: S3Url) -> Iterator[None]:
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


def check_bucket(url: S3Url) -> None:
    """Raises S3Error unless the bucket exists and these credentials reach it (before a build
    spends minutes on a dataset it could not upload)."""
    try:
        with _request("reach bucket of", url):
            client().head_bucket(Bucket=url.bucket)
    except FileNotFoundError as error:
        raise S3Error(f"bucket '{url.bucket}' of {url} does not exist") from error


class ObjectStream(io.RawIOBase):
    """One GET's body as a raw stream. A read that fails mid-way (connection reset, timeout,
    short body) is resumed where it stopped, by a Range GET pinned to the object's ETag (so a
    replaced object is an error, not a splice), up to READ_ATTEMPTS times with backoff. Given an
    ETag, the first GET is pinned to it too."""

    def __init__(self, url: S3Url, etag: str | None = None):
        self.url = url
        self._position = 0
        self._etag = etag
        self._body = None
        self._get()

    def _get(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self.url.bucket, "Key": self.url.key}
        if self._etag is not None:
            arguments["IfMatch"] = self._etag
        if self._position:
            arguments["Range"] = f"bytes={self._position}-"
        with _request("read", self.url):
            response = client().get_object(**arguments)
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


def open_object(url: S3Url, etag: str | None = None) -> BinaryIO:
    return io.BufferedReader(ObjectStream(url, etag), buffer_size=READ_BUFFER)


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
    ETag and the SHA256 S3 computed when it was written (a single-PUT upload, as upload_dataset
    makes, has the whole object's), compared with the manifest's. An object S3 keeps no such
    checksum of (a multipart upload; a copy made by a tool that sends none) is hashed by a first
    read instead. Then the stream is pinned to that ETag: a replacement in between is an error,
    never other bytes."""
    with _request("check", url):
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
    """A dataset under s3://BUCKET/PREFIX; the same methods as format.LocalDataset."""

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
            with _request("list", self.root.join(folder) if folder else self.root):
                for page in paginator.paginate(Bucket=self.root.bucket, Prefix=prefix):
                    for item in page.get("Contents", []):
                        found[item["Key"][len(root) :]] = item["Size"]
        return found


def s3_checksums(path: Path) -> tuple[str, str]:
    """(sha256 hex of the file, the ChecksumSHA256 S3 keeps of it once uploaded in PART_BYTES
    parts): one read. A multipart object's is base64(sha256(the parts' digests))."""
    from s3transfer.utils import ChunksizeAdjuster

    size = path.stat().st_size
    part_bytes = 0
    if size >= MULTIPART_THRESHOLD:
        part_bytes = ChunksizeAdjuster().adjust_chunksize(PART_BYTES, size)
    whole, parts = hashlib.sha256(), []
    with open(path, "rb") as f:
        while True:
            part, left = hashlib.sha256(), part_bytes or size
            while left and (block := f.read(min(READ_BUFFER, left))):
                whole.update(block)
                part.update(block)
                left -= len(block)
            if parts and left == part_bytes:  # the end fell on a part boundary
                break
            parts.append(part.digest())
            if left or not part_bytes:  # the end, inside this part; or a single part
                break
    if not part_bytes:
        return whole.hexdigest(), base64.b64encode(parts[0]).decode()
    return whole.hexdigest(), base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=PART_BYTES,
        max_concurrency=PART_CONCURRENCY,
        preferred_transfer_client="classic",  # the part size above, whatever is installed
    )


def _stored_checksum(url: S3Url) -> str | None:
    try:
        with _request("check", url):
            head = client().head_object(Bucket=url.bucket, Key=url.key, ChecksumMode="ENABLED")
    except FileNotFoundError:
        return None
    # A multipart object's ends in "-<parts>" (HeadObject of some S3 implementations leaves it
    # out); the digest alone already differs with the part split.
    return head.get("ChecksumSHA256", "").partition("-")[0] or None


@dataclass
class UploadSummary:
    uploaded: int  # files sent
    unchanged: int  # files S3 already held with the same checksum (a re-run, a resumed upload)
    bytes: int  # of every file of the dataset
    removed: int  # objects of resolution folders the new manifest does not list


def _upload_file(path: Path, url: S3Url, sha256: str | None, progress: Callable) -> bool:
    """Uploads unless S3 holds the same bytes; True if sent. S3 checks each request's SHA256,
    and afterwards the object's checksum must equal the local file's (and the local file's
    sha256 the manifest's, when given): the object is then the manifest's bytes."""
    whole, expected = s3_checksums(path)
    if sha256 is not None and whole != sha256:
        raise S3Error(
            f"{path}: sha256 {whole} differs from the manifest's {sha256}; the local build is "
            "damaged, delete it and build again"
        )
    if _stored_checksum(url) == expected:
        progress(path.stat().st_size)
        return False
    with _request("upload to", url):
        client().upload_file(
            str(path),
            url.bucket,
            url.key,
            ExtraArgs={"ChecksumAlgorithm": "SHA256"},
            Config=_transfer_config(),
            Callback=progress,
        )
    stored = _stored_checksum(url)
    if stored != expected:
        raise S3Error(f"{url}: S3 holds SHA256 {stored} after the upload, {path} has {expected}")
    return True


def _remove_stale(root: S3Url, keep: set[str]) -> int:
    """Objects of an earlier build (other params) under resolution folders, as the local build
    removes them."""
    folders = {resolution_dir(r) for r in resolutions_up_to(MAX_RESOLUTION)}
    dataset = S3Dataset(root)
    stale = sorted(n for n in dataset.files(sorted(folders)) if n not in keep)
    for start in range(0, len(stale), 1000):  # the most one DeleteObjects takes
        batch = [{"Key": root.join(name).key} for name in stale[start : start + 1000]]
        with _request("delete stale shards under", root):
            response = client().delete_objects(Bucket=root.bucket, Delete={"Objects": batch})
        if response.get("Errors"):
            first = response["Errors"][0]
            raise S3Error(f"delete {root.join(first['Key'])}: {first.get('Code')}")
    return len(stale)


def upload_dataset(local_root: Path, destination: S3Url) -> UploadSummary:
    """A complete local dataset to s3://: its manifest is deleted first and written last, so a
    reader that opens the dataset finds no manifest until every shard is in place (one that
    loaded the old manifest before may meet replaced shards, which open_shard refuses).
    Files S3 already holds with the same checksum are not sent again (an interrupted upload
    resumes)."""
    from tqdm import tqdm

    manifest = load_manifest(local_root)
    shards = {entry.path: entry.sha256 for entry in manifest.shards}
    total = sum(
        (local_root / name).stat().st_size for name in [*shards, REPORT_NAME, MANIFEST_NAME]
    )
    manifest_url = destination.join(MANIFEST_NAME)
    with _request("delete", manifest_url):
        client().delete_object(Bucket=destination.bucket, Key=manifest_url.key)
    lock = threading.Lock()
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", disable=None) as bar:

        def progress(sent: int) -> None:  # called from s3transfer's threads
            with lock:
                bar.update(sent)

        def upload(name: str) -> bool:
            return _upload_file(
                local_root / name, destination.join(name), shards.get(name), progress
            )

        with ThreadPoolExecutor(FILE_CONCURRENCY) as pool:
            sent = list(pool.map(upload, sorted(shards)))
        removed = _remove_stale(destination, set(shards))
        sent += [upload(REPORT_NAME), upload(MANIFEST_NAME)]  # the manifest last: "complete"
    return UploadSummary(sum(sent), len(sent) - sum(sent), total, removed)
