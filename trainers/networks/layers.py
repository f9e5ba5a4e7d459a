"""Small layers and checks shared by the network families."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_RELU_SLOPE = 0.2  # DCGAN discriminator and ProGAN, as both papers
PIXEL_NORM_EPSILON = 1e-8  # the ProGAN paper's epsilon
MINIBATCH_STDDEV_EPSILON = 1e-8  # keeps sqrt differentiable where a group has no variance


def validate_resolution(resolution: int, minimum: int, maximum: int, what: str) -> None:
    """Raise ValueError unless `resolution` is a power of two in [minimum, maximum]."""
    if not minimum <= resolution <= maximum or resolution & (resolution - 1):
        raise ValueError(
            f"{what}: resolution {resolution} is not supported; "
            f"use a power of two from {minimum} to {maximum}"
        )


def check_fixed_resolution(built_for: int, requested: int) -> None:
    """A fixed-resolution network asked for another resolution is a bug in the caller."""
    assert requested == built_for, f"network built for {built_for} px, asked for {requested} px"


class EqualizedConv2d(nn.Module):
    """Conv with ProGAN's equalized learning rate: weights stored as N(0, 1) and multiplied at
    run time by He's constant gain / sqrt(fan_in), so Adam's per-parameter step is the same
    relative size for every layer. 'Same' padding, stride 1, zero bias at start."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)  # fan_in
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """Dense layer with equalized learning rate, as EqualizedConv2d."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)  # fan_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class PixelNorm(nn.Module):
    """Scales each pixel's feature vector (dim 1) to unit mean square; [N, C] or [N, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + PIXEL_NORM_EPSILON)


class MinibatchStddev(nn.Module):
    """Appends one feature map: the stddev of each feature over a group of samples, averaged
    over features and pixels, so D can see a lack of variety in a batch.

    The batch is split into N / G groups of G = min(group_size, N) consecutive samples (the
    official code strides them, i % (N / G)): split at multiples of G over workers, a global
    batch then gets the same groups on any number of ranks, so runs are world-size invariant.
    """

    def __init__(self, group_size: int):
        super().__init__()
        if group_size < 2:
            raise ValueError(
                f"mbstd_group_size must be at least 2 (a group of one has no spread), "
                f"got {group_size}"
            )
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        group_size = min(self.group_size, batch)
        if batch % group_size:
            raise ValueError(
                f"minibatch stddev: a batch of {batch} samples does not split into groups of "
                f"{group_size}; use a batch per worker that is a multiple of "
                f"mbstd_group_size"
            )
        groups = batch // group_size
        # float32 statistics: in bf16 the variance of near-equal samples is mostly rounding.
        grouped = x.float().reshape(groups, group_size, channels, height, width)
        stddev = (grouped.var(dim=1, unbiased=False) + MINIBATCH_STDDEV_EPSILON).sqrt()
        per_group = stddev.mean(dim=(1, 2, 3))  # [groups]
        feature = per_group.view(groups, 1, 1, 1, 1).expand(-1, group_size, 1, height, width)
        return torch.cat([x, feature.reshape(batch, 1, height, width).to(x.dtype)], dim=1)
