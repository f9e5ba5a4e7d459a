"""Two single-layer nets at 16²: enough to train end to end in seconds."""

from __future__ import annotations

import torch
from torch import nn

RESOLUTION = 16


class TinyGenerator(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.layer = nn.Linear(latent_dim, 3 * RESOLUTION * RESOLUTION)

    def forward(self, z: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        return torch.tanh(self.layer(z)).view(-1, 3, RESOLUTION, RESOLUTION)


class TinyDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3 * RESOLUTION * RESOLUTION, 1)

    def forward(self, x: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        return self.layer(x.flatten(1)).squeeze(1)  # [N] logits
