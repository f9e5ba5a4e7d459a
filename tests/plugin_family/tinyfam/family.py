"""The family file: config, builders and phases."""

from __future__ import annotations

from typing import Literal

from trainers.families.base import AdamConfig, Family, FamilyConfig, Strict


class TinyOptimizers(Strict):
    G: AdamConfig = AdamConfig(lr=2e-4, betas=(0.5, 0.999))
    D: AdamConfig = AdamConfig(lr=2e-4, betas=(0.5, 0.999))


class TinyConfig(FamilyConfig):
    family: Literal["tiny"] = "tiny"
    resolution: int = 16
    latent_dim: int = 8
    optimizers: TinyOptimizers = TinyOptimizers()


class TinyFamily(Family):
    name = "tiny"
    config_class = TinyConfig

    def build_generator(self):
        from tinyfam.network import TinyGenerator

        return TinyGenerator(self.config.latent_dim)

    def build_discriminator(self):
        from tinyfam.network import TinyDiscriminator

        return TinyDiscriminator()

    def build_loss(self, generator, discriminator):
        from tinyfam.loss import NonSaturatingLoss

        return NonSaturatingLoss(generator, discriminator, self.prior)

    def phases(self):
        from tinyfam.loss import tiny_phases

        return tiny_phases()
