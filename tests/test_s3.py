"""Datasets on S3 (moto in server mode on 127.0.0.1, a real HTTP endpoint): `ganforge data build
--out s3://` writes the bytes a local build writes, straight from its tasks, manifest last;
`data verify s3://` refuses a changed shard; the training reader streams s3:// shards and checks
them."""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote, urlsplit

import pytest
import torch
import webdataset as wds

from pipelines.dataset import writer
from pipelines.dataset.writer import S3Writer
from tests.conftest import build, ganforge, s3_objects, tree_bytes
from tests.flaky_s3 import FlakyS3
from trainers.data import storage
from trainers.data.format import IMAGE_EXTENSION, MANIFEST_NAME, REPORT_NAME
from trainers.data.reader import ShardReader, decode_image, real_chunks, ustar_members
from trainers.data.storage import S3Url, ShardMismatchError, client, load_manifest

BUCKET = "ganforge-test"
# the small_dataset fixture's options: a deterministic build gives the same bytes
SMALL = ["--num-images", "40", "--max-resolution", "32", "--shard-size", "16", "--seed", "3"]


def objects(prefix: str) -> dict[str, bytes]:
    return s3_objects(S3Url(BUCKET, prefix))


def upload_copy(local, prefix: str) -> S3Url:
    """A local dataset's files put on S3 as a build writes them (checksummed, manifest last)."""
    destination = S3Writer(S3Url(BUCKET, prefix))
    for name, data in sorted(tree_bytes(local).items(), key=lambda item: item[0] == MANIFEST_NAME):
        destination.write(name, data)
    return destination.root


def damage(url: S3Url, offset: int, checksum: str | None = None) -> None:
    """Flip one byte of an object in the bucket (S3 keeps the new bytes' SHA256 if asked)."""
    with storage.open_object(url) as stream:
        data = bytearray(stream.read())
    data[offset] ^= 0xFF
    extra = {"ChecksumAlgorithm": checksum} if checksum else {}
    client().put_object(Bucket=url.bucket, Key=url.key, Body=bytes(data), **extra)


def shard_images(root, shards) -> set[bytes]:
    """The uint8 pixels of every image of these shards, as bytes."""
    found = set()
    for shard in shards:
        with open(root / shard.path, "rb") as stream:
            for name, data in ustar_members(stream):
                if name.endswith(IMAGE_EXTENSION):
                    found.add(decode_image(data).numpy().tobytes())
    return found


