"""BEGAN (Berthelot et al. 2017): an autoencoder discriminator, k_t equilibrium control, and
the paper's convergence measure M_global as a metric of its own, `m_global`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from trainers.families.base import AdamConfig, Beta, Family, FixedResolutionConfig, Strict
from trainers.prior import LatentPrior

if TYPE_CHECKING:
    from trainers.metrics.evaluation import Evaluation

M_GLOBAL = "m_global"  # the metric's registered name


class BeganAdam(AdamConfig):
    lr: float = Field(default=8e-5, gt=0)  # the reference code's starting learning rate
    # The reference code (carpedm20/BEGAN-tensorflow) defines beta1/beta2 flags but never
    # passes them to tf.train.AdamOptimizer, so it trains with TensorFlow's (0.9, 0.999).
    betas: tuple[Beta, Beta] = (0.9, 0.999)


class BeganOptimizers(Strict):
    G: BeganAdam = BeganAdam()
    D: BeganAdam = BeganAdam()


class BeganConfig(FixedResolutionConfig):
    family: Literal["began"] = "began"
    latent_dim: int = Field(default=64, ge=1)  # N_z = h = 64 in the paper
    channels: int = Field(default=64, ge=1)  # filters next to the image: the paper's n = 64
    # G's n where it differs from D's (the paper: one n for G and both halves of D)
    generator_channels: int | None = Field(default=None, ge=1)
    skip_connections: bool = False  # the paper's optional h0 skips in both decoders
    # the reference code's TF-slim layers: Glorot-uniform weights, zero biases
    initialization: Literal["xavier", "pytorch"] = "xavier"
    gamma: float = Field(default=0.5, gt=0, le=1)  # diversity ratio γ of the paper
    lambda_k: float = Field(default=0.001, gt=0)  # λ_k: k_t's proportional gain
    k_initial: float = Field(default=0.0, ge=0, le=1)  # k_0 = 0 in the paper
    # weight of MSGAN's mode-seeking term in G's loss (losses/began.py); 0: off, as the paper
    mode_seeking: float = Field(default=0.0, ge=0)
    lr_halve_every_kimg: float = Field(default=1600.0, gt=0)  # reference: every 100k steps of 16
    lr_floor: float = Field(default=2e-5, gt=0)  # the reference code stops decaying here
    optimizers: BeganOptimizers = BeganOptimizers()


class Began(Family):
    name = "began"
    config_class = BeganConfig
    metric_names = (M_GLOBAL,)
    config: BeganConfig

    @property
    def prior(self) -> LatentPrior:
        return LatentPrior("uniform", self.config.latent_dim)  # z ~ U[-1, 1], as the paper

    def build_generator(self):
        from trainers.networks.began import BEGANGenerator

        c = self.config
        channels = c.generator_channels or c.channels
        return BEGANGenerator(
            c.resolution, c.latent_dim, channels, c.skip_connections, c.initialization
        )

    def build_discriminator(self):
        from trainers.networks.began import BEGANDiscriminator

        c = self.config
        return BEGANDiscriminator(
            c.resolution, c.latent_dim, c.channels, c.skip_connections, c.initialization
        )

    def build_loss(self, generator, discriminator):
        from trainers.losses.began import BEGANLoss

        c = self.config
        return BEGANLoss(
            generator,
            discriminator,
            self.prior,
            gamma=c.gamma,
            lambda_k=c.lambda_k,
            k_initial=c.k_initial,
            mode_seeking=c.mode_seeking,
        )

    def phases(self):
        from trainers.losses.began import began_phases

        return began_phases()

    def learning_rate(self, network: str, kimg: float, resolution: int) -> float:
        """Halved every lr_halve_every_kimg down to lr_floor, as the reference code."""
        halvings = math.floor(kimg / self.config.lr_halve_every_kimg)
        return max(self.adam(network).lr * 0.5**halvings, self.config.lr_floor)

    def metrics(self):
        return {M_GLOBAL: self._m_global}

    def _m_global(self, evaluation: Evaluation) -> dict[str, float]:
        """M_global = L(x) + |γ L(x) − L(G(z))| (the paper's eq. 5), L the L1 reconstruction
        error of the autoencoder discriminator, over every real image and as many generated."""
        import torch

        from trainers.metrics.collective import gather_chunks
        from trainers.metrics.kinds import MetricUnavailable

        discriminator = evaluation.discriminator
        if discriminator is None:
            raise MetricUnavailable("it needs the checkpoint's discriminator (a model has none)")

        def errors(chunks) -> torch.Tensor:
            parts = []
            for chunk, images in chunks:
                with torch.no_grad():
                    reconstruction = discriminator(images, evaluation.resolution, 1.0)
                parts.append((chunk, (images - reconstruction.float()).abs().mean((1, 2, 3))))
            return gather_chunks(parts)  # [n] per-image L1

        real = errors(evaluation.real_chunks()).double()
        fake = errors(evaluation.fake_chunks(len(real))).double()
        balance = self.config.gamma * real.mean() - fake.mean()
        return {M_GLOBAL: float(real.mean() + balance.abs())}
