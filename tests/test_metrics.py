"""The metric registry on real shards: names, the evaluation reader, distributed evaluation
against one process, the real-statistics cache and the offline Inception rule."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainers import distributed
from trainers.data.reader import decode_image, real_chunks, ustar_members
from trainers.data.storage import load_manifest
from trainers.families.began import Began, BeganConfig
from trainers.families.wgan_gp import WganGp, WganGpConfig
from trainers.metrics import driver
from trainers.metrics.collective import EvaluationTimeout, evaluation_group, gather_chunks
from trainers.metrics.driver import evaluate
from trainers.metrics.evaluation import Evaluation
from trainers.metrics.registry import get_metric
from trainers.prior import LatentPrior
from trainers.sampling import Sampler


def test_names_fix_the_measurement():
    assert get_metric("fid50k").num_fake == 50_000
    assert get_metric("kid2k").num_fake == 2_000
    assert get_metric("swd16k").num_images == 16_000
    assert get_metric("m_global").name == "m_global"
    for bad in ("fid", "fid0k", "fid50", "FID50k", "is50k"):
        with pytest.raises(ValueError, match="registered: fid<N>k"):
            get_metric(bad)


def _manifest_order(data: Path, resolution: int) -> torch.Tensor:
    images = []
    for shard in load_manifest(data).shards_at(resolution):
        with open(data / shard.path, "rb") as stream:
            images += [decode_image(p) for n, p in ustar_members(stream) if n.endswith(".png")]
    return torch.stack(images).float() / 127.5 - 1


@pytest.mark.parametrize("limit", [None, 21])
def test_real_chunks_split_over_ranks_give_every_image_once_in_order(small_dataset, limit):
    expected = _manifest_order(small_dataset, 16)[:limit]
    cpu = torch.device("cpu")
    parts = [
        part
        for rank in (0, 1, 2)
        for part in real_chunks(
            small_dataset, 16, cpu, chunk_size=7, limit=limit, rank=rank, world_size=3
        )
    ]
    parts.sort(key=lambda part: part[0])  # chunks of 7 cross the shard edges at 16 and 32
    torch.testing.assert_close(torch.cat([images for _, images in parts]), expected)


def _evaluation(data: Path) -> Evaluation:
    """BEGAN's nets, whose m_global needs the discriminator and the family's γ."""
    torch.manual_seed(4)
    family = Began(BeganConfig(resolution=32, latent_dim=8, channels=8, gamma=0.5))
    generator, discriminator = family.build_generator(), family.build_discriminator()
    sampler = Sampler.of(generator, family.prior, 32)
    return Evaluation(
        sampler,
        data,
        seed=3,
        discriminator=discriminator.eval(),
        family_metrics=family.metrics(),
        chunk_size=8,
    )


def _wgan_gp_evaluation(data: Path) -> Evaluation:
    """WGAN-GP's G as the loop holds it: BatchNorm in train mode, synced over the ranks."""
    torch.manual_seed(4)
    family = WganGp(WganGpConfig(resolution=32, latent_dim=8, channels=4))
    generator = distributed.sync_batch_norm(family.build_generator(), torch.device("cpu"))
    for _ in range(3):  # running statistics of a few training batches, alike on every rank
        generator(LatentPrior("normal", 8).seeded(16, 1), 32)
    return Evaluation(Sampler.of(generator.train(), family.prior, 32), data, chunk_size=8)


def _measure(data: Path) -> dict[str, float]:
    return evaluate(["swd1k", "m_global"], _evaluation(data)) | {
        f"wgan_gp/{k}": v for k, v in evaluate(["swd1k"], _wgan_gp_evaluation(data)).items()
    }


