"""Metrics registered by name. A name fixes how its number is measured, as StyleGAN2-ADA's
`fid50k_full` does: `fid50k` is always 50,000 generated images against every real image of
the resolution, so two runs' `fid50k` compare.

  fid{N}k   Fréchet Inception distance, N thousand generated images vs all real ones
  kid{N}k   kernel Inception distance (×10³), same images and features as fid{N}k
  swd{N}k   ProGAN's multi-scale sliced Wasserstein distance (×10³), N thousand generated vs
            the first N thousand real images; needs no pretrained weights
  a family's own metrics (BEGAN's m_global), which the family's module measures

Work is split over the ranks of the process group (when there is one) in fixed chunks: image
i always comes from the same latent and the same descriptor draw, so the result does not
depend on the number of ranks. Every rank returns the same dict, ready for
`mlflow.log_metrics`. Real-image statistics are cached per dataset version (see
`real_statistics_path`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainers import distributed
from trainers.data.reader import real_chunks
from trainers.data.storage import S3Url, is_s3_url, load_manifest
from trainers.files import atomic_file
from trainers.metrics import parse_metric_name, swd
from trainers.metrics.inception import InceptionWeightsUnavailable, cache_dir, load_fid_inception
from trainers.metrics.statistics import (
    FeatureStatistics,
    frechet_distance,
    kernel_inception_distance,
)
from trainers.sampling import Sampler
from trainers.seeding import derived_seed

log = logging.getLogger(__name__)

CHUNK = 50  # images per unit of work; fixes which latent and which RNG draw image i gets
STATISTICS_VERSION = 1  # bump when the way real statistics are computed changes


def statistics_dir(data: str | Path) -> Path:
    """Where a dataset's real statistics live: beside it, not inside (the dataset folder is
    one DVC output, the statistics another); for s3://BUCKET/PREFIX, in this machine's cache."""
    if is_s3_url(data):
        url = S3Url.parse(str(data))
        return cache_dir() / "stats" / url.bucket / f"{url.key}.stats"
    data = Path(data)
    return data.parent / f"{data.name}.stats"


