"""What a measurement is made of: one generator (a Sampler, at one stage, with its prior)
against one dataset, with the seed that fixes every draw. Metrics read their images from it.

Images come in fixed chunks of chunk_size: image i always comes from the same latent and the
same random draws, whichever rank makes it, so a result does not depend on the number of ranks
(see trainers.metrics.collective)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trainers import distributed
from trainers.data.reader import real_chunks
from trainers.metrics.collective import gather_chunks
from trainers.metrics.inception import load_fid_inception
from trainers.sampling import Sampler
from trainers.seeding import derived_seed

CHUNK = 50  # images per unit of work; fixes which latent and which RNG draw image i gets


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