def _rank(rank: int, world_size: int, data: Path, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        torch.save(_measure(data), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_world_size_measures_what_one_process_measures(small_dataset, tmp_path):
    """40 images in chunks of 8: 5 chunks, which 2 and 3 ranks split unevenly (3/2, 2/2/1);
    the value is the one-process value whatever the split, and no rank waits on another."""
    data = tmp_path / "data"
    data.symlink_to(small_dataset)  # its own statistics folder: each side computes the reals
    single = _measure(data)
    assert {"swd1k", "swd1k_32", "swd1k_16", "m_global", "wgan_gp/swd1k"} <= set(single)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for world_size in (2, 3):
        for cached in (data.parent / "data.stats" / "32").glob("*.npy"):
            cached.unlink()
        run = tmp_path / f"world{world_size}"
        run.mkdir()
        mp.spawn(_rank, args=(world_size, data, run), nprocs=world_size, join=True)
        for rank in range(world_size):
            measured = torch.load(run / f"rank{rank}.pt")
            assert measured == pytest.approx(single, rel=1e-6), (world_size, rank)


def _lonely_rank(rank: int, out: Path) -> None:
    """Rank 1 skips the gather that rank 0 enters: rank 0 must fail, not wait for good."""
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2
    )
    try:
        evaluation_group()  # both ranks begin an evaluation
        if rank == 0:
            with pytest.raises(EvaluationTimeout, match="rank 0 waited over 3 s"):
                gather_chunks([(0, torch.zeros(2))])
            (out / "raised").touch()
        else:
            while not (out / "raised").exists():
                time.sleep(0.05)
    finally:
        dist.destroy_process_group()


def test_a_rank_left_alone_in_an_evaluation_fails_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_EVAL_TIMEOUT_S", "3")  # read by the spawned ranks' imports
    mp.spawn(_lonely_rank, args=(tmp_path,), nprocs=2, join=True)
    assert (tmp_path / "raised").exists()


def test_swd_real_side_is_cached_per_dataset_version(small_dataset, tmp_path):
    data = tmp_path / "data"
    data.symlink_to(small_dataset)
    first = evaluate(["swd1k"], _evaluation(data))
    (cached,) = (tmp_path / "data.stats" / "32").glob("swd1k-*.npy")
    stamp = cached.stat().st_mtime_ns
    assert evaluate(["swd1k"], _evaluation(data)) == first
    assert cached.stat().st_mtime_ns == stamp  # read, not recomputed


class _Replay(nn.Module):
    """A 'generator' that returns the dataset's own images, picked by a U[-1, 1] latent: its
    distribution is the real one, so a distance from it measures the metric's floor."""

    def __init__(self, images: torch.Tensor, shift: float = 0.0):
        super().__init__()
        self.images, self.shift = images, shift

    def forward(self, z):
        index = ((z[:, 0] + 1) / 2 * len(self.images)).long().clamp(0, len(self.images) - 1)
        return self.images[index] + self.shift


def _replay(images: torch.Tensor, shift: float = 0.0) -> Sampler:
    return Sampler(_Replay(images, shift), LatentPrior("uniform", 1), images.shape[-1])


class _PooledFeatures(Evaluation):
    """Cheap 48-d features in place of Inception's 2048 (Inception itself is tested in
    test_inception.py; here it is the registry's plumbing: caching, fakes, FID/KID)."""

    def inception(self) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())


def test_fid_and_kid_rise_with_the_distance_from_the_real_images(small_dataset, tmp_path):
    data = tmp_path / "data"
    data.symlink_to(small_dataset)
    real = _manifest_order(small_dataset, 32)
    scores = {
        shift: evaluate(["fid1k", "kid1k"], _PooledFeatures(_replay(real, shift), data))
        for shift in (0.0, 0.1, 0.5)
    }
    fid, kid = ([scores[shift][name] for shift in (0.0, 0.1, 0.5)] for name in ("fid1k", "kid1k"))
    assert 0 <= fid[0] < 0.05 * fid[1] < 0.05 * fid[2], fid
    # the replayed 40 images repeat in every 40-image subset of the fakes: KID's floor is
    # above 0 here, still well below a small shift's
    assert kid[0] < 0.5 * kid[1] < 0.05 * kid[2], kid
    assert list((tmp_path / "data.stats" / "32").glob("inception2015-*.npy"))


def test_without_inception_weights_fid_is_skipped_with_one_warning(
    small_dataset, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("GANFORGE_OFFLINE", "1")
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GANFORGE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(driver, "_warned", set())
    data = tmp_path / "data"
    data.symlink_to(small_dataset)
    with caplog.at_level(logging.WARNING, logger="trainers.metrics.driver"):
        for _ in range(2):
            results = evaluate(["fid1k", "kid1k", "swd1k"], _evaluation(data))
    assert set(results) == {"swd1k", "swd1k_32", "swd1k_16"}
    (warning,) = caplog.records
    assert warning.getMessage().startswith("fid1k, kid1k skipped")
    assert "GANFORGE_INCEPTION_WEIGHTS" in warning.getMessage()


def test_m_global_needs_began(small_dataset, tmp_path, caplog):
    data = tmp_path / "data"
    data.symlink_to(small_dataset)
    evaluation = _evaluation(data)
    evaluation.family_metrics = {}  # another family's generator
    with caplog.at_level(logging.WARNING, logger="trainers.metrics.driver"):
        assert evaluate(["m_global"], evaluation) == {}
    assert "m_global skipped" in caplog.text
