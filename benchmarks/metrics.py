"""Benchmark 5: evaluation metrics. The Fréchet distance (FID's last step) at Inception's 2048
features: ours (two symmetric eigendecompositions, trainers.metrics.statistics) against the
usual scipy.linalg.sqrtm formula, on the same covariances in the same run. And FID/KID's
feature extraction on CPU: images at a dataset resolution through the resize to 299² and the
FID Inception to 2048-d features, as the registry runs it, against the bare network forward on
the same images already at 299²."""

from __future__ import annotations

import statistics
import time

from benchmarks.common import Row, alternate, figure

TARGET_FRECHET_SPEEDUP = 4.0
SEED = 0
# FID at 64², the resolution of the paper configs that rank by fid50k (WGAN-GP, BEGAN). One
# round is one registry chunk (50 images) per side, 5 to 10 s each at the 10 to 5 images/s of
# 2 cores: with the untimed first chunk, 5 chunks, under 60 s at 5 images/s.
INCEPTION_RESOLUTION = 64
INCEPTION_REPEATS = 2
INCEPTION_REPEATS_QUICK = 1
RESIZE_REPEATS = 5  # resizes of a chunk timed alone (tens of ms each)


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


def _extraction_timed(extract, images) -> dict:
    started = time.perf_counter()
    features = extract(images)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images_per_s": len(images) / seconds, "features": features}


def inception_case(resolution: int, repeats: int) -> tuple[dict, list[Row]]:
    """Images/s of the FID Inception features of one registry chunk of [-1, 1] images at
    `resolution`², as _InceptionMetric.real_features and Evaluation.fake_inception_features
    take them (inception(images) of each chunk, gathered), against the bare forward of the same
    images already resized to 299². FIDInception.forward resizes whatever it gets, so the bare
    side still runs an identity resize (a copy of the chunk): the two sides differ by the
    resize's arithmetic only, a small fraction of a chunk. The resize is also timed on its own
    (both kinds, several calls) to give that fraction without the network's noise.

    The network is FIDInception() as load_fid_inception returns it (eval, no gradients), with
    its random initialisation: the weights file is not downloaded, and speed does not depend
    on the values. The default initialisation shrinks activations to ~1e-8 at pool3, far above
    float32's subnormals (~1e-38) that would slow the CPU kernels."""
    import torch
    import torch.nn.functional as F

    from trainers.metrics.collective import gather_chunks
    from trainers.metrics.evaluation import CHUNK
    from trainers.metrics.inception import FEATURE_DIM, INPUT_SIZE, FIDInception

    print(
        f"  inception features: {resolution}² -> {INPUT_SIZE}², ours and bare {INPUT_SIZE}² "
        f"forward, batches of {CHUNK} x{repeats} ..."
    )
    torch.manual_seed(SEED)
    inception = FIDInception().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(SEED)
    images = torch.rand(CHUNK, 3, resolution, resolution, generator=generator) * 2 - 1

    def resize(batch: torch.Tensor) -> torch.Tensor:  # as FIDInception.forward resizes
        return F.interpolate(
            batch.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )

    resized = resize(images)

    def ours(batch: torch.Tensor) -> torch.Tensor:  # the registry's path, one chunk
        return gather_chunks([(0, inception(batch))])

    # Untimed: the first chunk-sized call was 1 to 2 s slower (kernels set up for these shapes,
    # first allocations); both sides then run the network on the same [50, 3, 299, 299].
    ours(images)
    rounds, medians = alternate(
        "inception",
        repeats,
        {
            "ours": (lambda i: _extraction_timed(ours, images), "images_per_s"),
            "bare_299": (lambda i: _extraction_timed(inception, resized), "images_per_s"),
        },
    )
    ours_rate, bare_rate = medians["ours"], medians["bare_299"]
    resize_s, identity_resize_s = (
        statistics.median(_timed(resize, (batch,))["seconds"] for _ in range(RESIZE_REPEATS))
        for batch in (images, resized)
    )
    print(
        f"  inception resize: {resize_s * 1e3:.0f} ms a chunk ({resolution}² -> {INPUT_SIZE}²), "
        f"{identity_resize_s * 1e3:.0f} ms identity"
    )
    features = rounds[-1]["ours"]["features"]
    assert features.shape == (CHUNK, FEATURE_DIM)
    vs_bare = figure(ours_rate, bare_rate, None)
    result = {
        "resolution": resolution,
        "input_size": INPUT_SIZE,
        "chunk_size": CHUNK,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "weights": f"random initialisation (seed {SEED}), not the published file",
        "ours_images_per_s": ours_rate,
        "bare_299_images_per_s": bare_rate,
        "ours_runs_images_per_s": [r["ours"]["images_per_s"] for r in rounds],
        "bare_299_runs_images_per_s": [r["bare_299"]["images_per_s"] for r in rounds],
        "vs_bare_299": vs_bare,
        "resize_s": resize_s,
        "identity_resize_s": identity_resize_s,
        "resize_share_of_chunk": resize_s * ours_rate / CHUNK,
        "features_max_abs_difference": float(
            (features - rounds[-1]["bare_299"]["features"]).abs().max()
        ),
    }
    rows = [
        Row.of_figure(
            f"FID Inception features {resolution}² (CPU) vs bare 299²",
            f"{ours_rate:.1f} img/s",
            f"{bare_rate:.1f} img/s",
            vs_bare,
        ),
        Row(
            f"  resize {resolution}² -> {INPUT_SIZE}², a chunk",
            f"{resize_s * 1e3:.0f} ms",
            f"{identity_resize_s * 1e3:.0f} ms identity",
            None,
            None,
            None,
        ),
    ]
    return result, rows


def run(
    frechet_dimension: int, frechet_repeats: int, quick: bool = False
) -> tuple[dict, list[Row]]:
    """Every measured part is a *_case function returning (result, rows); run collects their
    results under results.<part> and their rows."""
    frechet, rows = frechet_case(frechet_dimension, frechet_repeats)
    inception_repeats = INCEPTION_REPEATS_QUICK if quick else INCEPTION_REPEATS
    inception, inception_rows = inception_case(INCEPTION_RESOLUTION, inception_repeats)
    rows += inception_rows
    payload = {
        "params": {
            "frechet": "median wall seconds of frechet_distance (float64 torch: eigh of "
            "sigma1, eigvalsh of the symmetric product) vs the scipy.linalg.sqrtm formula of "
            "pytorch-fid/StyleGAN2-ADA, called in turn in each repeat, on the same numpy means "
            f"and covariances of random linearly mixed features (seed {SEED}); speedup ratio = "
            "sqrtm s / ours s",
            "inception": "images/s (images / wall seconds) of the FID Inception features of one "
            f"registry chunk of random [-1, 1] images at {INCEPTION_RESOLUTION}², as the "
            "registry extracts them (FIDInception forward incl. its bilinear resize to 299², "
            "chunk gathered), vs the bare forward of the same images already at 299², in turn "
            "in each repeat after one untimed chunk; randomly initialised network in eval mode "
            "without gradients; median images/s; ratio = ours / bare. The bare forward still "
            "runs FIDInception's resize, an identity copy at 299²; resize_s and "
            "identity_resize_s: median seconds of that resize of one chunk alone "
            f"({RESIZE_REPEATS} calls each), resize_share_of_chunk = resize_s / ours' seconds "
            "a chunk",
        },
        "results": {"frechet": frechet, "inception": inception},
    }
    return payload, rows
