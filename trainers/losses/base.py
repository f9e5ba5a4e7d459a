"""What the generic loop knows about a GAN family's loss: phases and one method per phase.

The loop walks `phases` in order every step, runs a phase when `step % interval == 0`,
lets only that phase's module require gradients, zeroes its gradients, asks the loss to
accumulate them, averages them over ranks, and steps that module's optimizer. Everything
family-specific (regularizers, running state such as BEGAN's k_t) lives in the loss class.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from trainers.precision import autocast

if TYPE_CHECKING:
    from trainers.prior import LatentPrior


@dataclass(frozen=True)
class Phase:
    name: str  # also the MLflow metric prefix: "D/loss", "G/loss"
    trains: Literal["G", "D"]  # the module whose parameters this phase updates
    interval: int = 1  # run on steps where step % interval == 0 (n_critic for WGAN-GP's G)


@dataclass
class StepState:
    """Where training stands for this step; built by the loop, read by the loss."""

    resolution: int  # pixels per side of this step's real and fake images
    fade_alpha: float  # ProGAN fade-in weight of the newest block; 1.0 outside a fade-in
    generator: torch.Generator  # latents and interpolation weights; seeded alike on every rank
    autocast_dtype: torch.dtype | None = None  # precision: bf16; None runs in float32
    rank: int = 0
    world_size: int = 1

    def rows(self, n: int, draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """This rank's n rows of one draw of n x world_size rows, made alike on every rank: the
        random numbers of a step do not depend on how its global batch is split over workers."""
        return draw(n * self.world_size)[self.rank * n : (self.rank + 1) * n]


class GanLoss(abc.ABC):
    """Owns running G and D for each phase, the family's regularizers and running state."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, prior: LatentPrior):
        self.G = generator
        self.D = discriminator
        self.prior = prior  # G's latents: the family's prior

    def generate(self, n: int, state: StepState, device: torch.device) -> torch.Tensor:
        """n fake images [n, 3, R, R] at the step's resolution and fade-in, as float32 so losses
        mix them with real images and reduce in full precision."""
        return self.generate_from(self.latents(n, state, device), state)

    def latents(self, n: int, state: StepState, device: torch.device) -> torch.Tensor:
        """This rank's n latents of the step's draw from the prior."""
        return state.rows(n, lambda m: self.prior.sample(m, state.generator, device))

    def generate_from(self, latents: torch.Tensor, state: StepState) -> torch.Tensor:
        """G's images for `latents`, as `generate`."""
        with autocast(latents.device, state.autocast_dtype):
            images = self.G(latents, state.resolution, state.fade_alpha)
        return images.float()

    def discriminate(
        self, images: torch.Tensor, state: StepState, full_precision: bool = False
    ) -> torch.Tensor:
        """D's output for `images` (scores [N] or reconstructions), as float32; a
        `full_precision` pass runs in float32 whatever the step's autocast dtype."""
        with autocast(images.device, None if full_precision else state.autocast_dtype):
            output = self.D(images, state.resolution, state.fade_alpha)
        return output.float()

    @abc.abstractmethod
    def accumulate_gradients(
        self, phase: Phase, real: torch.Tensor, state: StepState
    ) -> dict[str, torch.Tensor]:
        """Run the networks for `phase` on `real` ([N, 3, R, R] in [-1, 1]), call backward on
        the phase's loss, and return detached scalar tensors to log (keys without the phase
        prefix, e.g. {"loss": ..., "gradient_penalty": ...}). Must not step optimizers."""

    def end_step(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Update running state after all phases of a step ran (e.g. BEGAN's k_t) from the
        metrics those phases returned, averaged over ranks and keyed "<phase name>/<key>"
        (e.g. "D/loss"); return extra metrics."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Running state to checkpoint (tensors only, so `weights_only=True` loads it)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        assert not state, f"{type(self).__name__} has no running state, got {sorted(state)}"