@dataclass
class Evaluation:
    """One sampler (a generator at one stage, with its prior) against one dataset; metrics
    read what they need."""

    sampler: Sampler | None  # G (G_ema where kept), in eval mode; None: the real side only
    data: str | Path  # a dataset folder or s3://BUCKET/PREFIX
    seed: int = 0  # fixes the latents and every random draw of the metrics
    discriminator: nn.Module | None = None  # a checkpoint's D, for metrics of a family's own
    family_metrics: dict[str, Callable[[Evaluation], dict[str, float]]] = field(
        default_factory=dict
    )  # the family's own metrics by name (Family.metrics)
    # images per unit of work: fixes which latent and RNG draw image i gets (so the ranks'
    # split does not change the result); part of how every name is measured, tests shrink it
    chunk_size: int = CHUNK
    real_resolution: int | None = None  # the resolution when there is no sampler
    _inception: nn.Module | None = None
    _fake_features: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return self.sampler.resolution if self.sampler is not None else self.real_resolution

    @property
    def device(self) -> torch.device:
        return self.sampler.device if self.sampler is not None else torch.device("cpu")

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    def inception(self) -> nn.Module:
        if self._inception is None:
            self._inception = load_fid_inception(self.device)
        return self._inception

    def fake_chunks(self, count: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(chunk index, generated images [n, 3, R, R] in [-1, 1]) of this rank's chunks."""
        for chunk in range(self.rank, -(-count // self.chunk_size), self.world_size):
            size = min(self.chunk_size, count - chunk * self.chunk_size)
            # a CPU generator: the same draws whatever the device
            draws = torch.Generator().manual_seed(derived_seed("latents", self.seed, chunk))
            yield chunk, self.sampler(self.sampler.prior.sample(size, draws, self.device))

    def real_chunks(self, limit: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(global chunk index, real images [n, 3, R, R] in [-1, 1]) of this rank's chunks, the
        dataset's first `limit` images (all by default) in manifest order."""
        yield from real_chunks(
            self.data,
            self.resolution,
            self.device,
            chunk_size=self.chunk_size,
            limit=limit,
            rank=self.rank,
            world_size=self.world_size,
        )

    def fake_inception_features(self, count: int) -> torch.Tensor:
        """[count, 2048] features of `count` generated images; shared by fid and kid."""
        if count not in self._fake_features:
            inception = self.inception()
            self._fake_features[count] = gather_chunks(
                (chunk, inception(images)) for chunk, images in self.fake_chunks(count)
            )
        return self._fake_features[count]


class EvaluationTimeout(RuntimeError):
    """A rank waited longer than the evaluation timeout for the others (one failed, or they
    disagree on what to measure): the evaluation fails instead of hanging the run."""


# seconds a rank waits for the others at one of evaluation's collectives
EVALUATION_TIMEOUT_S = float(os.environ.get("GANFORGE_EVAL_TIMEOUT_S", "1800"))
_groups: dict[int, dist.ProcessGroup] = {}


def evaluation_group() -> dist.ProcessGroup:
    """A gloo group of every rank whose collectives time out after EVALUATION_TIMEOUT_S;
    created (a collective itself) when every rank enters its first evaluation."""
    world = id(dist.group.WORLD)
    if world not in _groups:
        timeout = timedelta(seconds=EVALUATION_TIMEOUT_S)
        _groups[world] = dist.new_group(backend="gloo", timeout=timeout)
    return _groups[world]


def _collective(what: str, call: Callable[[dist.ProcessGroup], object]) -> None:
    """`call(group)` on the evaluation group, so a rank left alone raises EvaluationTimeout
    rather than waiting for good. CPU objects only."""
    try:
        call(evaluation_group())
    except RuntimeError as error:
        if "timed out" not in str(error).lower():
            raise
        raise EvaluationTimeout(
            f"evaluation: rank {distributed.rank()} waited over {EVALUATION_TIMEOUT_S:.0f} s for "
            f"the other ranks to {what} (GANFORGE_EVAL_TIMEOUT_S); one of them failed or "
            "stopped evaluating"
        ) from None


def gather_chunks(parts) -> torch.Tensor:
    """Every rank's (chunk index, tensor) parts, joined in chunk order, on every rank (CPU).
    A rank with no chunk takes part all the same, with an empty list."""
    local = [(chunk, tensor.detach().cpu()) for chunk, tensor in parts]
    if distributed.world_size() > 1:
        every: list = [None] * distributed.world_size()
        _collective("gather", lambda group: dist.all_gather_object(every, local, group=group))
        local = [part for rank_parts in every for part in rank_parts]
    local.sort(key=lambda part: part[0])  # stable: the parts of a chunk keep their order
    return torch.cat([tensor for _, tensor in local])


def _on_rank0(compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The final distance computed once, by rank 0, and sent to the others (every rank holds
    the gathered inputs; computing it on each would only add the same CPU work W times)."""
    if distributed.world_size() == 1:
        return compute()
    result = [compute() if distributed.rank() == 0 else None]
    _collective(
        "receive rank 0's result", lambda group: dist.broadcast_object_list(result, 0, group)
    )
    return result[0]


def _cached(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The array at `path`, or computed (on every rank) and written atomically by rank 0. A
    plain .npy: byte-identical for equal arrays (npz archives stamp the time), so DVC's hash
    of the statistics stage is reproducible."""
    if path.is_file():
        return torch.from_numpy(np.load(path))
    array = compute()
    if distributed.rank() == 0:
        with atomic_file(path) as file:
            np.save(file, array.numpy())
        log.info("real statistics written to %s", path)
    return array


def real_statistics_path(data: str | Path, resolution: int, settings: str) -> Path:
    """Keyed by everything that changes the numbers: the dataset version (manifest digest),
    the resolution and the metric's settings."""
    digest = load_manifest(data).digest()
    key = hashlib.sha256(f"{STATISTICS_VERSION}:{digest}:{resolution}:{settings}".encode())
    return statistics_dir(data) / f"{resolution}" / f"{settings}-{key.hexdigest()[:16]}.npy"


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

        return _cached(path, compute)

    def prepare(self, evaluation: Evaluation) -> None:
        self.real_features(evaluation)

    def compute(self, evaluation: Evaluation) -> dict[str, float]:
        real = self.real_features(evaluation)
        fake = evaluation.fake_inception_features(self.num_fake)
        return _on_rank0(lambda: {self.name: self.distance(real, fake, evaluation.seed)})

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

        return [level.float() for level in _cached(path, compute)]

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
        distances = _on_rank0(
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


_KINDS: dict[str, Callable[[int], Metric]] = {
    "fid": FrechetInceptionDistance,
    "kid": KernelInceptionDistance,
    "swd": SlicedWassersteinDistance,
}


def get_metric(name: str) -> Metric:
    """The metric a registered name stands for; ValueError listing the names otherwise."""
    kind, thousands = parse_metric_name(name)
    return _KINDS[kind](thousands) if kind in _KINDS else FamilyMetric(name)


def evaluate(names: list[str], evaluation: Evaluation) -> dict[str, float]:
    """Every named metric that can be measured here, merged into one dict. Inception metrics
    without the Inception weights are skipped with one warning that says how to supply them:
    a number from another network is never reported as FID."""
    results: dict[str, float] = {}
    if distributed.world_size() > 1:
        evaluation_group()  # every rank is here: the one point the group can be made
    discriminator = evaluation.discriminator
    mode = discriminator.training if discriminator is not None else False
    if discriminator is not None:  # the sampler runs G in eval mode itself
        discriminator.eval()
    try:
        for metric in map(get_metric, names):
            try:
                results.update(metric.compute(evaluation))
            except InceptionWeightsUnavailable as error:
                inception = [n for n in names if get_metric(n).needs_inception]
                _warn_once(f"{', '.join(inception)} skipped: {error}")
            except MetricUnavailable as error:
                _warn_once(f"{metric.name} skipped: {error}")
    finally:
        if discriminator is not None:
            discriminator.train(mode)
    return results


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
