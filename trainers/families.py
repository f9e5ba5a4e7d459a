"""GAN families by name: each builds its networks, loss and phase list from its config.

Adding a family is a network file, a loss class and one builder here; the loop is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainers.config import BeganModel, ProganModel, TrainConfig, WganGpModel
from trainers.losses.base import GanLoss, Phase
from trainers.losses.began import BEGANLoss, began_phases
from trainers.losses.wgan_gp import WGANGPLoss, wgan_gp_phases
from trainers.networks import began, dcgan, progan


@dataclass
class Family:
    generator: nn.Module
    discriminator: nn.Module
    loss: GanLoss
    phases: list[Phase]
    learning_rate: Callable[[float, int], float]  # (kimg, resolution) -> Adam learning rate
    betas: tuple[float, float]
    adam_eps: float = 1e-8
    ema_beta: float | None = None  # keep an EMA copy of G (ProGAN) when set
    reset_optimizer_on_grow: bool = False

    def optimizer(self, module: nn.Module, lr: float) -> torch.optim.Adam:
        return torch.optim.Adam(module.parameters(), lr=lr, betas=self.betas, eps=self.adam_eps)


def _wgan_gp(config: TrainConfig, model: WganGpModel) -> Family:
    generator = dcgan.DCGANGenerator(
        resolution=model.resolution, latent_dim=model.latent_dim, base_channels=model.base_channels
    )
    critic = dcgan.DCGANCritic(resolution=model.resolution, base_channels=model.base_channels)
    return Family(
        generator,
        critic,
        WGANGPLoss(generator, critic, gp_weight=model.gp_weight),
        wgan_gp_phases(model.n_critic),
        learning_rate=lambda kimg, resolution: config.lr_at(resolution),
        betas=model.betas,
    )


def _began(config: TrainConfig, model: BeganModel) -> Family:
    kwargs = dict(resolution=model.resolution, latent_dim=model.latent_dim, channels=model.channels)
    generator = began.BEGANGenerator(**kwargs)
    discriminator = began.BEGANDiscriminator(**kwargs)

    def learning_rate(kimg: float, resolution: int) -> float:
        halvings = math.floor(kimg / model.lr_halve_every_kimg)
        return max(config.lr_at(resolution) * 0.5**halvings, model.lr_floor)

    return Family(
        generator,
        discriminator,
        BEGANLoss(
            generator,
            discriminator,
            gamma=model.gamma,
            lambda_k=model.lambda_k,
            k_initial=model.k_initial,
        ),
        began_phases(),
        learning_rate=learning_rate,
        betas=model.betas,
    )


def _progan(config: TrainConfig, model: ProganModel) -> Family:
    shared = dict(
        max_resolution=model.resolution, fmap_base=model.fmap_base, fmap_max=model.fmap_max
    )
    generator = progan.ProGANGenerator(latent_dim=model.latent_dim, **shared)
    discriminator = progan.ProGANDiscriminator(mbstd_group_size=model.mbstd_group_size, **shared)
    return Family(
        generator,
        discriminator,
        WGANGPLoss(
            generator, discriminator, gp_weight=model.gp_weight, drift_weight=model.drift_weight
        ),
        wgan_gp_phases(model.n_critic),
        learning_rate=lambda kimg, resolution: config.lr_at(resolution),
        betas=model.betas,
        adam_eps=model.adam_eps,
        ema_beta=model.ema_beta,
        reset_optimizer_on_grow=model.reset_optimizer_on_grow,
    )


BUILDERS: dict[str, Callable[[TrainConfig, object], Family]] = {
    "wgan_gp": _wgan_gp,
    "began": _began,
    "progan": _progan,
}


def build_family(config: TrainConfig) -> Family:
    """Networks on the CPU, initialised from the global torch seed the caller set."""
    return BUILDERS[config.model.family](config, config.model)