@pytest.fixture(scope="module")
def env(s3_env, subprocess_env, tmp_path_factory):
    client().create_bucket(Bucket=BUCKET)
    return subprocess_env | s3_env | {"XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def cli_build(env):
    """`ganforge data build --out s3://ganforge-test/cli` with the small_dataset options."""
    return ganforge(
        "data", "build", "--out", f"s3://{BUCKET}/cli", *SMALL, "--workers", "2", env=env
    )


def test_build_writes_the_local_build_bytes_and_no_secret(cli_build, env, small_dataset):
    assert cli_build.returncode == 0, cli_build.stderr
    assert f"built s3://{BUCKET}/cli: 40 accepted" in cli_build.stdout
    written = objects("cli")
    assert written == tree_bytes(small_dataset)  # manifest, report, every shard; no spool left
    outputs = [cli_build.stdout.encode(), cli_build.stderr.encode(), *written.values()]
    for credential in (env["AWS_SECRET_ACCESS_KEY"], env["AWS_ACCESS_KEY_ID"]):
        assert not [text for text in outputs if credential.encode() in text]


def test_build_to_a_bucket_that_does_not_exist_is_a_usage_error(env):
    out = "s3://ganforge-no-such-bucket/data"
    result = ganforge("data", "build", "--out", out, "--num-images", "4", env=env)
    assert result.returncode == 2, result.stderr
    assert "--out: bucket 'ganforge-no-such-bucket'" in result.stderr


def test_manifest_is_deleted_first_and_written_last(env, small_dataset, monkeypatch):
    """Over an earlier dataset, in the order S3 took the writes (seen by a proxy in front of it,
    which the build's pool workers reach too): the old manifest is deleted before anything else
    is written, the new one after every shard and the report; only the spools' deletion
    follows."""
    out = S3Url(BUCKET, "order")
    client().put_object(Bucket=BUCKET, Key=out.join(MANIFEST_NAME).key, Body=b"{}")
    recorder = FlakyS3(env["AWS_ENDPOINT_URL_S3"], error_every=None, cut_every=None)
    with recorder as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        monkeypatch.setattr(storage, "_clients", {})  # storage.client() keeps one per process
        build(str(out), num_images=40, max_resolution=32, shard_size=16, seed=3, workers=2)
    writes = []  # (PUT or DELETE, name under the dataset)
    for method, path, body in recorder.answered:
        if method == "PUT":
            writes.append(("PUT", unquote(urlsplit(path).path).removeprefix(f"/{BUCKET}/order/")))
        elif method == "POST" and urlsplit(path).query == "delete":  # DeleteObjects
            for key in re.findall(r"<Key>(.*?)</Key>", body.decode()):
                writes.append(("DELETE", key.removeprefix("order/")))
    assert writes[0] == ("DELETE", MANIFEST_NAME)
    manifest = writes.index(("PUT", MANIFEST_NAME))
    before = {name for method, name in writes[1:manifest] if method == "PUT"}
    assert {s.path for s in load_manifest(small_dataset).shards} | {REPORT_NAME} <= before
    assert all(m == "DELETE" and n.startswith(".build/") for m, n in writes[manifest + 1 :])
    assert s3_objects(out) == tree_bytes(small_dataset)  # the spools under .build/ are gone


def test_verify_s3_names_a_changed_shard_and_an_extra_one(cli_build, env, small_dataset):
    ok = ganforge("data", "verify", f"s3://{BUCKET}/cli", env=env)
    assert ok.returncode == 0, ok.stderr
    assert f"ok s3://{BUCKET}/cli: 12 shards verified" in ok.stdout
    root = upload_copy(small_dataset, "changed")
    shard = load_manifest(small_dataset).shards_at(16)[1].path
    damage(root.join(shard), offset=-1)  # the tar's end padding: same size, other sha256
    client().put_object(Bucket=BUCKET, Key=root.join("r0004/stray.tar").key, Body=b"x")
    bad = ganforge("data", "verify", str(root), env=env)
    assert bad.returncode == 1
    assert f"corrupted: {shard}" in bad.stderr and "extra: r0004/stray.tar" in bad.stderr
    assert f"{root} does not match its manifest" in bad.stderr
    none = ganforge("data", "verify", f"s3://{BUCKET}/nothing-here", env=env)
    assert none.returncode == 2 and "manifest.json does not exist" in none.stderr


def test_reader_over_s3_yields_the_local_batches(cli_build, small_dataset):
    def batches(root):
        reader = ShardReader(
            root, 16, batch_per_worker=8, loader_processes=2, batches_per_epoch=6, seed=1
        )
        return list(reader), reader.skipped

    local, remote = batches(small_dataset), batches(f"s3://{BUCKET}/cli")
    assert len(remote[0]) == 6 and remote[1] == local[1] == 0  # every shard passed its check
    assert all(torch.equal(a, b) for a, b in zip(local[0], remote[0], strict=True))


def test_swd_over_s3_equals_the_local_measurement(cli_build, small_dataset, env, monkeypatch):
    """Metrics read the real side straight from S3, and cache it in this machine's cache."""
    from trainers.metrics.cache import statistics_dir
    from trainers.metrics.driver import evaluate
    from trainers.metrics.evaluation import Evaluation
    from trainers.networks.progan import ProGANGenerator
    from trainers.prior import LatentPrior
    from trainers.sampling import Sampler

    monkeypatch.setenv("GANFORGE_CACHE_DIR", env["XDG_CACHE_HOME"])
    torch.manual_seed(0)
    generator = ProGANGenerator(latent_dim=16, max_resolution=16, fmap_base=64, fmap_max=16)
    sampler = Sampler.of(generator, LatentPrior("normal", 16), 16)
    results = [
        evaluate(["swd1k"], Evaluation(sampler, data, chunk_size=8))
        for data in (f"s3://{BUCKET}/cli", small_dataset)
    ]
    assert results[0] == pytest.approx(results[1], rel=1e-6)
    assert str(statistics_dir(f"s3://{BUCKET}/cli")).startswith(env["XDG_CACHE_HOME"])
    assert any(statistics_dir(f"s3://{BUCKET}/cli").rglob("*.npy"))


@pytest.mark.parametrize("checksum", ["SHA256", None], ids=["s3-sha256", "no-s3-sha256"])
def test_reader_refuses_a_changed_shard_and_never_yields_its_images(
    env, small_dataset, caplog, checksum
):
    """The damaged shard's images all still decode (the flipped byte is tar padding): only the
    hash can tell. With the SHA256 S3 keeps of the new bytes, the HEAD alone refuses it."""
    root = upload_copy(small_dataset, f"mismatch-{checksum}")
    bad, *good = load_manifest(small_dataset).shards_at(8)
    damage(root.join(bad.path), offset=-1, checksum=checksum)
    gets = []
    client().meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"])
    )
    reader = ShardReader(str(root), 8, batch_per_worker=4, loader_processes=0, batches_per_epoch=30)
    with caplog.at_level(logging.WARNING, logger="trainers.data.reader"):
        pixels = torch.cat(list(reader)).add(1).mul(127.5).round().to(torch.uint8)
    seen = {image.numpy().tobytes() for image in pixels}
    assert seen <= shard_images(small_dataset, good)
    assert not seen & shard_images(small_dataset, [bad])
    warnings = [r.getMessage() for r in caplog.records if r.name == "trainers.data.reader"]
    assert reader.skipped == len(warnings) == 1  # refused once, then never picked again
    assert f"{root.join(bad.path)}: " in warnings[0] and "differs" in warnings[0]
    assert gets.count(root.join(bad.path).key) == (0 if checksum else 1)  # a hash-only read


