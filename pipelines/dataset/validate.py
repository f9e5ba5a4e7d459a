"""Decode one input and decide: accepted (as 8-bit RGB) or rejected with a reason code."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Transparent pixels are composited onto this colour so the same file always gives the same RGB.
ALPHA_BACKGROUND = (255, 255, 255)
# The decoders tried on an input's bytes, whatever its extension says (JPEG's also opens a
# camera's MPO). Others are not_an_image: a hostile file named .jpg never reaches e.g. the EPS
# decoder, which runs Ghostscript.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Bytes per pixel of the widest input (16-bit RGBA, uncompressed): a file larger than this many
# bytes per allowed pixel, plus room for metadata, holds more pixels than allowed or junk.
MAX_BYTES_PER_PIXEL = 8
METADATA_BYTES = 16 << 20


class Reason(StrEnum):
    empty_file = "empty_file"
    not_an_image = "not_an_image"  # no decoder recognises the bytes (e.g. text named .jpg)
    undecodable = "undecodable"  # recognised but decoding failed (truncated, corrupt)
    too_small = "too_small"  # shorter side below the requested max resolution
    too_large = "too_large"  # more pixels than --max-pixels (by its header), or a bigger file
    duplicate = "duplicate"  # same decoded pixels as an earlier input
    read_error = "read_error"  # the file could not be read from the source
    unsafe_path = "unsafe_path"  # an archive member or S3 key named with '..' or an absolute path
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


def max_file_bytes(max_pixels: int) -> int:
    """The largest input file read: max_pixels at the widest sample format, plus metadata."""
    return MAX_BYTES_PER_PIXEL * max_pixels + METADATA_BYTES


def decode(raw: bytes, min_side: int, max_pixels: int, *, draft: bool = True) -> Decoded:
    """Decode and normalise to 8-bit RGB (the first frame of an animation), or raise Rejected:
    any failure of the decoder is a reject, never an exception that escapes. More pixels than
    max_pixels are refused from the header, before any pixel is decoded.

    JPEGs are decoded with draft scaling (DCT-domain downscale) to the smallest size that still
    covers min_side: the same bytes always give the same pixels, at a fraction of the cost.
    draft=False decodes at full size (celeba: the face is a part of the image).
    """
    if not raw:
        raise Rejected(Reason.empty_file, "0 bytes")
    try:
        with _decoder_settings():
            image = Image.open(io.BytesIO(raw), formats=FORMATS)
    except UnidentifiedImageError:
        raise Rejected(Reason.not_an_image, "no image decoder recognises the bytes") from None
    except Exception as error:  # a decoder may raise anything on hostile bytes
        raise Rejected(Reason.undecodable, f"{type(error).__name__}: {error}") from None
    original_size = image.size
    width, height = original_size
    if width * height > max_pixels:
        raise Rejected(
            Reason.too_large, f"{width}x{height} = {width * height:,} pixels > {max_pixels:,}"
        )
    if min(original_size) < min_side:
        raise Rejected(Reason.too_small, f"{width}x{height} < {min_side}x{min_side}")
    conversions: list[str] = []
    try:
        with _decoder_settings():
            if getattr(image, "is_animated", False):  # the first frame is the one decoded
                conversions.append("first_frame")
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
    except Exception as error:  # truncated, corrupt, or a mode no conversion handles
        raise Rejected(Reason.undecodable, f"{type(error).__name__}: {error}") from None
    return Decoded(image=image, original_size=original_size, conversions=conversions)


@contextmanager
def _decoder_settings() -> Iterator[None]:
    """Pillow's own decompression-bomb check off: decode refuses over max_pixels itself, with
    the sizes in the reason (Pillow's raises from inside open, at a limit of its own). Its
    warnings about damaged metadata off: a hostile file must not flood the build's output."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


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
