"""Sample grids from fixed latents, written as PNG (torchvision has no CPU build to pair with
this torch, so its make_grid is replaced by the few lines below)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

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
