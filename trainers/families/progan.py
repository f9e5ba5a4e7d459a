"""Progressive growing of GANs (Karras et al. 2018): 4² → resolution with fade-in, equalized
learning rate, pixel norm, minibatch stddev, WGAN-GP loss with drift, and a generator EMA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainers.data.format import check_resolution, resolutions_up_to
from trainers.families.base import AdamConfig, Beta, Family, FamilyConfig, Resolution, Strict
from trainers.schedule import GrowthSchedule, Stage


class ProganAdam(AdamConfig):
    lr: float = Field(default=1e-3, gt=0)  # the paper's α
    betas: tuple[Beta, Beta] = (0.0, 0.99)  # the paper's β1, β2
    eps: float = Field(default=1e-8, gt=0)  # the paper's ε


class ProganOptimizers(Strict):
    G: ProganAdam = ProganAdam()
    D: ProganAdam = ProganAdam()


class ProganConfig(FamilyConfig):
    family: Literal["progan"] = "progan"
    resolution: Resolution = 1024  # the resolution growing ends at
    start_resolution: Resolution = 4  # the paper starts at 4²
    latent_dim: int = Field(default=512, ge=1)  # the paper's 512-d latent
    # the official code's widths, not one `channels`: the block at each resolution has
    # min(fmap_base / 2^(stage + 1), fmap_max) feature maps, stage 0 at 4²
    fmap_base: int = Field(default=8192, ge=1)
    fmap_max: int = Field(default=512, ge=1)  # official cap of feature maps per layer
    mbstd_group_size: int = Field(default=4, ge=2)  # minibatch-stddev group of the paper
    fade_kimg: float = Field(default=600.0, gt=0)  # official lod_transition_kimg
    stable_kimg: float = Field(default=600.0, gt=0)  # official lod_training_kimg
    n_critic: int = Field(default=1, ge=1)  # D steps per G step; official: one
    gp_weight: float = Field(default=10.0, ge=0)  # λ of WGAN-GP, as the paper
    drift_weight: float = Field(default=0.001, ge=0)  # ε_drift keeps D's output near 0
    ema_beta: float = Field(default=0.999, ge=0, lt=1)  # the paper's generator EMA decay
    # official train.py: fresh Adam state whenever the level of detail's floor or ceiling
    # changes, i.e. at the start and at the end of every fade-in
    reset_optimizer_on_grow: bool = True
    # official per-resolution learning rates (G_lrate_dict / D_lrate_dict): {resolution: α}
    # for both networks, in place of optimizers.*.lr at those resolutions
    lr_per_resolution: dict[int, float] = {}
    optimizers: ProganOptimizers = ProganOptimizers()

    @field_validator("resolution", "start_resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return check_resolution(value)

    @field_validator("lr_per_resolution")
    @classmethod
    def _positive(cls, table: dict[int, float]) -> dict[int, float]:
        for resolution, lr in table.items():
            check_resolution(resolution)
            if lr <= 0:
                raise ValueError(f"lr_per_resolution[{resolution}] must be > 0, got {lr}")
        return table

    @model_validator(mode="after")
    def _start_below_end(self) -> ProganConfig:
        if self.start_resolution > self.resolution:
            raise ValueError(
                f"start_resolution {self.start_resolution} is above resolution {self.resolution}"
            )
        return self


def detail_span(stage: Stage) -> tuple[int, int]:
    """The level of detail's (floor, ceiling) as resolutions: equal when stable; during the
    fade-in to R, (R/2, R). The official code resets Adam whenever either changes."""
    if stage.fade_alpha < 1.0:
        return stage.resolution // 2, stage.resolution
    return stage.resolution, stage.resolution


class Progan(Family):
    name = "progan"
    config_class = ProganConfig
    config: ProganConfig

    def build_generator(self):
        from trainers.networks.progan import ProGANGenerator

        c = self.config
        return ProGANGenerator(c.resolution, c.latent_dim, c.fmap_base, c.fmap_max)

    def build_discriminator(self):
        from trainers.networks.progan import ProGANDiscriminator

        c = self.config
        return ProGANDiscriminator(c.resolution, c.fmap_base, c.fmap_max, c.mbstd_group_size)

    def build_loss(self, generator, discriminator):
        from trainers.losses.wgan_gp import WGANGPLoss

        c = self.config
        return WGANGPLoss(
            generator,
            discriminator,
            self.prior,
            gp_weight=c.gp_weight,
            drift_weight=c.drift_weight,
        )

    def phases(self):
        from trainers.losses.wgan_gp import wgan_gp_phases

        return wgan_gp_phases(self.config.n_critic)

    @property
    def resolutions(self) -> list[int]:
        c = self.config
        return [r for r in resolutions_up_to(c.resolution) if r >= c.start_resolution]

    @property
    def growth_schedule(self) -> GrowthSchedule:
        c = self.config
        return GrowthSchedule(tuple(self.resolutions), c.fade_kimg, c.stable_kimg)

    @property
    def batch_multiple(self) -> int:
        return self.config.mbstd_group_size

    @property
    def ema_beta(self) -> float:
        return self.config.ema_beta

    def learning_rate(self, network: str, kimg: float, resolution: int) -> float:
        return self.config.lr_per_resolution.get(resolution, self.adam(network).lr)

    def resets_optimizers(self, before: Stage, after: Stage) -> bool:
        return self.config.reset_optimizer_on_grow and detail_span(before) != detail_span(after)