def test_every_shard_refused_is_an_error_for_training_and_evaluation(env, small_dataset):
    root = upload_copy(small_dataset, "all-refused")
    for shard in load_manifest(small_dataset).shards_at(4):
        damage(root.join(shard.path), offset=-1)
    reader = ShardReader(str(root), 4, batch_per_worker=4, loader_processes=0, batches_per_epoch=3)
    with pytest.raises(ShardMismatchError, match="every shard this reader was given differs"):
        list(reader)
    with pytest.raises(ShardMismatchError, match="sha256 differs from the manifest"):
        list(real_chunks(str(root), 4, torch.device("cpu"), chunk_size=8))


def test_webdataset_opens_s3_shards_through_boto3(cli_build, small_dataset):
    shard = load_manifest(small_dataset).shards_at(16)[0]
    url = S3Url(BUCKET, "cli").join(shard.path)
    samples = list(wds.WebDataset(str(url), shardshuffle=False))
    assert len(samples) == shard.count


def test_a_read_cut_mid_stream_resumes_where_it_stopped(env, small_dataset, caplog):
    shard = load_manifest(small_dataset).shards_at(32)[0].path
    root = upload_copy(small_dataset, "resume")
    with storage.ObjectStream(root.join(shard)) as stream, caplog.at_level(logging.WARNING):
        head = stream.read(1000)
        stream._body.close()  # the connection drops: the next read gets a short body
        rest = stream.readall()
    assert head + rest == (small_dataset / shard).read_bytes()
    assert [r for r in caplog.records if "failed at byte 1000" in r.getMessage()]


def test_multipart_upload_checksum_is_checked_and_a_rerun_sends_nothing(env, tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "PART_BYTES", 5 << 20)  # S3's smallest part
    monkeypatch.setattr(writer, "MULTIPART_THRESHOLD", 5 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 << 20))
    url = S3Url(BUCKET, "multipart/big.bin")
    assert writer.put_file(big, url) is True
    head = client().get_object(Bucket=BUCKET, Key=url.key, ChecksumMode="ENABLED")
    head["Body"].close()
    assert head["ChecksumSHA256"].endswith("-3")  # three parts: S3's composite checksum
    assert writer.put_file(big, url) is False
