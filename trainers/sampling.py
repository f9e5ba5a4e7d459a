"""Sample grids from fixed latents, written as PNG (torchvision has no CPU build to pair with
this torch, so its make_grid is replaced by the few lines below)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from trainers.networks.layers import normal_latents

GRID_CELL_MIN_PIXELS = 64  # small resolutions are enlarged (nearest) so a grid stays legible


def image_grid(images: torch.Tensor, columns: int) -> Image.Image:
    """[N, 3, R, R] in [-1, 1] -> one RGB image of ceil(N / columns) rows, 1 px black gaps."""
    count, _, size, _ = images.shape
    scale = max(1, GRID_CELL_MIN_PIXELS // size)
    pixels = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cell = size * scale + 1
    rows = -(-count // columns)
    canvas = np.zeros((rows * cell + 1, columns * cell + 1, 3), dtype=np.uint8)
    for index, image in enumerate(pixels.permute(0, 2, 3, 1).numpy()):  # -> [N, R, R, 3]
        top, left = 1 + (index // columns) * cell, 1 + (index % columns) * cell
        canvas[top : top + cell - 1, left : left + cell - 1] = image
    return Image.fromarray(canvas)


@torch.no_grad()
def generate(
    generator: torch.nn.Module,
    latents: torch.Tensor,
    resolution: int,
    fade_alpha: float = 1.0,
    chunk: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Images for `latents` in eval mode, `chunk` at a time; the training mode is restored."""
    was_training = generator.training
    generator.eval()
    device = latents.device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        images = [generator(part, resolution, fade_alpha).float() for part in latents.split(chunk)]
    generator.train(was_training)
    return torch.cat(images)


def write_grid(images: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = max(1, int(round(len(images) ** 0.5)))
    image_grid(images, columns).save(path)
    return path


class LatentSampler(nn.Module):
    """What the model registry holds: a generator fixed at one resolution and fade-in, called
    on latents alone. [N, latent_dim] float32 ~ N(0, 1) -> [N, 3, R, R] float32 images in
    [-1, 1]. MLflow exports it with torch.export, so loading it needs torch, not ganforge."""

    def __init__(self, generator: nn.Module, resolution: int, fade_alpha: float = 1.0):
        super().__init__()
        self.generator = generator
        self.resolution, self.fade_alpha = resolution, fade_alpha

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.generator(latents, self.resolution, self.fade_alpha).clamp(-1, 1)


class FixedStageGenerator(nn.Module):
    """A sampler loaded from the registry behind the training generators' interface
    (`sample_latents`, `forward(z, resolution, fade_alpha)`), so metrics and grids take it as
    they take G."""

    def __init__(self, sampler: nn.Module, latent_dim: int, resolution: int):
        super().__init__()
        self.sampler, self.latent_dim, self.resolution = sampler, latent_dim, resolution

    def sample_latents(
        self, n: int, generator: torch.Generator, device: torch.device | str
    ) -> torch.Tensor:
        return normal_latents(n, self.latent_dim, generator, device)

    def forward(self, z: torch.Tensor, resolution: int, fade_alpha: float = 1.0) -> torch.Tensor:
        if resolution != self.resolution:
            raise ValueError(f"this model generates {self.resolution}², not {resolution}²")
        return self.sampler(z)

    def train(self, mode: bool = True) -> FixedStageGenerator:
        self.training = mode  # an exported program has no train mode: its eval() raises
        return self


def seeded_latents(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The latents `ganforge sample --seed` draws: the same for a checkpoint and its model."""
    return normal_latents(count, latent_dim, torch.Generator().manual_seed(seed), "cpu")


def write_sample_grid(
    generator: nn.Module, resolution: int, fade_alpha: float, count: int, seed: int, out: Path
) -> Path:
    """`count` images from `seeded_latents(seed)` as one grid PNG at `out` (on the CPU)."""
    latents = seeded_latents(count, generator.latent_dim, seed)
    with torch.inference_mode():
        images = LatentSampler(generator, resolution, fade_alpha)(latents)
    return write_grid(images, out)
