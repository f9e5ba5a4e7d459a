"""Distribution distances between feature sets: streaming feature statistics, the Fréchet
distance (FID's formula) and the kernel distance (KID).

Pure torch, float64; every function runs on the device of its inputs.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from trainers.files import atomic_file


class FeatureStatistics:
    """Running mean and covariance of feature vectors.

    Holds the count, the sum and the sum of outer products in float64, so statistics of
    batches, loader processes or ranks merge exactly by addition (and the two tensors can be
    all-reduced as they are).
    """

    def __init__(self, num_features: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.feature_sum = torch.zeros(num_features, dtype=torch.float64, device=device)
        # [D, D]: sum over samples of x xᵀ
        self.outer_product_sum = torch.zeros(
            num_features, num_features, dtype=torch.float64, device=device
        )

    @property
    def num_features(self) -> int:
        return self.feature_sum.shape[0]

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of feature vectors, shape [N, D]."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"features must have shape [N, {self.num_features}], got {list(features.shape)}"
            )
        x = features.to(self.feature_sum.device, torch.float64)
        self.count += x.shape[0]
        self.feature_sum += x.sum(dim=0)
        self.outer_product_sum += x.T @ x

    def __add__(self, other: FeatureStatistics) -> FeatureStatistics:
        if other.num_features != self.num_features:
            raise ValueError(
                f"cannot merge statistics of {self.num_features} and {other.num_features} "
                "features: they come from different feature extractors"
            )
        merged = FeatureStatistics(self.num_features, self.feature_sum.device)
        merged.count = self.count + other.count
        merged.feature_sum = self.feature_sum + other.feature_sum.to(self.feature_sum.device)
        merged.outer_product_sum = self.outer_product_sum + other.outer_product_sum.to(
            self.feature_sum.device
        )
        return merged

    @property
    def mean(self) -> torch.Tensor:
        """[D] float64."""
        if self.count < 1:
            raise ValueError("no features were added: the mean is undefined")
        return self.feature_sum / self.count

    @property
    def covariance(self) -> torch.Tensor:
        """[D, D] float64, unbiased (divides by count - 1)."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 features, got {self.count}")
        mean = self.mean
        return (self.outer_product_sum - self.count * torch.outer(mean, mean)) / (self.count - 1)

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz file atomically: readers see the old file or the complete new one."""
        with atomic_file(path) as file:
            np.savez(
                file,
                count=np.int64(self.count),
                feature_sum=self.feature_sum.cpu().numpy(),
                outer_product_sum=self.outer_product_sum.cpu().numpy(),
            )

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> FeatureStatistics:
        with np.load(path) as arrays:
            statistics = cls(arrays["feature_sum"].shape[0], device)
            statistics.count = int(arrays["count"])
            statistics.feature_sum.copy_(torch.from_numpy(arrays["feature_sum"]))
            statistics.outer_product_sum.copy_(torch.from_numpy(arrays["outer_product_sum"]))
        return statistics


def frechet_distance(
    mu1: torch.Tensor | np.ndarray,
    sigma1: torch.Tensor | np.ndarray,
    mu2: torch.Tensor | np.ndarray,
    sigma2: torch.Tensor | np.ndarray,
) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||² + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2)).

    tr(sqrt(sigma1 sigma2)) is the sum of the square roots of the eigenvalues of sigma1 sigma2,
    which equal those of the symmetric sqrt(sigma1) sigma2 sqrt(sigma1); two symmetric
    eigendecompositions replace a general matrix square root (scipy's sqrtm), several times
    faster at 2048 features and free of its complex round-off. Negative eigenvalues from
    round-off are taken as 0, so singular covariances (fewer samples than features) are fine.
    """
    device = sigma1.device if isinstance(sigma1, torch.Tensor) else None
    mu1, sigma1, mu2, sigma2 = (
        torch.as_tensor(a, dtype=torch.float64, device=device) for a in (mu1, sigma1, mu2, sigma2)
    )
    dimension = mu1.shape[0] if mu1.ndim == 1 else None
    if (
        dimension is None
        or mu2.shape != mu1.shape
        or not (sigma1.shape == sigma2.shape == (dimension, dimension))
    ):
        raise ValueError(
            "frechet_distance needs two means of shape [D] and two covariances of shape [D, D] "
            f"from the same feature extractor, got {list(mu1.shape)}, {list(sigma1.shape)}, "
            f"{list(mu2.shape)}, {list(sigma2.shape)}"
        )
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma1)  # sigma1 = V diag(w) Vᵀ
    half = eigenvectors * eigenvalues.clamp(min=0).sqrt()  # B = V diag(√w): sqrt(sigma1) = B Vᵀ
    # sqrt(sigma1) sigma2 sqrt(sigma1) = V (Bᵀ sigma2 B) Vᵀ: same eigenvalues, one product less.
    product_eigenvalues = torch.linalg.eigvalsh(half.T @ sigma2 @ half)
    trace_sqrt_product = product_eigenvalues.clamp(min=0).sqrt().sum()
    difference = mu1 - mu2
    distance = difference.dot(difference) + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product
    return float(distance)


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> float:
    """Kernel distance between two feature sets [N, D] and [M, D] (Bińkowski et al. 2018):
    the unbiased estimate of MMD² with the kernel k(x, y) = (xᵀy / D + 1)³, averaged over
    num_subsets random subsets of subset_size (capped at min(N, M)) drawn without replacement
    from each side, as StyleGAN2-ADA's kid metric computes it.

    Unbiased: over independent samples of one distribution its expectation is 0, so single
    values can be negative. Subsets are drawn with `generator` (torch's global RNG if None);
    a generator on another device than the features is fine.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            "kernel_inception_distance needs feature sets [N, D] and [M, D] with the same D, "
            f"got {list(real.shape)} and {list(fake.shape)}"
        )
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 features on each side, got subset size {size}")
    real = real.to(torch.float64)
    fake = fake.to(real.device, torch.float64)
    dimension = real.shape[1]
    sample_device = generator.device if generator is not None else real.device

    def subset(population: int) -> torch.Tensor:
        chosen = torch.randperm(population, generator=generator, device=sample_device)[:size]
        return chosen.to(real.device)

    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y.T / dimension + 1) ** 3

    total = 0.0
    for _ in range(num_subsets):
        x = fake[subset(fake.shape[0])]
        y = real[subset(real.shape[0])]
        within = kernel(x, x) + kernel(y, y)
        # Mean over pairs i != j within each set, minus twice the mean over all cross pairs.
        within_mean = (within.sum() - within.diagonal().sum()) / (size * (size - 1))
        total += float(within_mean - 2 * kernel(x, y).mean())
    return total / num_subsets
