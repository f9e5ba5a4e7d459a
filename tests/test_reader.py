"""The training reader: ranges, equal batches per rank, disjoint shards, corrupt data skipped."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile

import pytest
import torch

from trainers.data.reader import ShardReader, assign_shards, to_model_range, ustar_members
from trainers.data.storage import DatasetNotFoundError, load_manifest


def fingerprints(reader: ShardReader) -> tuple[int, set[str]]:
    batches, seen = 0, set()
    for batch in reader:
        batches += 1
        for image in batch:
            seen.add(hashlib.sha256(image.numpy().tobytes()).hexdigest())
    return batches, seen


def test_batches_are_float_nchw_in_model_range(small_dataset):
    reader = ShardReader(small_dataset, 16, batch_per_worker=8, loader_processes=0)
    batch = next(iter(reader))
    assert batch.shape == (8, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0 and batch.std() > 0.1


def test_three_shards_two_ranks_equal_batch_counts_and_disjoint_data(small_dataset):
    manifest = load_manifest(small_dataset)
    assert len(manifest.shards_at(8)) == 3  # 16 + 16 + 8 samples: does not divide by 2
    results = [
        fingerprints(
            ShardReader(
                small_dataset,
                8,
                batch_per_worker=4,
                rank=rank,
                world_size=2,
                loader_processes=2,
                batches_per_epoch=7,
            )
        )
        for rank in (0, 1)
    ]
    assert [count for count, _ in results] == [7, 7]
    assert not results[0][1] & results[1][1]  # ranks read disjoint shards


def test_default_epoch_is_one_pass_with_equal_counts(small_dataset):
    counts = [
        len(ShardReader(small_dataset, 4, batch_per_worker=5, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert counts == [4, 4]  # 40 samples // (5 per rank * 2 ranks)
    reader = ShardReader(
        small_dataset, 4, batch_per_worker=5, rank=1, world_size=2, loader_processes=2
    )
    assert sum(1 for _ in reader) == 4 and sum(1 for _ in reader) == 4  # every epoch


@pytest.mark.parametrize(
    ("urls", "rank", "world", "expected"),
    [
        (["a", "b", "c"], 0, 2, ["a", "c"]),
        (["a", "b", "c"], 1, 2, ["b"]),
        (["a"], 1, 2, ["a"]),  # fewer shards than ranks: shared, resampled with other seeds
    ],
)
def test_assign_shards_splits_by_rank(urls, rank, world, expected):
    assert assign_shards(urls, rank, world, process=0, processes=1) == expected


def test_assign_shards_splits_by_loader_process_too():
    urls = [f"s{i}" for i in range(8)]
    parts = [assign_shards(urls, r, 2, p, 2) for r in (0, 1) for p in (0, 1)]
    assert sorted(sum(parts, [])) == urls


def test_corrupt_samples_are_skipped_and_counted_never_a_hang(small_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shard = copy / load_manifest(copy).shards_at(8)[0].path
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(shard, "w") as archive:
        for i, (member, data) in enumerate(members):
            if member.name.endswith(".png") and i < 8:  # first 4 images: garbage, same length
                data = b"\x89PNG garbage" + bytes(len(data) - 12)
            archive.addfile(member, io.BytesIO(data))
    reader = ShardReader(copy, 8, batch_per_worker=4, loader_processes=0, batches_per_epoch=12)
    assert sum(1 for _ in reader) == 12
    assert reader.skipped >= 4


def test_ustar_members_read_what_tarfile_reads(small_dataset):
    shard = small_dataset / load_manifest(small_dataset).shards_at(16)[0].path
    with tarfile.open(shard) as archive:
        expected = [(m.name, archive.extractfile(m).read()) for m in archive if m.isfile()]
    with open(shard, "rb") as stream:
        assert list(ustar_members(stream)) == expected
    assert len(expected) == 32  # 16 samples: .png + .json each


@pytest.mark.parametrize("damage", ["truncate", "header_checksum"])
def test_damaged_shard_is_skipped_and_counted_never_a_hang(small_dataset, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shard = copy / load_manifest(copy).shards_at(8)[0].path
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        del data[512 + 20 :]  # inside the first member's data
    else:
        data[10] ^= 0xFF  # a byte of the first member's name: its checksum no longer holds
    shard.write_bytes(bytes(data))
    with open(shard, "rb") as stream, pytest.raises(ValueError, match="truncated|checksum"):
        list(ustar_members(stream))
    reader = ShardReader(copy, 8, batch_per_worker=4, loader_processes=0, batches_per_epoch=12)
    assert sum(1 for _ in reader) == 12  # the other two shards keep the stream going
    assert reader.skipped >= 1


def test_cpu_conversion_matches_the_device_formula():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    expected = pixels.to(torch.float32).div_(127.5).sub_(1.0)
    assert torch.equal(to_model_range(pixels), expected)
    assert to_model_range(pixels).min() == -1.0 and to_model_range(pixels).max() == 1.0


def test_accelerator_device_gets_uint8_and_converts_there(small_dataset):
    """The GPU path on CPU: the `meta` device stands in for cuda (no data, real dispatch)."""
    reader = ShardReader(small_dataset, 16, batch_per_worker=8, loader_processes=0, device="meta")
    assert next(iter(reader._pipeline())).dtype == torch.uint8  # loaders ship 4x fewer bytes
    batch = next(iter(reader))
    assert batch.device.type == "meta" and batch.dtype == torch.float32
    assert batch.shape == (8, 3, 16, 16)


def test_missing_resolution_names_the_build_command(small_dataset):
    with pytest.raises(DatasetNotFoundError, match="ganforge data build .*--max-resolution 64"):
        ShardReader(small_dataset, 64, batch_per_worker=4)
