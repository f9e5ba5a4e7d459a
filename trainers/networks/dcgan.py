"""DCGAN-style generator and discriminator (the paper's "critic") of WGAN-GP (Gulrajani et al.
2017) at 32, 64 or 128 px.

The official code's 64² nets (gan_64x64.py, DCGANGenerator / DCGANDiscriminator) are
kernel_size=5, discriminator_norm="layer", init_std=0.02."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from trainers.networks.layers import LEAKY_RELU_SLOPE, check_fixed_resolution, validate_resolution

MIN_RESOLUTION = 32
MAX_RESOLUTION = 128


def _channels_per_scale(resolution: int, channels: int) -> list[int]:
    """Feature maps from the 4×4 end to the full-resolution end: halving per doubling of size,
    `channels` next to the image (64 px, channels 64: [512, 256, 128, 64])."""
    doublings = resolution.bit_length() - 3  # 4 · 2**doublings = resolution
    return [channels * 2**i for i in reversed(range(doublings))]


def _transposed(in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> nn.Module:
    """Stride-2 transposed conv that exactly doubles the size: 4×4 (padding 1) or 5×5 (padding
    2 and one extra output row and column, as TensorFlow's 'SAME' of the official code)."""
    padding, extra = (1, 0) if kernel_size == 4 else (2, 1)
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel_size, 2, padding, output_padding=extra, bias=bias
    )


def _initialize(module: nn.Module, init_std: float | None) -> None:
    """N(0, init_std) weights and zero biases of every conv and linear layer (the official
    code's set_weights_stdev(0.02)); None keeps PyTorch's default initialization."""
    if init_std is None:
        return
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(layer.weight, 0.0, init_std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class DCGANGenerator(nn.Module):
    """Linear to 4×4 features, then stride-2 transposed convs (BatchNorm + ReLU) to RGB, tanh."""

    def __init__(
        self,
        resolution: int = 64,
        latent_dim: int = 128,
        channels: int = 64,
        kernel_size: int = 5,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        validate_resolution(resolution, MIN_RESOLUTION, MAX_RESOLUTION, "DCGANGenerator")
        self.resolution = resolution
        self.latent_dim = latent_dim  # 128 in the WGAN-GP code
        widths = _channels_per_scale(resolution, channels)
        # bias=False before BatchNorm: its shift makes a bias redundant.
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, widths[0] * 4 * 4, bias=False),
            nn.Unflatten(1, (widths[0], 4, 4)),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        for in_channels, out_channels in pairwise(widths):
            layers += [
                _transposed(in_channels, out_channels, kernel_size, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
        layers += [_transposed(widths[-1], 3, kernel_size, bias=True), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        _initialize(self, init_std)

    def forward(self, z: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        check_fixed_resolution(self.resolution, resolution)
        return self.layers(z)


class DCGANDiscriminator(nn.Module):
    """Stride-2 convs with leaky ReLU down to 4×4, then linear to a score. With
    discriminator_norm="layer", every conv but the first is followed by a per-sample LayerNorm over
    (C, H, W) with a per-channel scale and shift (GroupNorm of one group), as the official
    code; never batch norm: the gradient penalty is per sample, and batch norm mixes samples."""

    def __init__(
        self,
        resolution: int = 64,
        channels: int = 64,
        kernel_size: int = 5,
        discriminator_norm: str = "layer",
        init_std: float | None = 0.02,
    ):
        super().__init__()
        validate_resolution(resolution, MIN_RESOLUTION, MAX_RESOLUTION, "DCGANDiscriminator")
        self.resolution = resolution
        widths = [3, *reversed(_channels_per_scale(resolution, channels))]
        layers: list[nn.Module] = []
        for index, (in_channels, out_channels) in enumerate(pairwise(widths)):
            padding = (kernel_size - 1) // 2  # halves the size exactly: 1 for 4×4, 2 for 5×5
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, 2, padding))
            if discriminator_norm == "layer" and index > 0:
                layers.append(nn.GroupNorm(1, out_channels))
            layers.append(nn.LeakyReLU(LEAKY_RELU_SLOPE))
        layers += [nn.Flatten(), nn.Linear(widths[-1] * 4 * 4, 1)]
        self.layers = nn.Sequential(*layers)
        _initialize(self, init_std)

    def forward(self, x: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        check_fixed_resolution(self.resolution, resolution)
        return self.layers(x).squeeze(1)  # [N]
