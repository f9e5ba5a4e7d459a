"""DCGAN-style generator and critic of WGAN-GP (Gulrajani et al. 2017) at 32, 64 or 128 px."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from trainers.networks.layers import (
    LEAKY_RELU_SLOPE,
    check_fixed_resolution,
    normal_latents,
    validate_resolution,
)

MIN_RESOLUTION = 32
MAX_RESOLUTION = 128


def _channels_per_scale(resolution: int, base_channels: int) -> list[int]:
    """Feature maps from the 4×4 end to the full-resolution end: halving per doubling of size,
    base_channels next to the image (64 px, base 64: [512, 256, 128, 64])."""
    doublings = resolution.bit_length() - 3  # 4 · 2**doublings = resolution
    return [base_channels * 2**i for i in reversed(range(doublings))]


class DCGANGenerator(nn.Module):
    """Linear to 4×4 features, then stride-2 transposed convs (BatchNorm + ReLU) to RGB, tanh."""

    def __init__(self, resolution: int = 64, latent_dim: int = 128, base_channels: int = 64):
        super().__init__()
        validate_resolution(resolution, MIN_RESOLUTION, MAX_RESOLUTION, "DCGANGenerator")
        self.init_kwargs = {
            "resolution": resolution,
            "latent_dim": latent_dim,
            "base_channels": base_channels,
        }
        self.resolution = resolution
        self.latent_dim = latent_dim  # 128 in the WGAN-GP code
        channels = _channels_per_scale(resolution, base_channels)
        # bias=False before BatchNorm: its shift makes a bias redundant.
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, channels[0] * 4 * 4, bias=False),
            nn.Unflatten(1, (channels[0], 4, 4)),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        ]
        for in_channels, out_channels in pairwise(channels):
            layers += [
                nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
        layers += [nn.ConvTranspose2d(channels[-1], 3, 4, stride=2, padding=1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def sample_latents(
        self, n: int, generator: torch.Generator, device: torch.device | str
    ) -> torch.Tensor:
        return normal_latents(n, self.latent_dim, generator, device)

    def forward(self, z: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        check_fixed_resolution(self.resolution, resolution)
        return self.layers(z)


class DCGANCritic(nn.Module):
    """Stride-2 convs with leaky ReLU down to 4×4, then linear to a score. No batch norm: the
    gradient penalty is per sample, and batch norm would mix samples."""

    def __init__(self, resolution: int = 64, base_channels: int = 64):
        super().__init__()
        validate_resolution(resolution, MIN_RESOLUTION, MAX_RESOLUTION, "DCGANCritic")
        self.init_kwargs = {"resolution": resolution, "base_channels": base_channels}
        self.resolution = resolution
        channels = [3, *reversed(_channels_per_scale(resolution, base_channels))]
        layers: list[nn.Module] = []
        for in_channels, out_channels in pairwise(channels):
            layers += [
                nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1),
                nn.LeakyReLU(LEAKY_RELU_SLOPE),
            ]
        layers += [nn.Flatten(), nn.Linear(channels[-1] * 4 * 4, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        check_fixed_resolution(self.resolution, resolution)
        return self.layers(x).squeeze(1)  # [N]
