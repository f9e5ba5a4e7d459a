"""Decode one input and decide: accepted (as 8-bit RGB) or rejected with a reason code."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Transparent pixels are composited onto this colour so the same file always gives the same RGB.
ALPHA_BACKGROUND = (255, 255, 255)


class Reason(StrEnum):
    empty_file = "empty_file"
    not_an_image = "not_an_image"  # no decoder recognises the bytes (e.g. text named .jpg)
    undecodable = "undecodable"  # recognised but decoding failed (truncated, corrupt)
    too_small = "too_small"  # shorter side below the requested max resolution
    duplicate = "duplicate"  # same decoded pixels as an earlier input
    read_error = "read_error"  # the file could not be read from the source
    missing = "missing"  # celeba: listed in the landmark file (or image list), not in --input
    bad_landmarks = "bad_landmarks"  # celeba: the landmarks put the face outside the image


class Rejected(Exception):
    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    image: Image.Image  # mode RGB, EXIF orientation applied
    original_size: tuple[int, int]  # (width, height) as stored in the file
    conversions: list[str] = field(default_factory=list)


def decode(raw: bytes, min_side: int, *, draft: bool = True) -> Decoded:
    """Decode and normalise to 8-bit RGB, or raise Rejected.

    JPEGs are decoded with draft scaling (DCT-domain downscale) to the smallest size that still
    covers min_side: the same bytes always give the same pixels, at a fraction of the cost.
    draft=False decodes at full size (celeba: the face is a part of the image).
    """
    if not raw:
        raise Rejected(Reason.empty_file, "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise Rejected(Reason.not_an_image, "no image decoder recognises the bytes") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise Rejected(Reason.undecodable, f"{type(error).__name__}: {error}") from None
    original_size = image.size
    if min(original_size) < min_side:
        raise Rejected(
            Reason.too_small, f"{original_size[0]}x{original_size[1]} < {min_side}x{min_side}"
        )
    conversions: list[str] = []
    try:
        if draft and image.format == "JPEG" and image.mode in ("RGB", "L"):
            # Rotated EXIF orientations swap axes; draft only needs the shorter side to cover.
            image.draft(image.mode, (min_side, min_side))
        image.load()
        oriented = ImageOps.exif_transpose(image)
        if oriented is not image:
            orientation = image.getexif().get(0x0112)
            if orientation not in (None, 1):
                conversions.append(f"exif_orientation_{orientation}")
            image = oriented
        image = _to_rgb(image, conversions)
    except (OSError, SyntaxError, ValueError) as error:
        raise Rejected(Reason.undecodable, f"{type(error).__name__}: {error}") from None
    return Decoded(image=image, original_size=original_size, conversions=conversions)


def _to_rgb(image: Image.Image, conversions: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit samples: scale 0..65535 onto 0..255 with rounding.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
        conversions.append("16bit_to_8bit")
        mode = "L"
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        conversions.append("palette")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(canvas, rgba).convert("RGB")
        conversions.append("alpha_composited")
        return image
    conversions.append({"L": "grayscale", "1": "bilevel", "CMYK": "cmyk"}.get(mode, f"mode_{mode}"))
    return image.convert("RGB")


def pixel_digest(image: Image.Image) -> str:
    """Identity of decoded pixels, for exact-duplicate detection."""
    digest = hashlib.sha256(f"{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
