"""Wasserstein loss with gradient penalty (Gulrajani et al. 2017), also ProGAN's loss (with the
drift term ε_drift = 0.001 of Karras et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainers.losses.base import GanLoss, Phase, StepState
from trainers.prior import LatentPrior


def wgan_gp_phases(n_critic: int) -> list[Phase]:
    """D trains every step, G every n_critic-th step (5 in the paper)."""
    return [Phase("D", "D", 1), Phase("G", "G", n_critic)]


def gradient_penalty(
    discriminator_fn: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    epsilon: torch.Tensor,
) -> torch.Tensor:
    """mean over samples of (‖∇_x̂ D(x̂)‖₂ − 1)² at x̂ = ε·real + (1 − ε)·fake.

    `epsilon` holds one weight per sample [N]. The graph is kept (create_graph) so the
    penalty's gradient reaches D's parameters.
    """
    weights = epsilon.view(-1, *[1] * (real.dim() - 1))  # [N, 1, ...] broadcast per sample
    interpolated = torch.lerp(fake, real, weights).detach().requires_grad_(True)
    scores = discriminator_fn(interpolated)
    (gradients,) = torch.autograd.grad(scores.sum(), interpolated, create_graph=True)
    norms = gradients.float().flatten(1).norm(dim=1)  # [N]
    return (norms - 1).square().mean()


class WGANGPLoss(GanLoss):
    def __init__(
        self,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        prior: LatentPrior,
        gp_weight: float = 10.0,  # λ of the paper
        drift_weight: float = 0.0,  # ProGAN uses 0.001 to keep real scores near 0
    ):
        super().__init__(generator, discriminator, prior)
        self.gp_weight = gp_weight
        self.drift_weight = drift_weight

    def accumulate_gradients(
        self, phase: Phase, real: torch.Tensor, state: StepState
    ) -> dict[str, torch.Tensor]:
        if phase.trains == "D":
            return self._discriminator_step(real, state)
        loss = -self.discriminate(self.generate(len(real), state, real.device), state).mean()
        loss.backward()
        return {"loss": loss.detach()}

    def _discriminator_step(self, real: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            fake = self.generate(len(real), state, real.device)
        # One D call per batch kind, so minibatch stddev sees only real or only fake.
        real_scores = self.discriminate(real, state)
        fake_scores = self.discriminate(fake, state)
        epsilon = state.rows(
            len(real),
            lambda m: torch.rand(m, generator=state.generator, device=state.generator.device),
        )
        # float32 under bf16 too, as every reference: the penalty is a double backward of a
        # norm held near 1, where bf16's 8-bit mantissa leaves ~1% error per value
        penalty = gradient_penalty(
            lambda images: self.discriminate(images, state, full_precision=True),
            real,
            fake,
            epsilon.to(real),
        )
        wasserstein = real_scores.mean() - fake_scores.mean()
        loss = -wasserstein + self.gp_weight * penalty
        metrics = {"wasserstein": wasserstein, "gradient_penalty": penalty}
        if self.drift_weight > 0:
            drift = real_scores.square().mean()
            loss = loss + self.drift_weight * drift
            metrics["drift"] = drift
        loss.backward()
        return {"loss": loss.detach()} | {name: value.detach() for name, value in metrics.items()}
