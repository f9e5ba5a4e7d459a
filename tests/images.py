"""Bad and unusual image files, made in the test that needs them."""

from __future__ import annotations

import io
import struct
import zlib
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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG of a few bytes whose header declares width x height RGB pixels (40,000²: 4.8
    GB decoded), its data a small zlib stream of zeros."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 65536))
        + png_chunk(b"IEND", b"")
    )
