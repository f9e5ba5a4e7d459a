"""S3 that fails some requests (tests/flaky_s3.py in front of moto: 503 and 500 answers,
dropped connections, object GETs cut short mid-body): a build's writes and every read retry
and end with exactly the local bytes and batches. (A shard whose bytes differ from the
manifest is refused: see test_s3.py.)"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build, tree_bytes
from tests.flaky_s3 import FAULTS, FlakyS3
from trainers.data import storage
from trainers.data.reader import ShardReader
from trainers.data.storage import S3Url, verify_dataset

BUCKET = "ganforge-faults"


@pytest.fixture(scope="module")
def moto(s3_env):
    """A boto3 client straight to moto, past the proxy (no retries needed there)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"])
    client.create_bucket(Bucket=BUCKET)
    return client


def stored(moto, prefix: str) -> dict[str, bytes]:
    """Every object under the prefix, read straight from moto."""
    listing = moto.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/").get("Contents", [])
    return {item["Key"].removeprefix(f"{prefix}/"): read(moto, item["Key"]) for item in listing}


def read(moto, key: str) -> bytes:
    return moto.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.fixture(scope="module")
def remote(moto, small_dataset) -> str:
    """small_dataset put straight into moto."""
    for name, data in tree_bytes(small_dataset).items():
        moto.put_object(Bucket=BUCKET, Key=f"direct/{name}", Body=data)
    return f"s3://{BUCKET}/direct"


@pytest.fixture
def flaky(s3_env, monkeypatch):
    """The proxy between ganforge's S3 client and moto: every 5th request of each method
    fails (503, 500 or dropped), every 3rd object GET is cut short. Each fault costs a backoff
    (botocore's: 0.5 s on average; a resumed read's: 0.2 s)."""
    proxy = FlakyS3(s3_env["AWS_ENDPOINT_URL_S3"], error_every=5, cut_every=3)
    with proxy as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        monkeypatch.setattr(storage, "_clients", {})  # storage.client() keeps one per process
        yield proxy


def test_build_through_failing_requests_stores_the_local_bytes(flaky, moto, small_dataset):
    """The small_dataset build, written to S3 by the pool's workers (they reach S3 through the
    proxy too: its address is in the environment they start with)."""
    out = S3Url(BUCKET, "build")
    build(str(out), num_images=40, max_resolution=32, shard_size=16, seed=3, workers=2)
    assert stored(moto, "build") == tree_bytes(small_dataset)  # no spool left under .build/
    assert flaky.errors["PUT"] and flaky.errors["HEAD"]  # refused writes and checks, retried
    assert flaky.faults.keys() == FAULTS.keys()  # 503s, 500s and dropped connections


@pytest.mark.parametrize("processes", [0, 2])
def test_reader_through_failing_requests_yields_the_local_batches(
    flaky, remote, small_dataset, processes
):
    def batches(root):
        reader = ShardReader(  # a small shuffle buffer: few shard reads, few backoffs
            root,
            16,
            batch_per_worker=8,
            loader_processes=processes,
            shuffle_buffer=10,
            batches_per_epoch=6,
        )
        return list(reader), reader.skipped

    local, through = batches(small_dataset), batches(remote)
    assert through[1] == local[1] == 0  # no shard failed its size and sha256 check
    assert len(through[0]) == 6
    assert all(torch.equal(a, b) for a, b in zip(local[0], through[0], strict=True))
    assert flaky.cuts and flaky.ranged_gets  # reads cut mid-body, resumed by Range
    assert flaky.errors["GET"]


def test_verify_through_failing_requests_is_ok(flaky, remote):
    result = verify_dataset(remote)
    assert result.ok, result
    assert flaky.cuts and flaky.ranged_gets and flaky.errors["GET"]
