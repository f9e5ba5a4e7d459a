"""The distribution a generator's latents come from: its own module, so the sampler, the losses
and the registry use it without the family machinery (and no import runs in a circle)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LatentPrior:
    """The distribution G's latents come from. Recorded with every checkpoint and registered
    model, so whoever samples a generator feeds it what it was trained on."""

    distribution: Literal["normal", "uniform"]  # N(0, 1), or U[-1, 1] per component
    latent_dim: int

    def sample(
        self, n: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """[n, latent_dim] float32, drawn on the RNG's own device and then moved, so a CPU
        generator gives the same numbers to a model on any device."""
        import torch

        shape = (n, self.latent_dim)
        if self.distribution == "normal":
            latents = torch.randn(shape, generator=generator, device=generator.device)
        else:
            latents = torch.rand(shape, generator=generator, device=generator.device) * 2 - 1
        return latents.to(device)

    def seeded(self, n: int, seed: int) -> torch.Tensor:
        """The n latents `ganforge sample --seed` draws: equal for a checkpoint and its model."""
        import torch

        return self.sample(n, torch.Generator().manual_seed(seed))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LatentPrior:
        return cls(data["distribution"], int(data["latent_dim"]))
