"""Where a build writes: a dataset folder (LocalWriter) or s3://BUCKET/PREFIX (S3Writer), with the
same methods, so that the flow and its tasks, on any node of a cluster, write either one alike
(spools, shards, report, manifest). Reading is trainers.data.storage's, whose LocalDataset and
S3Dataset these extend.

Every file appears whole or not at all: on disk through a temp file and a rename, on S3 by one
PUT (or one completed multipart upload). S3 checks each request's SHA256 (ChecksumAlgorithm), and
after a shard is written the SHA256 S3 keeps of it is compared with the local file's. Files up to
S3's single-PUT limit go up in one request, so S3 keeps the whole object's SHA256, which a reader
compares with the manifest before reading a byte (trainers.data.storage.open_shard); larger ones
go up in parts of PART_BYTES, several at once, and S3 keeps the SHA256 of the parts' SHA256s
(s3_checksums computes the same), which no reader can compare.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from trainers.data.storage import (
    READ_BUFFER,
    LocalDataset,
    S3Dataset,
    S3Error,
    S3Url,
    client,
    s3_request,
)
from trainers.files import atomic_file, write_atomic

MULTIPART_THRESHOLD = 5 << 30  # S3's single-PUT limit: smaller files go up in one request
PART_BYTES = 64 << 20  # per part of a larger file
PART_CONCURRENCY = 4  # parts of one file in flight
DELETE_BATCH = 1000  # the most keys one DeleteObjects takes


class LocalWriter(LocalDataset):
    """A dataset folder, on this machine or on a filesystem every node mounts at this path."""

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes) -> None:
        write_atomic(self.root / name, data)

    @contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        """A file that appears under `name` when the block ends without an error."""
        with atomic_file(self.root / name) as file:
            yield file

    def delete(self, names: list[str]) -> None:
        for name in names:
            (self.root / name).unlink(missing_ok=True)

    def delete_folder(self, folder: str) -> None:
        shutil.rmtree(self.root / folder, ignore_errors=True)


class S3Writer(S3Dataset):
    """s3://BUCKET/PREFIX, written by every node through its own boto3 client."""

    def prepare(self) -> None:
        check_bucket(self.root)

    def write(self, name: str, data: bytes) -> None:
        url = self.root.join(name)
        with s3_request("write", url):
            client().put_object(
                Bucket=url.bucket, Key=url.key, Body=data, ChecksumAlgorithm="SHA256"
            )

    @contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        """A temp file on this node (a shard may exceed memory), uploaded under `name` when the
        block ends without an error."""
        with tempfile.TemporaryDirectory(prefix="ganforge-shard-") as scratch:
            path = Path(scratch) / "file"
            with open(path, "wb") as file:
                yield file
            put_file(path, self.root.join(name))

    def delete(self, names: list[str]) -> None:
        keys = [self.root.join(name).key for name in names]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            with s3_request("delete under", self.root):
                response = client().delete_objects(
                    Bucket=self.root.bucket, Delete={"Objects": batch}
                )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise S3Error(f"delete s3://{self.root.bucket}/{first['Key']}: {first['Code']}")

    def delete_folder(self, folder: str) -> None:
        self.delete(sorted(self.files([folder])))


Writer = LocalWriter | S3Writer


def writer_at(location: Path | S3Url) -> Writer:
    return S3Writer(location) if isinstance(location, S3Url) else LocalWriter(Path(location))


def check_bucket(url: S3Url) -> None:
    """Raises S3Error unless the bucket exists and these credentials reach it (before a build
    spends minutes on a dataset it could not write)."""
    try:
        with s3_request("reach bucket of", url):
            client().head_bucket(Bucket=url.bucket)
    except FileNotFoundError as error:
        raise S3Error(f"bucket '{url.bucket}' of {url} does not exist") from error


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
        with s3_request("check", url):
            head = client().head_object(Bucket=url.bucket, Key=url.key, ChecksumMode="ENABLED")
    except FileNotFoundError:
        return None
    # A multipart object's ends in "-<parts>" (HeadObject of some S3 implementations leaves it
    # out); the digest alone already differs with the part split.
    return head.get("ChecksumSHA256", "").partition("-")[0] or None


def put_file(path: Path, url: S3Url) -> bool:
    """Uploads unless S3 already holds the same bytes (a resumed build); True if sent. S3
    checks each request's SHA256, and afterwards the object's checksum must equal the file's."""
    _, expected = s3_checksums(path)
    if _stored_checksum(url) == expected:
        return False
    with s3_request("upload to", url):
        client().upload_file(
            str(path),
            url.bucket,
            url.key,
            ExtraArgs={"ChecksumAlgorithm": "SHA256"},
            Config=_transfer_config(),
        )
    stored = _stored_checksum(url)
    if stored != expected:
        raise S3Error(f"{url}: S3 holds SHA256 {stored} after the upload, {path} has {expected}")
    return True
