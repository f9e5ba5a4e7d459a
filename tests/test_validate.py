"""Each validation outcome, on files built in the test."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.dataset.validate import ALPHA_BACKGROUND, Reason, Rejected, decode
from tests.images import jpeg_bytes, pixels


def encoded(image: Image.Image, format: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kw)
    return buffer.getvalue()


def reason_of(raw: bytes, min_side: int = 32) -> Reason:
    with pytest.raises(Rejected) as caught:
        decode(raw, min_side)
    return caught.value.reason


def test_rejects_zero_byte_file():
    assert reason_of(b"") is Reason.empty_file


def test_rejects_text_with_an_image_extension():
    assert reason_of(b"this is a README, not a picture\n" * 4) is Reason.not_an_image


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_rejects_truncated_file(format):
    raw = encoded(Image.fromarray(pixels((96, 96), 1)), format)
    assert reason_of(raw[: len(raw) // 2]) is Reason.undecodable


def test_rejects_image_smaller_than_max_resolution_naming_sizes():
    with pytest.raises(Rejected) as caught:
        decode(jpeg_bytes((40, 31)), 32)
    assert caught.value.reason is Reason.too_small
    assert "40x31" in caught.value.detail and "32x32" in caught.value.detail


def test_rgb_passes_unchanged():
    array = pixels((48, 40), 2)
    decoded = decode(encoded(Image.fromarray(array), "PNG"), 32)
    assert decoded.conversions == [] and decoded.original_size == (48, 40)
    np.testing.assert_array_equal(np.asarray(decoded.image), array)


@pytest.mark.parametrize(
    ("mode", "format", "conversion"),
    [
        ("L", "PNG", "grayscale"),
        ("P", "PNG", "palette"),
        ("CMYK", "JPEG", "cmyk"),
        ("1", "BMP", "bilevel"),
    ],
)
def test_converts_modes_to_rgb(mode, format, conversion):
    image = Image.fromarray(pixels((40, 40), 3)).convert(mode)
    decoded = decode(encoded(image, format), 32)
    assert decoded.image.mode == "RGB"
    assert conversion in decoded.conversions


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_composites_alpha_on_fixed_background(mode):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3] = 10
    rgba[:, 20:, 3] = 255  # right half opaque, left half fully transparent
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    decoded = decode(encoded(image, "PNG"), 32)
    out = np.asarray(decoded.image)
    assert decoded.conversions == ["alpha_composited"]
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND
    assert tuple(out[0, 39]) == (10, 10, 10)


def test_transparent_palette_is_composited():
    image = Image.fromarray(pixels((40, 40), 4)).convert("P")
    decoded = decode(encoded(image, "PNG", transparency=0), 32)
    assert decoded.conversions == ["palette", "alpha_composited"]


def test_converts_16_bit_to_8_bit_with_rounding():
    wide = np.full((40, 40), 65535, dtype=np.uint16)
    wide[:, :20] = 257 * 100
    decoded = decode(encoded(Image.fromarray(wide), "PNG"), 32)
    out = np.asarray(decoded.image)
    assert "16bit_to_8bit" in decoded.conversions
    assert tuple(out[0, 0]) == (100, 100, 100) and tuple(out[0, 39]) == (255, 255, 255)


def test_applies_exif_orientation():
    array = pixels((40, 64), 5)  # stored 40 wide, 64 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    raw = encoded(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode(raw, 32)
    assert decoded.image.size == (64, 40)  # displayed upright: now 64 wide
    assert decoded.conversions == ["exif_orientation_6"]


def test_jpeg_draft_decoding_is_deterministic_and_covers_min_side():
    raw = jpeg_bytes((512, 384), 6)
    first, second = decode(raw, 64), decode(raw, 64)
    assert min(first.image.size) >= 64
    assert first.original_size == (512, 384)
    assert first.image.tobytes() == second.image.tobytes()
