"""The kinds of metric a registered name can stand for (trainers.metrics.registry maps names to
them): how each measures an Evaluation.

  fid{N}k   Fréchet Inception distance, N thousand generated images vs all real ones
  kid{N}k   kernel Inception distance (×10³), same images and features as fid{N}k
  swd{N}k   ProGAN's multi-scale sliced Wasserstein distance (×10³), N thousand generated vs
            the first N thousand real images; needs no pretrained weights
  a family's own metrics (BEGAN's m_global), which the family's module measures

The real side of fid, kid and swd is cached per dataset version (trainers.metrics.cache).
"""

from __future__ import annotations

import torch

from trainers.metrics import swd
from trainers.metrics.cache import cached, real_statistics_path
from trainers.metrics.collective import gather_chunks, on_rank0
from trainers.metrics.evaluation import Evaluation
from trainers.metrics.statistics import (
    FeatureStatistics,
    frechet_distance,
    kernel_inception_distance,
)
from trainers.seeding import derived_seed


class Metric:
    name: str
    needs_inception: bool = False

    def compute(self, evaluation: Evaluation) -> dict[str, float]:
        raise NotImplementedError

    def prepare(self, evaluation: Evaluation) -> None:
        """Compute and cache the real side (the `ganforge data stats` stage calls this)."""


class _InceptionMetric(Metric):
    """A distance between the Inception features of the real and the generated images."""

    needs_inception = True
    kind: str  # the name's prefix

    def __init__(self, thousands: int):
        self.num_fake = thousands * 1000
        self.name = f"{self.kind}{thousands}k"

    def real_features(self, evaluation: Evaluation) -> torch.Tensor:
        """[all real images, 2048]; one cache file serves every fid and kid name."""
        path = real_statistics_path(evaluation.data, evaluation.resolution, "inception2015")

        def compute() -> torch.Tensor:
            inception = evaluation.inception()
            return gather_chunks(
                (chunk, inception(images)) for chunk, images in evaluation.real_chunks()
            )

        return cached(path, compute)

    def prepare(self, evaluation: Evaluation) -> None:
        self.real_features(evaluation)

    def compute(self, evaluation: Evaluation) -> dict[str, float]:
        real = self.real_features(evaluation)
        fake = evaluation.fake_inception_features(self.num_fake)
        return on_rank0(lambda: {self.name: self.distance(real, fake, evaluation.seed)})

    def distance(self, real: torch.Tensor, fake: torch.Tensor, seed: int) -> float:
        raise NotImplementedError


class FrechetInceptionDistance(_InceptionMetric):
    kind = "fid"

    def distance(self, real: torch.Tensor, fake: torch.Tensor, seed: int) -> float:
        real_side, fake_side = (FeatureStatistics(real.shape[1]) for _ in range(2))
        real_side.update(real)
        fake_side.update(fake)
        return frechet_distance(
            real_side.mean, real_side.covariance, fake_side.mean, fake_side.covariance
        )


class KernelInceptionDistance(_InceptionMetric):
    kind = "kid"

    def distance(self, real: torch.Tensor, fake: torch.Tensor, seed: int) -> float:
        generator = torch.Generator().manual_seed(derived_seed("kid", seed, 0))
        return kernel_inception_distance(real, fake, generator=generator) * 1e3  # reported ×10³


class SlicedWassersteinDistance(Metric):
    def __init__(self, thousands: int):
        self.num_images = thousands * 1000
        self.name = f"swd{thousands}k"

    def _descriptors(self, chunks, resolution: int, seed: int, salt: str) -> list[torch.Tensor]:
        """Per pyramid level, the descriptors of all ranks' chunks, in image order."""
        per_chunk = [
            (chunk, swd.swd_descriptors(images, generator=_generator(seed, chunk, salt)))
            for chunk, images in chunks
        ]
        return [
            gather_chunks((chunk, levels[level]) for chunk, levels in per_chunk)
            for level in range(len(swd.level_resolutions(resolution)))
        ]

    def real_descriptors(self, evaluation: Evaluation) -> list[torch.Tensor]:
        settings = f"{self.name}-chunk{evaluation.chunk_size}"  # chunks seed the draws
        path = real_statistics_path(evaluation.data, evaluation.resolution, settings)

        def compute() -> torch.Tensor:  # [levels, descriptors, 3, 7, 7]
            levels = self._descriptors(
                evaluation.real_chunks(self.num_images), evaluation.resolution, 0, "swd-real"
            )
            # float16 halves the cache (swd1k at 32²: 75 MB); Laplacian values are within ±2,
            # so the rounding (≤ 1e-3) is far below what the per-channel normalization keeps
            return torch.stack(levels).half()

        return [level.float() for level in cached(path, compute)]

    def prepare(self, evaluation: Evaluation) -> None:
        self.real_descriptors(evaluation)

    def compute(self, evaluation: Evaluation) -> dict[str, float]:
        if evaluation.resolution < swd.LOWEST_RESOLUTION:
            raise MetricUnavailable(
                f"its pyramid starts at {swd.LOWEST_RESOLUTION}², this is {evaluation.resolution}²"
            )
        real = self.real_descriptors(evaluation)
        count = real[0].shape[0] // swd.DESCRIPTORS_PER_IMAGE  # fewer when the dataset is small
        fake = self._descriptors(
            evaluation.fake_chunks(count), evaluation.resolution, evaluation.seed, "swd-fake"
        )
        generator = torch.Generator().manual_seed(derived_seed("swd", evaluation.seed, 0))
        distances = on_rank0(
            lambda: swd.sliced_wasserstein_distance(real, fake, generator=generator)
        )
        return {
            (self.name if key == "swd_avg" else f"{self.name}_{key.removeprefix('swd_')}"): value
            for key, value in distances.items()
        }


def _generator(seed: int, chunk: int, salt: str) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(salt, seed, chunk))


class FamilyMetric(Metric):
    """A family's own metric, measured by the function its Family.metrics() returns."""

    def __init__(self, name: str):
        self.name = name

    def compute(self, evaluation: Evaluation) -> dict[str, float]:
        measure = evaluation.family_metrics.get(self.name)
        if measure is None:
            raise MetricUnavailable("it belongs to another family than this generator's")
        return measure(evaluation)


class MetricUnavailable(RuntimeError):
    """A registered metric that cannot be measured here (no Inception weights, wrong family)."""
