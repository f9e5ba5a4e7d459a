"""The upload of a built dataset to s3://BUCKET/PREFIX (the writer's side of S3; reading is
trainers.data.storage's): every file checksummed by S3 and compared with the local file, the
manifest deleted first and written last, files S3 already holds not sent again.

Files up to S3's single-PUT limit go up in one request: S3 then keeps the SHA256 of the whole
object, which a reader compares with the manifest before reading a byte
(trainers.data.storage.open_shard). Larger files go up in parts of PART_BYTES, several at once;
the checksum S3 keeps of those is the SHA256 of the parts' SHA256s (s3_checksums computes the
same), which no reader can compare.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from trainers.data.format import (
    MANIFEST_NAME,
    MAX_RESOLUTION,
    REPORT_NAME,
    resolution_dir,
    resolutions_up_to,
)
from trainers.data.storage import (
    READ_BUFFER,
    S3Dataset,
    S3Error,
    S3Url,
    client,
    load_manifest,
    s3_request,
)

MULTIPART_THRESHOLD = 5 << 30  # S3's single-PUT limit: smaller files go up in one request
PART_BYTES = 64 << 20  # per part of a larger file
PART_CONCURRENCY = 4  # parts of one file in flight
# files in flight (shards are usually smaller than a part); files × parts stay within the S3
# client's connection pool (trainers.data.storage.MAX_POOL_CONNECTIONS)
FILE_CONCURRENCY = 8


def check_bucket(url: S3Url) -> None:
    """Raises S3Error unless the bucket exists and these credentials reach it (before a build
    spends minutes on a dataset it could not upload)."""
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
    with s3_request("upload to", url):
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
        with s3_request("delete stale shards under", root):
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
    with s3_request("delete", manifest_url):
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
