"""Each validation outcome, on files built in the test."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.dataset.config import BuildDatasetConfig
from pipelines.dataset.validate import ALPHA_BACKGROUND, Reason, Rejected, decode
from tests.images import jpeg_bytes, pixel_bomb, pixels

MAX_PIXELS = BuildDatasetConfig().max_pixels  # the default


def encoded(image: Image.Image, format: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kw)
    return buffer.getvalue()


def reason_of(raw: bytes, min_side: int = 32) -> Reason:
    with pytest.raises(Rejected) as caught:
        decode(raw, min_side, MAX_PIXELS)
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
        decode(jpeg_bytes((40, 31)), 32, MAX_PIXELS)
    assert caught.value.reason is Reason.too_small
    assert "40x31" in caught.value.detail and "32x32" in caught.value.detail


def test_rgb_passes_unchanged():
    array = pixels((48, 40), 2)
    decoded = decode(encoded(Image.fromarray(array), "PNG"), 32, MAX_PIXELS)
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
    decoded = decode(encoded(image, format), 32, MAX_PIXELS)
    assert decoded.image.mode == "RGB"
    assert conversion in decoded.conversions


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_composites_alpha_on_fixed_background(mode):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3] = 10
    rgba[:, 20:, 3] = 255  # right half opaque, left half fully transparent
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    decoded = decode(encoded(image, "PNG"), 32, MAX_PIXELS)
    out = np.asarray(decoded.image)
    assert decoded.conversions == ["alpha_composited"]
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND
    assert tuple(out[0, 39]) == (10, 10, 10)


def test_transparent_palette_is_composited():
    image = Image.fromarray(pixels((40, 40), 4)).convert("P")
    decoded = decode(encoded(image, "PNG", transparency=0), 32, MAX_PIXELS)
    assert decoded.conversions == ["palette", "alpha_composited"]


def test_converts_16_bit_to_8_bit_with_rounding():
    wide = np.full((40, 40), 65535, dtype=np.uint16)
    wide[:, :20] = 257 * 100
    decoded = decode(encoded(Image.fromarray(wide), "PNG"), 32, MAX_PIXELS)
    out = np.asarray(decoded.image)
    assert "16bit_to_8bit" in decoded.conversions
    assert tuple(out[0, 0]) == (100, 100, 100) and tuple(out[0, 39]) == (255, 255, 255)


def test_applies_exif_orientation():
    array = pixels((40, 64), 5)  # stored 40 wide, 64 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    raw = encoded(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode(raw, 32, MAX_PIXELS)
    assert decoded.image.size == (64, 40)  # displayed upright: now 64 wide
    assert decoded.conversions == ["exif_orientation_6"]


def test_jpeg_draft_decoding_is_deterministic_and_covers_min_side():
    raw = jpeg_bytes((512, 384), 6)
    first, second = decode(raw, 64, MAX_PIXELS), decode(raw, 64, MAX_PIXELS)
    assert min(first.image.size) >= 64
    assert first.original_size == (512, 384)
    assert first.image.tobytes() == second.image.tobytes()


def test_refuses_a_pixel_bomb_from_its_header():
    """40,000² pixels (4.8 GB decoded) in a file of ~100 bytes: refused before decoding."""
    with pytest.raises(Rejected) as caught:
        decode(pixel_bomb(), 32, MAX_PIXELS)
    assert caught.value.reason is Reason.too_large
    assert caught.value.detail == "40000x40000 = 1,600,000,000 pixels > 67,108,864"


def test_max_pixels_is_the_limit():
    raw = encoded(Image.fromarray(pixels((64, 48), 7)), "PNG")
    assert decode(raw, 32, 64 * 48).original_size == (64, 48)
    with pytest.raises(Rejected) as caught:
        decode(raw, 32, 64 * 48 - 1)
    assert caught.value.reason is Reason.too_large


def test_animated_gif_gives_its_first_frame_as_converted():
    frames = [Image.fromarray(pixels((40, 40), seed)) for seed in (8, 9, 10)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode(buffer.getvalue(), 32, MAX_PIXELS)
    first = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert decoded.conversions[:2] == ["first_frame", "palette"]
    np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(first))


def test_16_bit_tiff_is_converted_to_8_bit():
    wide = np.full((40, 40), 257 * 200, dtype=np.uint16)
    decoded = decode(encoded(Image.fromarray(wide), "TIFF"), 32, MAX_PIXELS)
    assert decoded.conversions == ["16bit_to_8bit", "grayscale"]
    assert tuple(np.asarray(decoded.image)[0, 0]) == (200, 200, 200)


def test_other_formats_named_like_images_are_not_decoded():
    """Only the formats a dataset may hold are tried: an EPS (Ghostscript) or a PPM named
    .jpg is not an image here."""
    raw = encoded(Image.fromarray(pixels((40, 40), 11)), "PPM")
    assert reason_of(raw) is Reason.not_an_image
