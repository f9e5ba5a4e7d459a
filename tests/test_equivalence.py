"""Data-parallel correctness: 2 workers each given half of the global batch end where 1 worker
given the full batch ends (G, D, G_ema, optimizer steps, k_t, ProGAN's growth, mirror flips),
within float tolerance. Real gloo process groups; the only stand-in is the data source
(in-memory tensors split by rank, instead of shards), so both runs see exactly the same
images."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.configs import tiny_config
from trainers.config import TrainConfig
from trainers.loop import DirectorySession, RunOptions, Trainer

GLOBAL_BATCH = 8

# The tiny configs, with a global batch of 8 and a few steps each
CHANGES = {
    "wgan_gp": {"total_kimg": 6 * GLOBAL_BATCH / 1000},  # 6 D steps, 3 G steps
    "began": {
        # A strong k_t gain from a non-zero start: k_t matters in every D step, so a balance
        # term computed per rank (not reduced) would show in k_t and in the weights.
        "model": {"lambda_k": 0.5, "k_initial": 0.3},
        "total_kimg": 5 * GLOBAL_BATCH / 1000,
    },
    "progan": {
        # 4² stable for 2 steps, then 8² fading in for 2 and stable for 2: one transition.
        "model": {
            "resolution": 8,
            "fade_kimg": 2 * GLOBAL_BATCH / 1000,
            "stable_kimg": 2 * GLOBAL_BATCH / 1000,
            "ema_beta": 0.5,
        },
        "total_kimg": 6 * GLOBAL_BATCH / 1000,
    },
}


class InMemoryTrainer(Trainer):
    """Trainer fed from one seeded stream of global batches; rank r takes its rows."""

    def _batches(self, resolution: int) -> Iterator[torch.Tensor]:
        batch = self.config.batch_per_worker(resolution, self.world_size)
        self.state.progress.batch_per_resolution[resolution] = batch * self.world_size
        stream = torch.Generator().manual_seed(resolution)
        while True:
            images = torch.rand(
                batch * self.world_size, 3, resolution, resolution, generator=stream
            )
            yield (images * 2 - 1)[self.rank * batch : (self.rank + 1) * batch]


def snapshot(trainer: Trainer) -> dict:
    state = trainer.state
    tensors = {f"G.{k}": v for k, v in state.G.state_dict().items()}
    tensors |= {f"D.{k}": v for k, v in state.D.state_dict().items()}
    if state.G_ema is not None:
        tensors |= {f"G_ema.{k}": v for k, v in state.G_ema.state_dict().items()}
    tensors |= {f"loss.{k}": v for k, v in state.loss.state_dict().items()}
    progress = state.progress
    return {
        "tensors": tensors,
        "progress": (progress.images, progress.step, progress.resolution),
        "stage": (state.stage.resolution, state.stage.fade_alpha),
        "batch_per_resolution": dict(progress.batch_per_resolution),
    }


def train(config: dict, rank: int, world_size: int, work: Path) -> dict:
    torch.set_num_threads(1)
    trainer = InMemoryTrainer(
        TrainConfig.model_validate(config | {"workers": world_size}),
        RunOptions(run_dir=work / "run" if rank == 0 else None),
        DirectorySession(work / f"session-{world_size}-{rank}"),
    )
    trainer.run()
    return snapshot(trainer)


def _worker(rank: int, world_size: int, config: dict, work: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{work / 'rendezvous'}", rank=rank, world_size=world_size
    )
    try:
        torch.save(train(config, rank, world_size, work), work / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("family", sorted(CHANGES))
def test_two_workers_with_half_batches_equal_one_worker_with_the_full_batch(family, tmp_path):
    # mirror_augment on: its flips, drawn over the global batch, must split as the batch does
    config = tiny_config(
        tmp_path,
        family,
        **CHANGES[family],
        batch_per_resolution={4: GLOBAL_BATCH, 8: GLOBAL_BATCH, 32: GLOBAL_BATCH},
        seed=5,
        sample_every_kimg=0.016,
        log_every_kimg=0.008,
        mirror_augment=True,
    ).model_dump(mode="json")
    single = train(config, 0, 1, tmp_path)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, config, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    for other in ranks:
        assert other["progress"] == single["progress"]
        assert other["stage"] == single["stage"]
        assert other["batch_per_resolution"] == single["batch_per_resolution"]
    # ranks hold bit-identical state: the same averaged gradients and reduced k_t balance
    for key, value in ranks[0]["tensors"].items():
        assert torch.equal(value, ranks[1]["tensors"][key]), key
    # and match the single worker up to the order of floating-point sums
    assert ranks[0]["tensors"].keys() == single["tensors"].keys()
    for key, value in single["tensors"].items():
        torch.testing.assert_close(ranks[0]["tensors"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    if family == "progan":
        assert single["progress"][2] == 8 and single["stage"] == (8, 1.0)  # grew 4² -> 8²
    if family == "began":
        k = single["tensors"]["loss.k_t"].item()
        assert k != pytest.approx(0.3)  # k_t moved: the balance term was exercised
    samples = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert samples, "rank 0 wrote sample grids during the 2-worker run"
