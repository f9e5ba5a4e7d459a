"""Progressive growing of GANs (Karras et al. 2018): one block per resolution from 4×4 up to
max_resolution, all layers with equalized learning rate; the training loop picks the
resolution and fades the newest block in with `fade_alpha`."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from trainers.data.format import MAX_RESOLUTION, MIN_RESOLUTION, resolutions_up_to
from trainers.networks.layers import (
    LEAKY_RELU_SLOPE,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStddev,
    PixelNorm,
    validate_resolution,
)


def feature_maps(resolution: int, fmap_base: int, fmap_max: int) -> int:
    """Channels of the block at `resolution`: min(fmap_base / 2**(stage + 1), fmap_max) with
    stage 0 at 4×4, the official nf(log2(resolution) - 1). Defaults: 512 up to 32 px, then
    halving to 16 at 1024 px."""
    channels = min(fmap_base // (resolution // 2), fmap_max)
    if channels < 1:
        raise ValueError(
            f"fmap_base {fmap_base} leaves no feature maps at {resolution} px; "
            f"use fmap_base >= {resolution // 2}"
        )
    return channels


def _stage(resolution: int, fade_alpha: float, max_resolution: int, what: str) -> int:
    """Index of the block for `resolution` (0 at 4×4), after checking the request."""
    validate_resolution(resolution, MIN_RESOLUTION, max_resolution, what)
    if not 0.0 <= fade_alpha <= 1.0:
        raise ValueError(f"{what}: fade_alpha must be in [0, 1], got {fade_alpha}")
    if fade_alpha < 1.0 and resolution == MIN_RESOLUTION:
        raise ValueError(f"{what}: nothing to fade in from at {MIN_RESOLUTION} px")
    return resolution.bit_length() - MIN_RESOLUTION.bit_length()


def _conv_leaky(in_channels: int, out_channels: int, kernel_size: int = 3) -> list[nn.Module]:
    return [EqualizedConv2d(in_channels, out_channels, kernel_size), nn.LeakyReLU(LEAKY_RELU_SLOPE)]


class ProGANGenerator(nn.Module):
    """Pixel-normalised latent -> 4×4 block (dense + 3×3 conv), then per resolution a nearest
    2× upsampling and two 3×3 convs, each followed by leaky ReLU and pixel norm; a 1×1 toRGB
    per resolution turns the last block's features into the image (linear output)."""

    def __init__(
        self,
        max_resolution: int = 1024,
        latent_dim: int = 512,
        fmap_base: int = 8192,
        fmap_max: int = 512,
    ):
        super().__init__()
        validate_resolution(
            max_resolution, MIN_RESOLUTION, MAX_RESOLUTION, "ProGANGenerator max_resolution"
        )
        self.max_resolution = max_resolution
        self.latent_dim = latent_dim
        channels = [
            feature_maps(resolution, fmap_base, fmap_max)
            for resolution in resolutions_up_to(max_resolution)
        ]
        initial = [
            PixelNorm(),
            # Gain sqrt(2)/4 as the official code: it keeps the scale of its Theano original,
            # which counted this layer as a 4×4 conv with fan_in 16 · latent_dim.
            EqualizedLinear(latent_dim, channels[0] * 4 * 4, gain=math.sqrt(2) / 4),
            nn.Unflatten(1, (channels[0], 4, 4)),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
            PixelNorm(),
            *_conv_leaky(channels[0], channels[0]),
            PixelNorm(),
        ]
        self.blocks = nn.ModuleList([nn.Sequential(*initial)])
        for in_channels, out_channels in pairwise(channels):
            self.blocks.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    *_conv_leaky(in_channels, out_channels),
                    PixelNorm(),
                    *_conv_leaky(out_channels, out_channels),
                    PixelNorm(),
                )
            )
        # Gain 1: the image is the linear output, no ReLU follows.
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, 3, 1, gain=1.0) for c in channels)

    def forward(self, z: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        stage = _stage(resolution, fade_alpha, self.max_resolution, "ProGANGenerator")
        previous = z
        for block in self.blocks[:stage]:
            previous = block(previous)
        image = self.to_rgb[stage](self.blocks[stage](previous))
        if fade_alpha < 1.0:
            faded_from = F.interpolate(self.to_rgb[stage - 1](previous), scale_factor=2.0)
            image = torch.lerp(faded_from, image, fade_alpha)
        return image


class ProGANDiscriminator(nn.Module):
    """Mirror of the generator: a 1×1 fromRGB per resolution, then per resolution two 3×3
    convs and a 2× average pooling, down to the 4×4 block (minibatch stddev, 3×3 conv, dense,
    dense to the score). Leaky ReLU after every layer but the last; returns scores [N]."""

    def __init__(
        self,
        max_resolution: int = 1024,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        mbstd_group_size: int = 4,
    ):
        super().__init__()
        validate_resolution(
            max_resolution, MIN_RESOLUTION, MAX_RESOLUTION, "ProGANDiscriminator max_resolution"
        )
        self.max_resolution = max_resolution
        channels = [
            feature_maps(resolution, fmap_base, fmap_max)
            for resolution in resolutions_up_to(max_resolution)
        ]
        self.from_rgb = nn.ModuleList(
            nn.Sequential(*_conv_leaky(3, c, kernel_size=1)) for c in channels
        )
        final = [
            MinibatchStddev(mbstd_group_size),
            *_conv_leaky(channels[0] + 1, channels[0]),  # +1: the stddev feature map
            nn.Flatten(),
            EqualizedLinear(channels[0] * 4 * 4, channels[0]),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
            EqualizedLinear(channels[0], 1, gain=1.0),  # gain 1: the score is linear
        ]
        self.blocks = nn.ModuleList([nn.Sequential(*final)])
        for out_channels, in_channels in pairwise(channels):
            self.blocks.append(
                nn.Sequential(
                    *_conv_leaky(in_channels, in_channels),
                    *_conv_leaky(in_channels, out_channels),
                    nn.AvgPool2d(2),
                )
            )

    def forward(self, x: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        stage = _stage(resolution, fade_alpha, self.max_resolution, "ProGANDiscriminator")
        features = self.blocks[stage](self.from_rgb[stage](x))
        if fade_alpha < 1.0:
            faded_from = self.from_rgb[stage - 1](F.avg_pool2d(x, 2))
            features = torch.lerp(faded_from, features, fade_alpha)
        for block in reversed(self.blocks[:stage]):
            features = block(features)
        return features.squeeze(1)  # [N, 1] -> [N]
