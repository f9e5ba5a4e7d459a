"""BEGAN (Berthelot et al. 2017): the generator is a decoder, the discriminator an autoencoder
whose decoder has the generator's architecture. ELU throughout, no batch norm."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainers.networks.layers import check_fixed_resolution, validate_resolution

MIN_RESOLUTION = 32
MAX_RESOLUTION = 128
BASE_RESOLUTION = 8  # the decoder's fc output and the encoder's last feature maps are 8×8


def _scales(resolution: int) -> int:
    """Number of resolutions the conv pairs run at: 8, 16, ... resolution (64 px: 4)."""
    return resolution.bit_length() - BASE_RESOLUTION.bit_length() + 1


def _initialize(module: nn.Module, initialization: str) -> None:
    """Glorot-uniform weights and zero biases in every conv and linear layer for "xavier" (the
    reference code's TF-slim layers); PyTorch's defaults, left as they are, for "pytorch"."""
    if initialization not in ("xavier", "pytorch"):
        raise ValueError(f"initialization must be 'xavier' or 'pytorch', got {initialization!r}")
    if initialization == "pytorch":
        return
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def _conv_elu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), nn.ELU()]


class Decoder(nn.Module):
    """latent [N, latent_dim] -> fc to 8×8×channels (h0), then per scale two 3×3 conv + ELU with
    a nearest-neighbour 2× upsampling between scales, and a 3×3 conv to RGB [N, 3, R, R].

    `skip_connections`: the paper's optional skip connections, concatenating h0, upsampled
    to each larger scale, to that scale's input, which it reports sharpens the images."""

    skip_connections = False  # a class default: decoders pickled before the option load as before

    def __init__(self, resolution: int, latent_dim: int, channels: int, skip_connections: bool):
        super().__init__()
        self.skip_connections = skip_connections
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, channels * BASE_RESOLUTION * BASE_RESOLUTION),
            nn.Unflatten(1, (channels, BASE_RESOLUTION, BASE_RESOLUTION)),
        ]
        for scale in range(_scales(resolution)):
            if scale:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            width = 2 * channels if skip_connections and scale else channels  # h0 beside it
            layers += _conv_elu(width, channels) + _conv_elu(channels, channels)
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if not self.skip_connections:
            return self.layers(latents)
        x = latents
        for layer in self.layers:
            x = layer(x)
            if isinstance(layer, nn.Unflatten):
                h0 = x
            elif isinstance(layer, nn.Upsample):
                x = torch.cat([x, F.interpolate(h0, size=x.shape[-2:], mode="nearest")], 1)
        return x


class Encoder(nn.Module):
    """RGB [N, 3, R, R] -> embedding [N, latent_dim]: a 3×3 conv, then per scale two 3×3 conv
    + ELU and a stride-2 conv to the next scale; channels grow by `channels` per scale, as the
    paper (64 px: 64, 128, 192, 256), and an fc maps the 8×8 features to the embedding."""

    def __init__(self, resolution: int, latent_dim: int, channels: int):
        super().__init__()
        scales = _scales(resolution)
        layers = _conv_elu(3, channels)
        for scale in range(scales):
            width = channels * (scale + 1)
            layers += _conv_elu(width, width) + _conv_elu(width, width)
            if scale < scales - 1:
                layers += _conv_elu(width, width + channels, stride=2)
        layers += [
            nn.Flatten(),
            nn.Linear(channels * scales * BASE_RESOLUTION * BASE_RESOLUTION, latent_dim),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class BEGANGenerator(nn.Module):
    def __init__(
        self,
        resolution: int = 64,
        latent_dim: int = 64,
        channels: int = 64,
        skip_connections: bool = False,
        initialization: str = "xavier",
    ):
        super().__init__()
        validate_resolution(resolution, MIN_RESOLUTION, MAX_RESOLUTION, "BEGANGenerator")
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.decoder = Decoder(resolution, latent_dim, channels, skip_connections)
        _initialize(self, initialization)

    def forward(self, z: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        check_fixed_resolution(self.resolution, resolution)
        return self.decoder(z)


class BEGANDiscriminator(nn.Module):
    """Autoencoder: returns the reconstruction [N, 3, R, R] of its input."""

    def __init__(
        self,
        resolution: int = 64,
        latent_dim: int = 64,
        channels: int = 64,
        skip_connections: bool = False,
        initialization: str = "xavier",
    ):
        super().__init__()
        validate_resolution(resolution, MIN_RESOLUTION, MAX_RESOLUTION, "BEGANDiscriminator")
        self.resolution = resolution
        self.encoder = Encoder(resolution, latent_dim, channels)
        self.decoder = Decoder(resolution, latent_dim, channels, skip_connections)
        _initialize(self, initialization)

    def forward(self, x: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        check_fixed_resolution(self.resolution, resolution)
        return self.decoder(self.encoder(x))
