import numpy as np
from PIL import Image

from pipelines.dataset.pyramid import box_pyramid, encode_png, square_master
from trainers.data.format import resolutions_up_to


def test_square_master_centre_crops_then_resamples():
    array = np.zeros((60, 100, 3), dtype=np.uint8)
    array[:, 20:80] = 200  # the centred 60x60 square is uniform; the sides are black
    master = square_master(Image.fromarray(array), 32)
    assert master.shape == (32, 32, 3)
    assert master.min() == 200 and master.max() == 200


def test_box_pyramid_is_2x2_mean_at_every_power_of_two():
    rng = np.random.default_rng(0)
    master = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    levels = box_pyramid(master)
    assert sorted(levels) == resolutions_up_to(32)
    expected16 = master.astype(np.float64).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(levels[16], np.rint(expected16).astype(np.uint8))
    # 4x4 is the mean of each 8x8 block of the master (float chain, quantised once).
    expected4 = master.astype(np.float64).reshape(4, 8, 4, 8, 3).mean(axis=(1, 3))
    assert np.abs(levels[4].astype(np.float64) - expected4).max() <= 0.5 + 1e-9


def test_png_encoding_is_deterministic_and_lossless():
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    first, second = encode_png(pixels, 6), encode_png(pixels, 6)
    assert first == second
    import io

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(first))), pixels)
