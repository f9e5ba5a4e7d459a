"""One inference object: a `Sampler` holds a generator fixed at one stage (resolution, fade
alpha) and the latent prior it was trained on. Training-time grids, metrics, `ganforge sample`
and `ganforge evaluate`, the pipeline's grids and the registered model all go through it, so
every path draws latents from the family's own prior.

Grids are written as PNG with a few lines of our own (torchvision, whose make_grid this
replaces, has no CPU build that pairs with this torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from trainers.precision import autocast
from trainers.prior import LatentPrior

GRID_CELL_MIN_PIXELS = 64  # small resolutions are enlarged (nearest) so a grid stays legible
CHUNK = 64  # latents per forward pass


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


def first_row(grid: Image.Image, columns: int) -> Image.Image:
    """The first row of a grid `image_grid` drew with `columns` columns, gaps included."""
    cell = (grid.width - 1) // columns  # pixels per image, plus one of gap
    return grid.crop((0, 0, grid.width, cell + 1))


def write_grid(images: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = max(1, int(round(len(images) ** 0.5)))
    image_grid(images, columns).save(path)
    return path


class StageGenerator(nn.Module):
    """G fixed at one resolution and fade alpha, called on latents alone: [N, latent_dim]
    float32 from the prior -> [N, 3, R, R] float32 images in [-1, 1]. This is the module the
    registry exports (torch.export), so loading it needs torch, not ganforge."""

    def __init__(self, generator: nn.Module, resolution: int, fade_alpha: float = 1.0):
        super().__init__()
        self.generator = generator
        self.resolution, self.fade_alpha = resolution, fade_alpha

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.generator(latents, self.resolution, self.fade_alpha).float().clamp(-1, 1)


class Sampler:
    """A generator ready to sample. A training G (a StageGenerator) runs in eval mode here (the
    protocol every caller gets: BatchNorm on its running statistics, so an image depends on
    its latent alone, never on the batch or on other ranks), its mode restored after; any other
    callable (an exported program, which has no train mode) is called as it is."""

    def __init__(
        self,
        generator: nn.Module,  # forward(latents) -> images, e.g. a StageGenerator
        prior: LatentPrior,
        resolution: int,
        fade_alpha: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ):
        self.generator, self.prior = generator, prior
        self.resolution, self.fade_alpha = resolution, fade_alpha
        self.autocast_dtype = autocast_dtype
        self.device = torch.device(device)

    @classmethod
    def of(
        cls,
        generator: nn.Module,
        prior: LatentPrior,
        resolution: int,
        fade_alpha: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
    ) -> Sampler:
        """A training generator (`forward(z, resolution, fade_alpha)`) at one stage."""
        device = next(generator.parameters()).device
        stage = StageGenerator(generator, resolution, fade_alpha)
        return cls(stage, prior, resolution, fade_alpha, autocast_dtype, device)

    @classmethod
    def from_checkpoint(cls, directory: Path, device: torch.device | str = "cpu") -> Sampler:
        """The checkpoint's generator (its EMA copy where kept) at the stage it had reached."""
        from trainers.checkpoint import load_networks, read_config, read_stage

        stage, family = read_stage(directory), read_config(directory).family
        generator = load_networks(directory, device)["G"]
        return cls.of(generator, family.prior, stage.resolution, stage.fade_alpha)

    def latents(self, count: int, seed: int) -> torch.Tensor:
        """The latents `ganforge sample --seed` draws: the same for a checkpoint and its model."""
        return self.prior.seeded(count, seed).to(self.device)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, R, R] float32 in [-1, 1] for `latents`, CHUNK at a time."""
        training = isinstance(self.generator, StageGenerator) and self.generator.training
        if training:
            self.generator.eval()
        try:
            with autocast(self.device, self.autocast_dtype):
                parts = [self.generator(part).float().clamp(-1, 1) for part in latents.split(CHUNK)]
        finally:
            if training:
                self.generator.train()
        return torch.cat(parts)

    def write_grid(self, path: Path, count: int, seed: int) -> Path:
        """`count` images from `latents(count, seed)` as one grid PNG at `path`."""
        return write_grid(self(self.latents(count, seed)), path)
