"""WGAN-GP (Gulrajani et al. 2017): DCGAN-style G and D (the paper's "critic"), Wasserstein loss
with gradient penalty, n_critic D steps per G step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainers.families.base import AdamConfig, Beta, Family, FixedResolutionConfig, Strict


class WganGpAdam(AdamConfig):
    lr: float = Field(default=1e-4, gt=0)  # the paper's α
    betas: tuple[Beta, Beta] = (0.0, 0.9)  # the paper's β1, β2


class WganGpOptimizers(Strict):
    G: WganGpAdam = WganGpAdam()
    D: WganGpAdam = WganGpAdam()


class WganGpConfig(FixedResolutionConfig):
    """Defaults are the official code's 64² DCGAN setting (gan_64x64.py, MODE wgan-gp)."""

    family: Literal["wgan_gp"] = "wgan_gp"
    latent_dim: int = Field(default=128, ge=1)  # official code's noise size
    channels: int = Field(default=64, ge=1)  # filters next to the image: DIM in the official nets
    kernel_size: Literal[4, 5] = 5  # official: 5×5 (transposed) convolutions, stride 2
    # official: LayerNorm on D's convs 2-4 (its Normalize() under MODE wgan-gp); batch norm
    # would mix the samples whose gradients the penalty takes one by one
    discriminator_norm: Literal["none", "layer"] = "layer"
    init_std: float | None = Field(default=0.02, gt=0)  # official: N(0, 0.02); None: PyTorch's
    n_critic: int = Field(default=5, ge=1)  # D steps per G step (the paper's name)
    gp_weight: float = Field(default=10.0, ge=0)  # λ: the paper's penalty weight
    optimizers: WganGpOptimizers = WganGpOptimizers()


class WganGp(Family):
    name = "wgan_gp"
    config_class = WganGpConfig
    config: WganGpConfig

    def build_generator(self):
        from trainers.networks.dcgan import DCGANGenerator

        c = self.config
        return DCGANGenerator(c.resolution, c.latent_dim, c.channels, c.kernel_size, c.init_std)

    def build_discriminator(self):
        from trainers.networks.dcgan import DCGANDiscriminator

        c = self.config
        return DCGANDiscriminator(
            c.resolution, c.channels, c.kernel_size, c.discriminator_norm, c.init_std
        )

    def build_loss(self, generator, discriminator):
        from trainers.losses.wgan_gp import WGANGPLoss

        return WGANGPLoss(generator, discriminator, self.prior, gp_weight=self.config.gp_weight)

    def phases(self):
        from trainers.losses.wgan_gp import wgan_gp_phases

        return wgan_gp_phases(self.config.n_critic)
