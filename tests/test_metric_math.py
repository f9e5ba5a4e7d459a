"""The math of the GAN metrics: feature statistics, Fréchet distance, KID and ProGAN's SWD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from benchmarks.metrics import frechet_distance_sqrtm
from benchmarks.quality import weakest_colour_axis
from pipelines.dataset.synthetic import render_face
from trainers.metrics.statistics import (
    FeatureStatistics,
    frechet_distance,
    kernel_inception_distance,
)
from trainers.metrics.swd import (
    laplacian_pyramid,
    pyramid_down,
    pyramid_up,
    sliced_wasserstein_distance,
    swd_descriptors,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixed_features(count: int, dimension: int, seed: int) -> torch.Tensor:
    """Correlated float64 features with a nonzero mean: noise through a random linear map."""
    g = seeded(seed)
    mixing = torch.randn(dimension, dimension, generator=g, dtype=torch.float64)
    shift = torch.randn(dimension, generator=g, dtype=torch.float64)
    return torch.randn(count, dimension, generator=g, dtype=torch.float64) @ mixing + shift


def random_orthogonal(dimension: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dimension, dimension)))
    return q


# --- feature statistics --------------------------------------------------------------------


def test_merged_statistics_equal_those_of_the_whole_set_and_numpy_cov():
    features = mixed_features(300, 12, seed=0).float()  # float32, as an extractor gives them
    whole = FeatureStatistics(12)
    whole.update(features)
    first, second = FeatureStatistics(12), FeatureStatistics(12)
    first.update(features[:110])
    second.update(features[110:])
    merged = first + second

    assert merged.count == whole.count == 300
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.covariance, whole.covariance, rtol=1e-12, atol=1e-12)
    reference = features.double().numpy()
    np.testing.assert_allclose(whole.mean.numpy(), reference.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(
        whole.covariance.numpy(), np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-9
    )


def test_statistics_survive_a_save_load_round_trip(tmp_path):
    statistics = FeatureStatistics(8)
    statistics.update(mixed_features(50, 8, seed=1))
    path = tmp_path / "cache" / "real-stats.npz"
    statistics.save(path)
    loaded = FeatureStatistics.load(path)

    assert loaded.count == 50
    assert torch.equal(loaded.mean, statistics.mean)
    assert torch.equal(loaded.covariance, statistics.covariance)
    assert [p.name for p in path.parent.iterdir()] == ["real-stats.npz"]  # no temp file left


def test_statistics_reject_features_of_another_width():
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        FeatureStatistics(8).update(torch.zeros(4, 9))


# --- Fréchet distance ----------------------------------------------------------------------


def test_frechet_distance_of_a_distribution_to_itself_is_zero():
    statistics = FeatureStatistics(64)
    statistics.update(mixed_features(400, 64, seed=2))
    sigma = statistics.covariance
    distance = frechet_distance(statistics.mean, sigma, statistics.mean, sigma)
    assert abs(distance) <= 1e-6 * 2 * float(sigma.trace())


def test_frechet_distance_agrees_with_the_scipy_sqrtm_formula():
    gaussians = []
    for seed in (3, 4):
        statistics = FeatureStatistics(64)
        statistics.update(mixed_features(200, 64, seed))
        gaussians += [statistics.mean.numpy(), statistics.covariance.numpy()]
    ours = frechet_distance(*gaussians)
    assert ours == pytest.approx(frechet_distance_sqrtm(*gaussians), rel=1e-6)


@pytest.mark.parametrize("rotated", [False, True], ids=["diagonal", "rotated"])
def test_frechet_distance_matches_the_closed_form_for_commuting_covariances(rotated):
    # Covariances with one eigenbasis: the distance is |dmu|² + sum(a + b - 2 sqrt(ab)) over
    # their eigenvalues a, b. Zeros make both singular, as with fewer images than features.
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.uniform(0.1, 4.0, 20), np.zeros(4)])
    b = np.concatenate([rng.uniform(0.1, 4.0, 22), np.zeros(2)])
    mu1, mu2 = rng.standard_normal(24), rng.standard_normal(24)
    basis = random_orthogonal(24, seed=6) if rotated else np.eye(24)
    sigma1, sigma2 = basis @ np.diag(a) @ basis.T, basis @ np.diag(b) @ basis.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    # The square roots of round-off eigenvalues (~1e-16) of the singular product add ~1e-8 each.
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_rejects_statistics_of_different_widths():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(5), np.eye(5))


# --- KID -----------------------------------------------------------------------------------


def test_kid_matches_the_unbiased_mmd_estimator_on_full_sets():
    # With subsets as large as the sets, the subset draw no longer matters.
    x = mixed_features(30, 5, seed=7)
    y = mixed_features(30, 5, seed=8) * 0.5

    def kernel(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p @ q.T / 5 + 1) ** 3

    off_diagonal = ~torch.eye(30, dtype=torch.bool)
    expected = (
        kernel(x, x)[off_diagonal].mean()
        + kernel(y, y)[off_diagonal].mean()
        - 2 * kernel(x, y).mean()
    )
    kid = kernel_inception_distance(y, x, num_subsets=3, subset_size=1000)
    assert kid == pytest.approx(float(expected), rel=1e-12)


def _kid_over_seeds(shift: float, seeds: int = 200) -> np.ndarray:
    """KID of independent samples of N(0, I) and N(shift, I), one per seed."""
    values = []
    for seed in range(seeds):
        g = seeded(seed)
        real = torch.randn(100, 16, generator=g)
        fake = torch.randn(100, 16, generator=g) + shift
        values.append(kernel_inception_distance(real, fake, 2, 60, generator=g))
    return np.array(values)


def test_kid_is_unbiased_for_one_distribution_and_grows_with_the_shift():
    same = _kid_over_seeds(0.0)
    standard_error = same.std(ddof=1) / np.sqrt(len(same))
    assert (same < 0).any()  # an unbiased estimate of 0 must go below it
    assert abs(same.mean()) < 3 * standard_error

    means = [_kid_over_seeds(shift, seeds=20).mean() for shift in (0.25, 0.5, 1.0)]
    assert means[0] > 10 * standard_error
    assert means[0] < means[1] < means[2]


def test_kid_is_reproducible_with_a_seeded_generator():
    real, fake = mixed_features(80, 6, seed=9), mixed_features(90, 6, seed=10)
    first = kernel_inception_distance(real, fake, 5, 40, generator=seeded(0))
    assert first == kernel_inception_distance(real, fake, 5, 40, generator=seeded(0))
    assert first != kernel_inception_distance(real, fake, 5, 40, generator=seeded(1))


# --- SWD -----------------------------------------------------------------------------------


def test_pyramid_filters_match_the_progan_reference_convolution():
    # The reference (ProGAN's metrics code) convolves with scipy.ndimage, mirrored borders.
    gaussian = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1])[None, None] / 256.0
    images = np.random.default_rng(11).standard_normal((2, 3, 16, 16))
    down = scipy.ndimage.convolve(images, gaussian, mode="mirror")[:, :, ::2, ::2]
    spread = np.zeros((2, 3, 32, 32))
    spread[:, :, ::2, ::2] = images
    up = scipy.ndimage.convolve(spread, 4 * gaussian, mode="mirror")
    np.testing.assert_allclose(pyramid_down(torch.from_numpy(images)).numpy(), down, atol=1e-12)
    np.testing.assert_allclose(pyramid_up(torch.from_numpy(images)).numpy(), up, atol=1e-12)


def test_laplacian_pyramid_levels_sum_back_to_the_image():
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    levels = laplacian_pyramid(images, 3)
    assert [level.shape[-1] for level in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for level in reversed(levels[:-1]):
        rebuilt = pyramid_up(rebuilt) + level
    torch.testing.assert_close(rebuilt, images, atol=1e-5, rtol=0)


def test_descriptors_are_7x7_neighbourhoods_of_their_own_image():
    # At 16² the pyramid has one level, the image itself; each pixel value encodes its place.
    index = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    (descriptors,) = swd_descriptors(index, descriptors_per_image=50, generator=seeded(0))
    assert descriptors.shape == (100, 3, 7, 7)
    corner = descriptors[:, :1, :1, :1]
    # value = ((image * 3 + channel) * 16 + row) * 16 + column
    offsets = (torch.arange(3) * 256)[:, None, None] + (
        torch.arange(7)[:, None] * 16 + torch.arange(7)
    )
    torch.testing.assert_close(descriptors - corner, offsets.float().expand(100, 3, 7, 7))
    assert (corner.flatten()[:50] < 768).all() and (corner.flatten()[50:] >= 768).all()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """64 synthetic faces at 64², uint8 [64, 3, 64, 64]."""
    pixels = np.stack([np.asarray(render_face(0, i, 64)) for i in range(64)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def test_swd_orders_image_sets_by_their_distance_to_the_real_ones(faces):
    real = swd_descriptors(faces, generator=seeded(0))
    images = faces.float() / 127.5 - 1  # the generator range; uint8 is converted to it

    def swd(candidates: torch.Tensor) -> dict[str, float]:
        fake = swd_descriptors(candidates, generator=seeded(1))
        # One repeat of 128 directions (the reference averages 4) keeps the test fast.
        return sliced_wasserstein_distance(real, fake, repeats=1, generator=seeded(2))

    def noised(scale: float) -> torch.Tensor:
        return (images + scale * torch.randn(images.shape, generator=seeded(3))).clamp(-1, 1)

    resampled = swd(faces)  # the same images, other neighbourhoods
    noisy = [swd(noised(scale)) for scale in (0.02, 0.1, 0.3)]
    blurred = swd(pyramid_up(pyramid_down(images)))
    shuffled = swd(
        images.flatten(2)[:, :, torch.randperm(64 * 64, generator=seeded(4))].view_as(images)
    )

    averages = [result["swd_avg"] for result in (resampled, *noisy)]
    assert averages == sorted(averages) and averages[0] < averages[-1] / 4
    assert min(blurred["swd_avg"], shuffled["swd_avg"]) > noisy[0]["swd_avg"]
    assert sorted(resampled) == ["swd_16", "swd_32", "swd_64", "swd_avg"]
    # Keys name the right levels: pixel noise and blur live at the finest level, while
    # shuffling pixels destroys the coarse structure.
    for changed in (noisy[-1], blurred):
        assert changed["swd_64"] > 3 * resampled["swd_64"]
        assert changed["swd_16"] < 2 * resampled["swd_16"]
    assert shuffled["swd_16"] > 4 * resampled["swd_16"]

    assert set(sliced_wasserstein_distance(real, real, repeats=1).values()) == {0.0}


def test_swd_rejects_descriptor_sets_of_different_sizes(faces):
    real = swd_descriptors(faces[:4], generator=seeded(0))
    fake = swd_descriptors(faces[:3], generator=seeded(0))
    with pytest.raises(ValueError, match="same number of images"):
        sliced_wasserstein_distance(real, fake)


def test_weakest_colour_axis_finds_colours_confined_to_a_plane():
    """The quality benchmark's colour figure: images whose blue is the mean of red and green
    vary along two RGB directions only, and score ~0; independent channels score their
    variance, whatever the rotation of RGB space."""
    generator = seeded(0)
    independent = 0.5 * torch.randn(64, 3, 8, 8, generator=generator)
    assert weakest_colour_axis(independent) == pytest.approx(0.25, rel=0.05)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=generator)).Q
    rotated = torch.einsum("ij,njhw->nihw", rotation, independent)
    assert weakest_colour_axis(rotated) == pytest.approx(weakest_colour_axis(independent))
    planar = independent.clone()
    planar[:, 2] = (planar[:, 0] + planar[:, 1]) / 2
    assert weakest_colour_axis(planar) < 1e-9
