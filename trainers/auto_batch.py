"""`auto_batch`: per resolution, the largest power-of-two batch per worker whose trial step
stays within a fraction of the GPU's memory. On CPU there is no such limit to measure, so the
config's table stands (with a logged note)."""

from __future__ import annotations

import logging

import torch

from trainers import distributed
from trainers.config import TrainConfig
from trainers.losses.base import StepState
from trainers.precision import autocast_dtype

log = logging.getLogger(__name__)

MAX_BATCH_PER_WORKER = 1024  # beyond this a bigger batch stops paying on any current GPU


def _trial_peak_bytes(config: TrainConfig, resolution: int, batch: int, device) -> int:
    """Peak GPU memory of one step of every phase at (resolution, batch), on fresh networks,
    mid fade-in where a fade-in exists (both the old and the new path are alive)."""
    family = config.family
    with torch.random.fork_rng(devices=[device]):  # leaves the run's random streams untouched
        generator = family.build_generator().to(device)
        discriminator = family.build_discriminator().to(device)
        loss = family.build_loss(generator, discriminator)
        fading = resolution > config.resolutions[0]  # only a growing family has a later one
        state = StepState(
            resolution,
            0.5 if fading else 1.0,
            torch.Generator(device).manual_seed(0),
            autocast_dtype(config.precision),
        )
        real = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
        optimizers = {
            name: torch.optim.Adam(module.parameters(), lr=1e-9)
            for name, module in (("G", generator), ("D", discriminator))
        }
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for phase in family.phases():
            generator.requires_grad_(phase.trains == "G")
            discriminator.requires_grad_(phase.trains == "D")
            loss.accumulate_gradients(phase, real, state)
            optimizers[phase.trains].step()
            optimizers[phase.trains].zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)


def choose_batch_per_resolution(config: TrainConfig, device: torch.device) -> dict[int, int]:
    """Global batch per resolution (per-worker choice × workers, the smallest over ranks)."""
    if device.type != "cuda":
        log.info("auto_batch: no GPU memory to measure on %s; using batch_per_resolution", device)
        return dict(config.batch_per_resolution)
    budget = (
        config.auto_batch_memory_fraction * torch.cuda.get_device_properties(device).total_memory
    )
    group = config.family.batch_multiple
    chosen = {}
    for resolution in config.resolutions:
        best, batch = 0, max(1, group)
        while batch <= MAX_BATCH_PER_WORKER:
            try:
                peak = _trial_peak_bytes(config, resolution, batch, device)
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
            if peak > budget:
                break
            best, batch = batch, batch * 2
        if best == 0:
            raise RuntimeError(
                f"auto_batch: even {max(1, group)} images per worker at {resolution}² exceed "
                f"{config.auto_batch_memory_fraction:.0%} of {device}'s memory"
            )
        chosen[resolution] = best
    if distributed.world_size() > 1:  # every rank must use the same batch
        values = torch.tensor([chosen[r] for r in config.resolutions], device=device)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MIN)
        chosen = dict(zip(config.resolutions, values.tolist(), strict=True))
    world = distributed.world_size()
    result = {resolution: batch * world for resolution, batch in chosen.items()}
    log.info("auto_batch: global batch per resolution %s", result)
    return result
