"""The metric registry on real shards: names, the evaluation reader, distributed evaluation
against one process, the real-statistics cache and the offline Inception rule."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainers.data.format import load_manifest
from trainers.data.reader import decode_image, ustar_members
from trainers.metrics import registry
from trainers.metrics.registry import Evaluation, evaluate, get_metric, real_chunks
from trainers.networks.began import BEGANDiscriminator, BEGANGenerator


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
    parts = [
        part
        for rank in (0, 1, 2)
        for part in real_chunks(small_dataset, 16, torch.device("cpu"), limit, rank, 3, 7)
    ]
    parts.sort(key=lambda part: part[0])  # chunks of 7 cross the shard edges at 16 and 32
    torch.testing.assert_close(torch.cat([images for _, images in parts]), expected)


def _networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(4)
    kwargs = dict(resolution=32, latent_dim=8, channels=8)
    return BEGANGenerator(**kwargs).eval(), BEGANDiscriminator(**kwargs).eval()


def _evaluation(data: Path) -> Evaluation:
    generator, discriminator = _networks()
    return Evaluation(
        generator, 32, data, seed=3, discriminator=discriminator, began_gamma=0.5, chunk_size=8
    )


def _rank(rank: int, data: Path, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2
    )
    try:
        torch.set_num_threads(1)
        torch.save(evaluate(["swd1k", "m_global"], _evaluation(data)), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_measure_what_one_process_measures(small_dataset, tmp_path):
    data = tmp_path / "data"
    data.symlink_to(small_dataset)  # its own statistics folder: each side computes the reals
    single = evaluate(["swd1k", "m_global"], _evaluation(data))
    assert set(single) == {"swd1k", "swd1k_32", "swd1k_16", "m_global"}
    for cached in (data.parent / "data.stats" / "32").glob("*.npy"):
        cached.unlink()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank, args=(data, tmp_path), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(single, rel=1e-6)


def test_swd_real_side_is_cached_per_dataset_version(small_dataset, tmp_path):
    data = tmp_path / "data"
    data.symlink_to(small_dataset)
    first = evaluate(["swd1k"], _evaluation(data))
    (cached,) = (tmp_path / "data.stats" / "32").glob("swd1k-*.npy")
    stamp = cached.stat().st_mtime_ns
    assert evaluate(["swd1k"], _evaluation(data)) == first
    assert cached.stat().st_mtime_ns == stamp  # read, not recomputed


class _Replay(nn.Module):
    """A 'generator' that returns the dataset's own images in turn: its distribution is the
    real one, so a distance from it measures the metric's floor."""

    latent_dim = 1

    def __init__(self, images: torch.Tensor, shift: float = 0.0):
        super().__init__()
        self.images, self.shift = images, shift

    def sample_latents(self, n, generator, device):
        return torch.randint(len(self.images), (n, 1), generator=generator).to(device)

    def forward(self, z, resolution, fade_alpha=1.0):
        return self.images[z[:, 0]] + self.shift


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
        shift: evaluate(["fid1k", "kid1k"], _PooledFeatures(_Replay(real, shift), 32, data))
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
    monkeypatch.setattr(registry, "_warned", set())
    data = tmp_path / "data"
    data.symlink_to(small_dataset)
    with caplog.at_level(logging.WARNING, logger="trainers.metrics.registry"):
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
    evaluation.discriminator = None
    with caplog.at_level(logging.WARNING, logger="trainers.metrics.registry"):
        assert evaluate(["m_global"], evaluation) == {}
    assert "m_global skipped" in caplog.text
