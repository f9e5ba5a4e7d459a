"""What a GAN family is, in one place: its config, networks, loss and phases, latent prior,
optimizers and their learning-rate schedule, growth schedule and evaluation extras.

The generic loop, the sampler, the launcher, the CLI and the registry ask a `Family` for these
and know no family by name. Adding a family is a network file, a loss file, a family file (a
`FamilyConfig` subclass and a `Family` subclass) and a preset; a family outside this package
registers through the `ganforge.families` entry point group (trainers/families/__init__.py).

Nothing here imports torch at module level: configs validate (and usage errors are reported)
before the heavy imports.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainers.data.format import MAX_RESOLUTION, MIN_RESOLUTION
from trainers.prior import LatentPrior
from trainers.schedule import GrowthSchedule, Stage

if TYPE_CHECKING:
    from torch import nn

    from trainers.losses.base import GanLoss, Phase
    from trainers.metrics.evaluation import Evaluation

Resolution = Annotated[int, Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)]
Beta = Annotated[float, Field(ge=0, lt=1)]
NETWORKS = ("G", "D")  # the two networks every family trains, by their phase names


class Strict(BaseModel):
    """Unknown keys are errors, so a typo never trains with a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AdamConfig(Strict):
    """One network's Adam. Families subclass it to set their paper's defaults."""

    lr: float = Field(default=1e-4, gt=0)  # α at the start of training
    betas: tuple[Beta, Beta] = (0.9, 0.999)  # β1, β2
    eps: float = Field(default=1e-8, gt=0)  # ε


class FamilyConfig(Strict):
    """The `model:` section of a training config; each family subclasses it with a
    `family: Literal[...]` tag, its own fields and an `optimizers` section."""

    family: str
    resolution: Resolution  # pixels per side of the generated images (where growing ends)
    latent_dim: int = Field(ge=1)


class FixedResolutionConfig(FamilyConfig):
    """A family whose nets are built for one resolution: 32, 64 or 128 (the papers' range)."""

    resolution: Resolution = 64  # the papers' main results are at 64²

    @field_validator("resolution")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in (32, 64, 128):
            raise ValueError(f"must be 32, 64 or 128 for the {cls.__name__} nets, got {value}")
        return value


MetricFunction = Callable[["Evaluation"], dict[str, float]]


class Family(abc.ABC):
    """A family's behaviour, built from its config (`Family(config)`): one object answers
    everything callers need to know about the family."""

    name: ClassVar[str]  # the `model.family` tag
    config_class: ClassVar[type[FamilyConfig]]
    metric_names: ClassVar[tuple[str, ...]] = ()  # the names `metrics()` measures

    def __init__(self, config: FamilyConfig):
        self.config = config

    # -- networks and loss (torch is imported by these, not at module level) ------------------

    @abc.abstractmethod
    def build_generator(self) -> nn.Module:
        """G: `forward(latents [N, latent_dim], resolution, fade_alpha)` -> [N, 3, R, R]."""

    @abc.abstractmethod
    def build_discriminator(self) -> nn.Module:
        """D: `forward(images, resolution, fade_alpha)` -> what the family's loss reads."""

    @abc.abstractmethod
    def build_loss(self, generator: nn.Module, discriminator: nn.Module) -> GanLoss: ...

    @abc.abstractmethod
    def phases(self) -> list[Phase]:
        """The phases the loop walks every step, in order."""

    # -- what the loop, the sampler and the launcher ask ---------------------------------------

    @property
    def prior(self) -> LatentPrior:
        return LatentPrior("normal", self.config.latent_dim)

    @property
    def resolutions(self) -> list[int]:
        """Every resolution trained, in order (one for a fixed-resolution family)."""
        return [self.config.resolution]

    @property
    def growth_schedule(self) -> GrowthSchedule:
        """Resolution and fade-in at any kimg (a fixed-resolution family: one stage)."""
        return GrowthSchedule(tuple(self.resolutions), fade_kimg=1.0, stable_kimg=1.0)

    @property
    def batch_multiple(self) -> int:
        """A per-worker batch must be a multiple of this (ProGAN: the minibatch-stddev group)."""
        return 1

    @property
    def ema_beta(self) -> float | None:
        """Decay of an EMA copy of G that samples and metrics use; None keeps no copy."""
        return None

    def adam(self, network: str) -> AdamConfig:
        """The Adam settings of network "G" or "D"."""
        return getattr(self.config.optimizers, network)

    def learning_rate(self, network: str, kimg: float, resolution: int) -> float:
        """Adam's α for `network` at this point of training (constant by default)."""
        return self.adam(network).lr

    def resets_optimizers(self, before: Stage, after: Stage) -> bool:
        """Whether Adam's state starts afresh between two consecutive steps' stages."""
        return False

    def metrics(self) -> dict[str, MetricFunction]:
        """Metrics only this family has, by name (BEGAN: m_global), one per `metric_names`."""
        return {}
