"""Benchmark 5: evaluation metrics. The Fréchet distance (FID's last step) at Inception's 2048
features: ours (two symmetric eigendecompositions, trainers.metrics.statistics) against the
usual scipy.linalg.sqrtm formula, on the same covariances in the same run."""

from __future__ import annotations

import time

from benchmarks.common import Row, alternate, figure

TARGET_FRECHET_SPEEDUP = 4.0
SEED = 0


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance as pytorch-fid and StyleGAN2-ADA compute it: a general matrix square
    root of sigma1 sigma2, imaginary round-off dropped. The reference for ours (numpy arrays)."""
    import numpy as np
    import scipy.linalg

    difference = mu1 - mu2
    sqrt_product = np.real(scipy.linalg.sqrtm(sigma1 @ sigma2))
    return float(
        difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(sqrt_product)
    )


def feature_gaussians(dimension: int, seed: int) -> tuple:
    """Means and covariances (float64 numpy) of two feature sets of 2 * dimension samples each:
    Gaussian noise through a random linear map (ill-conditioned, as Inception covariances
    are), the second map perturbed and its mean shifted."""
    import torch

    from trainers.metrics.statistics import FeatureStatistics

    generator = torch.Generator().manual_seed(seed)

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    mixing = noise(dimension, dimension) / dimension**0.5
    found = []
    for change in (0.0, 0.1):
        features = noise(2 * dimension, dimension) @ (mixing + change * noise(*mixing.shape))
        gaussian = FeatureStatistics(dimension)
        gaussian.update(features + change)
        found += [gaussian.mean.numpy(), gaussian.covariance.numpy()]
    return tuple(found)


def _timed(function, args: tuple) -> dict:
    started = time.perf_counter()
    value = function(*args)
    return {"seconds": time.perf_counter() - started, "value": value}


def frechet_case(dimension: int, repeats: int) -> tuple[dict, list[Row]]:
    import torch

    from trainers.metrics.statistics import frechet_distance

    gaussians = feature_gaussians(dimension, SEED)
    warm = feature_gaussians(16, SEED)  # first LAPACK calls, untimed
    frechet_distance(*warm)
    frechet_distance_sqrtm(*warm)
    rounds, medians = alternate(
        "frechet",
        repeats,
        {
            "ours": (lambda i: _timed(frechet_distance, gaussians), "seconds"),
            "sqrtm": (lambda i: _timed(frechet_distance_sqrtm, gaussians), "seconds"),
        },
    )
    ours_s, sqrtm_s = medians["ours"], medians["sqrtm"]
    ours, reference = rounds[-1]["ours"]["value"], rounds[-1]["sqrtm"]["value"]
    ours_runs = [r["ours"]["seconds"] for r in rounds]
    sqrtm_runs = [r["sqrtm"]["seconds"] for r in rounds]
    speedup = figure(1 / ours_s, 1 / sqrtm_s, TARGET_FRECHET_SPEEDUP)
    result = {
        "dimension": dimension,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "ours_s": ours_s,
        "scipy_sqrtm_s": sqrtm_s,
        "ours_runs_s": ours_runs,
        "scipy_sqrtm_runs_s": sqrtm_runs,
        "speedup": speedup,
        "ours_value": ours,
        "scipy_sqrtm_value": reference,
        "absolute_difference": abs(ours - reference),
        "relative_difference": abs(ours - reference) / abs(reference),
    }
    row = Row.of_figure(
        f"Fréchet distance {dimension}-d",
        f"{ours_s:.2f} s",
        f"{sqrtm_s:.2f} s sqrtm",
        speedup,
    )
    return result, [row]


def run(frechet_dimension: int, frechet_repeats: int) -> tuple[dict, list[Row]]:
    """Every measured part is a *_case function returning (result, rows); run collects their
    results under results.<part> and their rows."""
    frechet, rows = frechet_case(frechet_dimension, frechet_repeats)
    payload = {
        "params": {
            "frechet": "median wall seconds of frechet_distance (float64 torch: eigh of "
            "sigma1, eigvalsh of the symmetric product) vs the scipy.linalg.sqrtm formula of "
            "pytorch-fid/StyleGAN2-ADA, called in turn in each repeat, on the same numpy means "
            f"and covariances of random linearly mixed features (seed {SEED}); speedup ratio = "
            "sqrtm s / ours s",
        },
        "results": {"frechet": frechet},
    }
    return payload, rows
