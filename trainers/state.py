"""What training changes and a checkpoint keeps, on one worker: the networks (G, D and G's EMA
copy where the family keeps one), their optimizers, the loss's running state, progress and this
rank's random streams; written and restored exactly, also onto another number of workers."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from trainers import distributed
from trainers.checkpoint import (
    Progress,
    read_progress,
    read_rng,
    read_state,
    restore_rng,
    write_checkpoint,
)
from trainers.config import TrainConfig
from trainers.ema import sampled_generator
from trainers.precision import autocast_dtype
from trainers.sampling import Sampler
from trainers.schedule import Stage

log = logging.getLogger(__name__)


class TrainingState:
    """One rank's copy of the training state, built from the config: the same on every rank,
    each of which also checkpoints its own random streams."""

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.config, self.device, self.memory_format = config, device, memory_format
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.family = family = config.family
        self.schedule = config.growth_schedule
        self.autocast_dtype = autocast_dtype(config.precision)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        generator, discriminator = family.build_generator(), family.build_discriminator()
        # DCGAN's G has BatchNorm: its statistics must span the global batch, not each rank's.
        self.G = distributed.sync_batch_norm(generator, device).to(
            device, memory_format=memory_format
        )
        self.D = discriminator.to(device, memory_format=memory_format)
        self.loss = family.build_loss(self.G, self.D)
        self.phases = family.phases()
        self.G_ema = None
        if family.ema_beta is not None:
            self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.progress = Progress()
        # alike on every rank: each takes its rows of the global draw (StepState.rows)
        self.latent_generator = torch.Generator(device).manual_seed(config.seed * 7919)
        self.optimizers = self._new_optimizers(self.stage.resolution)

    @property
    def stage(self) -> Stage:
        """The stage of the latest step (the schedule's first before any): what G samples at."""
        return self.progress.stage(self.schedule)

    def sampler(self) -> Sampler:
        """The generator users would sample now (G_ema where kept) at the current stage."""
        stage = self.stage
        return Sampler.of(
            sampled_generator(self.G, self.G_ema),
            self.family.prior,
            stage.resolution,
            stage.fade_alpha,
            self.autocast_dtype,
        )

    # -- optimizers -------------------------------------------------------------------------

    def _new_optimizers(self, resolution: int) -> dict[str, torch.optim.Optimizer]:
        """A fresh Adam per network, with the family's settings for it."""
        optimizers = {}
        for name, module in (("G", self.G), ("D", self.D)):
            adam = self.family.adam(name)
            lr = self.family.learning_rate(name, self.progress.kimg, resolution)
            optimizers[name] = torch.optim.Adam(
                module.parameters(), lr=lr, betas=adam.betas, eps=adam.eps
            )
        return optimizers

    def reset_optimizers(self, resolution: int) -> None:
        """Adam's state starts afresh (the family's growth asks for it), counted in progress."""
        self.optimizers = self._new_optimizers(resolution)
        self.progress.optimizer_resets += 1

    # -- checkpoints ------------------------------------------------------------------------

    def restore(self, directory: Path | None) -> None:
        """Continue from the checkpoint in `directory`; None starts afresh, every rank from rank
        0's initial weights."""
        if directory is None:
            distributed.broadcast_module(self.G)
            distributed.broadcast_module(self.D)
            if self.G_ema is not None:
                self.G_ema.load_state_dict(self.G.state_dict())
        else:
            self._load(directory)
        self.progress.world_size = self.world_size

    def _load(self, directory: Path) -> None:
        state = read_state(directory, self.device)
        self.progress = read_progress(directory)
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.optimizers = self._new_optimizers(self.stage.resolution)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[f"optimizer_{name}"])
        self.loss.load_state_dict(state["loss"])
        rng = read_rng(directory, self.rank)
        if rng is None:
            log.warning(
                "checkpoint has no RNG state for rank %d (written by fewer workers): "
                "this rank continues with fresh random streams",
                self.rank,
            )
        else:
            restore_rng(rng, self.latent_generator)
        self.progress.loader_epoch += 1  # the stream restarts after every checkpoint
        log.info("resumed at kimg %.3f (step %d)", self.progress.kimg, self.progress.step)
        if self.progress.world_size != self.world_size and self.rank == 0:
            self._log_resize(self.progress.world_size)

    def _log_resize(self, before: int) -> None:
        """An elastic restart on another number of workers: each rank's share of the global
        batch changes so that the global batch (and so the training) stays the same."""
        resolution = self.schedule.at(self.progress.kimg).resolution  # where training goes on
        log.warning(
            "elastic resize: the checkpoint was written by %d workers, training goes on with "
            "%d; global batch at %d² stays %d (per worker %d -> %d)",
            before,
            self.world_size,
            resolution,
            self.config.batch_per_resolution[resolution],
            self.config.batch_per_worker(resolution, before),
            self.config.batch_per_worker(resolution, self.world_size),
        )

    def write(self, directory: Path) -> None:
        """This rank's part of a checkpoint: its RNG streams; rank 0 also writes the networks,
        optimizers, loss state, config and progress."""
        rank0 = self.rank == 0
        write_checkpoint(
            directory,
            rank=self.rank,
            latent_generator=self.latent_generator,
            state=self._state_dict() if rank0 else None,
            config=self.config.model_dump(mode="json") if rank0 else None,
            progress=self.progress,
        )

    def _state_dict(self) -> dict:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else {},
            **{f"optimizer_{k}": v.state_dict() for k, v in self.optimizers.items()},
            "loss": self.loss.state_dict(),
        }
