"""Boundary equilibrium GAN loss (Berthelot et al. 2017): the discriminator is an autoencoder
and k_t balances how hard it pushes fake reconstructions away."""

from __future__ import annotations

import torch

from trainers.losses.base import GanLoss, Phase, StepState
from trainers.prior import LatentPrior


def began_phases() -> list[Phase]:
    return [Phase("D", "D"), Phase("G", "G")]


def mode_seeking_term(fake: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al. 2019) over the pairs of rows (0, 1), (2, 3), ...:
    the mean over pairs of |z1 − z2| / |G(z1) − G(z2)| (mean absolute differences), which is
    large where two latents give near-identical images. Per pair, so the mean splits over
    ranks as the batch does; an odd batch's last row takes no part."""
    even = len(fake) // 2 * 2
    if not even:
        return fake.sum() * 0.0  # one row: no pair
    images = (fake[0:even:2] - fake[1:even:2]).abs().flatten(1).mean(1)
    codes = (latents[0:even:2] - latents[1:even:2]).abs().mean(1)
    return (codes / (images + 1e-5 * codes)).mean()


class BEGANLoss(GanLoss):
    def __init__(
        self,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        prior: LatentPrior,
        gamma: float = 0.5,  # diversity ratio E[L(G(z))] / E[L(x)]; lower is sharper, less varied
        lambda_k: float = 0.001,  # proportional gain of the k_t controller
        k_initial: float = 0.0,
        mode_seeking: float = 0.0,  # weight of mode_seeking_term in G's loss; 0: the paper's
    ):
        super().__init__(generator, discriminator, prior)
        self.mode_seeking = mode_seeking
        self.gamma = gamma
        self.lambda_k = lambda_k
        # float64: k_t moves by ~1e-4 a step, which float32 rounding would distort near 1.
        self.k = torch.tensor(k_initial, dtype=torch.float64)
        # between a step's D and G phases: its latents, dL(G(z))/dG(z) and L(G(z))
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _autoencoder_loss(self, images: torch.Tensor, state: StepState) -> torch.Tensor:
        """L(v) = mean |v − D(v)|, the pixel-wise L1 reconstruction error. In float32 under
        bf16 too: k_t steers on the small difference γ L(x) − L(G(z)) of two such errors."""
        return (images - self.discriminate(images, state, full_precision=True)).abs().mean()

    def accumulate_gradients(
        self, phase: Phase, real: torch.Tensor, state: StepState
    ) -> dict[str, torch.Tensor]:
        """Both networks learn from one pass over one batch of fakes, as the reference code
        (one graph, both optimizers stepped): the D phase takes D's gradient and keeps
        dL(G(z))/dG(z) at the pre-step D, and the G phase replays G(z) to carry that gradient
        into G, instead of running D on fresh fakes again (BEGAN's quickstart step 1.2x as
        fast)."""
        if phase.trains == "D":
            k = self.k.item()
            latents = self.latents(len(real), state, real.device)
            with torch.no_grad():
                fake = self.generate_from(latents, state)
            fake.requires_grad_(True)
            reconstruction_fake = self._autoencoder_loss(fake, state)
            reconstruction_fake.backward()  # D's ∇L(G(z)), and ∇ at G(z) for the G phase
            self._pending = (latents, fake.grad, reconstruction_fake.detach())
            for parameter in self.D.parameters():
                if parameter.grad is not None:
                    parameter.grad.mul_(-k)  # the k_t-weighted term of D's loss
            reconstruction_real = self._autoencoder_loss(real, state)
            reconstruction_real.backward()
            loss = reconstruction_real.detach() - k * reconstruction_fake.detach()
            return {
                "loss": loss,
                "reconstruction_real": reconstruction_real.detach(),
                "reconstruction_fake": reconstruction_fake.detach(),
            }
        if self._pending is None:
            raise RuntimeError("BEGAN's G phase needs the D phase of the same step before it")
        latents, fake_gradient, reconstruction_fake = self._pending
        self._pending = None
        fake = self.generate_from(latents, state)
        if not self.mode_seeking:
            fake.backward(fake_gradient)
            return {"loss": reconstruction_fake}  # L(G(z)) of these fakes, at the pre-step D
        mode_seeking = mode_seeking_term(fake, latents)
        ((fake * fake_gradient).sum() + self.mode_seeking * mode_seeking).backward()
        return {"loss": reconstruction_fake, "mode_seeking": mode_seeking.detach()}

    def end_step(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # "D/": the name of the phase that measured them in began_phases().
        reconstruction_real = metrics["D/reconstruction_real"].to(self.k)
        reconstruction_fake = metrics["D/reconstruction_fake"].to(self.k)
        balance = self.gamma * reconstruction_real - reconstruction_fake
        self.k = (self.k + self.lambda_k * balance).clamp(0.0, 1.0)
        # The paper's convergence measure M_global on this step's batch (the metric m_global
        # measures it over the dataset): low when reconstructions are good and the balance holds.
        m_global = reconstruction_real + balance.abs()
        return {"k_t": self.k.clone(), "m_global_batch": m_global}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"k_t": self.k.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        assert state.keys() == {"k_t"}, f"BEGANLoss expects only k_t, got {sorted(state)}"
        self.k = state["k_t"].to(torch.float64).clone()
