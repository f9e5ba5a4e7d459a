"""Bad and unusual image files, made in the test that needs them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def pixels(size: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth random colours (compress like photos, unlike white noise); uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))


def save(path: Path, image: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def jpeg_bytes(size=(64, 64), seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(size, seed)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
