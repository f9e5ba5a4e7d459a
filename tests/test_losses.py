"""Losses: the gradient penalty against analytic discriminators, phases run by the loop's own step,
BEGAN's k_t controller and its checkpointed state."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from tests.configs import tiny_config
from trainers.loop import DirectorySession, RunOptions, Trainer
from trainers.losses.base import Phase, StepState
from trainers.losses.began import BEGANLoss, began_phases, mode_seeking_term
from trainers.losses.wgan_gp import WGANGPLoss, gradient_penalty, wgan_gp_phases
from trainers.networks.began import BEGANDiscriminator, BEGANGenerator
from trainers.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from trainers.networks.progan import ProGANDiscriminator, ProGANGenerator
from trainers.prior import LatentPrior
from trainers.schedule import Stage

BATCH = 4


def step_state(resolution: int, fade_alpha: float = 1.0, **kwargs) -> StepState:
    return StepState(resolution, fade_alpha, torch.Generator().manual_seed(0), **kwargs)


def real_images(resolution: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, 3, resolution, resolution, generator=generator) * 2 - 1


def test_phase_lists():
    assert wgan_gp_phases(5) == [Phase("D", "D", 1), Phase("G", "G", 5)]
    assert began_phases() == [Phase("D", "D", 1), Phase("G", "G", 1)]


@pytest.mark.parametrize("shape", [(6, 5), (6, 3, 4, 4)])
def test_gradient_penalty_of_a_linear_discriminator(shape):
    weight = torch.randn(shape[1:], generator=torch.Generator().manual_seed(0))
    weight = weight * 3 / weight.norm()  # ‖∇D‖ = ‖w‖ = 3 everywhere, penalty (3 − 1)² = 4

    def discriminator(x):
        return (x * weight).flatten(1).sum(dim=1)

    real, fake = torch.randn(shape), torch.randn(shape)
    penalty = gradient_penalty(discriminator, real, fake, torch.rand(shape[0]))
    assert torch.allclose(penalty, torch.tensor(4.0), atol=1e-6)


def test_gradient_penalty_of_a_quadratic_discriminator_uses_epsilon_on_real():
    def discriminator(x):
        return 0.5 * x.square().sum(dim=1)  # gradient x, so the norm is ‖x̂‖

    real = torch.zeros(3, 4)
    fake = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    epsilon = torch.tensor([0.0, 0.25, 0.9])
    expected = (((1 - epsilon) * fake.norm(dim=1) - 1) ** 2).mean()  # x̂ = (1 − ε) · fake
    assert torch.allclose(gradient_penalty(discriminator, real, fake, epsilon), expected, atol=1e-6)


NORMAL_8 = LatentPrior("normal", 8)


def small_wgan(drift_weight: float = 0.0, gp_weight: float = 10.0) -> WGANGPLoss:
    torch.manual_seed(0)
    generator = ProGANGenerator(max_resolution=8, latent_dim=8, fmap_base=16, fmap_max=8)
    discriminator = ProGANDiscriminator(max_resolution=8, fmap_base=16, fmap_max=8)
    return WGANGPLoss(
        generator, discriminator, NORMAL_8, gp_weight=gp_weight, drift_weight=drift_weight
    )


def discriminator_gradients(loss: WGANGPLoss) -> list[torch.Tensor]:
    loss.D.zero_grad(set_to_none=True)
    loss.accumulate_gradients(Phase("D", "D"), real_images(8), step_state(8, 0.5))
    return [parameter.grad for parameter in loss.D.parameters()]


def test_discriminator_phase_gradients_include_the_penalty_and_spare_the_generator():
    with_penalty = discriminator_gradients(small_wgan(gp_weight=10.0))
    without_penalty = discriminator_gradients(small_wgan(gp_weight=0.0))
    assert all(gradient is not None for gradient in with_penalty)
    assert any(not torch.allclose(a, b) for a, b in zip(with_penalty, without_penalty, strict=True))
    assert all(parameter.grad is None for parameter in small_wgan().G.parameters())


@pytest.mark.parametrize("drift_weight", [0.0, 0.001])
def test_discriminator_phase_metrics_add_up_to_the_loss(drift_weight):
    loss = small_wgan(drift_weight=drift_weight)
    metrics = loss.accumulate_gradients(Phase("D", "D"), real_images(8), step_state(8))
    drift = metrics.get("drift", torch.tensor(0.0))
    assert ("drift" in metrics) == (drift_weight > 0)
    expected = -metrics["wasserstein"] + 10 * metrics["gradient_penalty"] + drift_weight * drift
    assert torch.allclose(metrics["loss"], expected, atol=1e-6)


def test_generator_phase_trains_the_generator_on_the_discriminator_score():
    loss = small_wgan()
    for parameter in loss.D.parameters():
        parameter.requires_grad_(False)  # as the loop does in a G phase
    # Mid fade-in, so every generator layer (both toRGBs) takes part.
    metrics = loss.accumulate_gradients(Phase("G", "G"), real_images(8), step_state(8, 0.5))
    assert metrics.keys() == {"loss"}
    assert all(parameter.grad is not None for parameter in loss.G.parameters())
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)  # the same latents as step_state's RNG
        fake = loss.G(NORMAL_8.sample(BATCH, generator), 8, 0.5)
        assert torch.allclose(metrics["loss"], -loss.D(fake, 8, 0.5).mean(), atol=1e-6)


def test_bf16_autocast_still_reduces_in_float32():
    loss = small_wgan(drift_weight=0.001)
    state = step_state(8, autocast_dtype=torch.bfloat16)
    metrics = loss.accumulate_gradients(Phase("D", "D"), real_images(8), state)
    assert all(value.dtype == torch.float32 and value.isfinite() for value in metrics.values())


def test_under_bf16_the_gradient_penalty_stays_float32():
    """The penalty's discriminator pass runs with autocast off: on the same fakes its value is the
    float32 one exactly, while the Wasserstein term (autocast) differs by bf16's rounding."""
    fake = torch.rand(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    runs = []
    for dtype in (None, torch.bfloat16):
        loss = small_wgan()
        loss.generate = lambda n, state, device: fake  # the same fakes in both precisions
        state = step_state(8, autocast_dtype=dtype)
        runs.append(loss.accumulate_gradients(Phase("D", "D"), real_images(8), state))
    full, half = runs
    assert torch.equal(half["gradient_penalty"], full["gradient_penalty"])
    assert not torch.equal(half["wasserstein"], full["wasserstein"])


def test_under_bf16_began_reconstructions_stay_float32():
    torch.manual_seed(0)
    generator = BEGANGenerator(resolution=32, latent_dim=8, channels=4)
    discriminator = BEGANDiscriminator(resolution=32, latent_dim=8, channels=4)
    loss = BEGANLoss(generator, discriminator, LatentPrior("uniform", 8))
    full = loss.accumulate_gradients(Phase("D", "D"), real_images(32), step_state(32))
    state = step_state(32, autocast_dtype=torch.bfloat16)
    half = loss.accumulate_gradients(Phase("D", "D"), real_images(32), state)
    assert torch.equal(half["reconstruction_real"], full["reconstruction_real"])


def test_a_few_adam_steps_lower_the_discriminator_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    generator = DCGANGenerator(resolution=32, latent_dim=16, channels=4).eval()
    discriminator = DCGANDiscriminator(resolution=32, channels=4)
    loss = WGANGPLoss(generator, discriminator, LatentPrior("normal", 16))
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.0, 0.9))
    real = real_images(32)
    losses = []
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        state = step_state(32)  # re-seeded: the same fakes and ε every step
        losses.append(loss.accumulate_gradients(Phase("D", "D"), real, state)["loss"].item())
        optimizer.step()
    assert losses[-1] < losses[0] - 0.1


def began_loss(**kwargs) -> BEGANLoss:
    return BEGANLoss(nn.Identity(), nn.Identity(), LatentPrior("uniform", 8), **kwargs)


def reconstructions(real: float, fake: float) -> dict[str, torch.Tensor]:
    return {
        "D/reconstruction_real": torch.tensor(real),
        "D/reconstruction_fake": torch.tensor(fake),
    }


def test_began_k_update_and_m_global_of_the_batch():
    loss = began_loss(gamma=0.5, lambda_k=0.1, k_initial=0.2)
    extra = loss.end_step(reconstructions(real=0.4, fake=0.1))
    balance = 0.5 * torch.tensor(0.4, dtype=torch.float64) - torch.tensor(0.1, dtype=torch.float64)
    assert extra["k_t"].dtype == torch.float64
    assert torch.allclose(extra["k_t"], 0.2 + 0.1 * balance, atol=1e-6)
    assert torch.allclose(extra["m_global_batch"], 0.4 + balance.abs(), atol=1e-6)
    extra = loss.end_step(reconstructions(real=0.1, fake=0.5))  # balance −0.45 < 0
    assert torch.allclose(extra["m_global_batch"].float(), torch.tensor(0.1 + 0.45), atol=1e-6)


@pytest.mark.parametrize(("real", "fake", "bound"), [(1.0, 0.0, 1.0), (0.0, 1.0, 0.0)])
def test_began_k_is_clipped_to_the_unit_interval(real, fake, bound):
    loss = began_loss(lambda_k=10.0, k_initial=0.5)
    for _ in range(3):
        assert loss.end_step(reconstructions(real, fake))["k_t"].item() == bound


def test_began_state_dict_round_trips_k():
    loss = began_loss(lambda_k=0.01, k_initial=0.3)
    loss.end_step(reconstructions(real=0.4, fake=0.1))
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    resumed = began_loss(lambda_k=0.01)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(resumed.k, loss.k) and resumed.k.dtype == torch.float64
    next_metrics = reconstructions(real=0.2, fake=0.3)
    assert torch.equal(resumed.end_step(next_metrics)["k_t"], loss.end_step(next_metrics)["k_t"])


def test_began_phases_through_a_loop_step(tmp_path):
    """The loop's own step on BEGAN's phases: D's loss weighs the fake reconstruction by k_t,
    the controller moves k_t after the step, G trains on its phase."""
    config = tiny_config(tmp_path, "began", model={"k_initial": 0.5})
    trainer = Trainer(config, RunOptions(), DirectorySession(tmp_path))
    discriminator = trainer.state.D
    real = real_images(32)
    with torch.no_grad():  # D before the step: the D phase comes first
        expected_real = (real - discriminator(real, 32)).abs().mean()
    metrics, finite = trainer.step(real, Stage(32, 1.0))
    assert finite
    assert torch.allclose(metrics["D/reconstruction_real"], expected_real, atol=1e-6)
    expected_d = metrics["D/reconstruction_real"] - 0.5 * metrics["D/reconstruction_fake"]
    assert torch.allclose(metrics["D/loss"], expected_d, atol=1e-6)
    assert {"k_t", "m_global_batch", "G/loss"} <= metrics.keys()
    assert metrics["k_t"].item() != 0.5  # the controller moved
    assert all(parameter.grad is not None for parameter in trainer.state.G.parameters())


@pytest.mark.parametrize("mode_seeking", [0.0, 0.5])
def test_began_updates_both_networks_from_one_pass_as_the_reference(mode_seeking):
    """D's gradient is ∇[L(x) − k_t L(G(z))] and G's is ∇L(G(z)) at the same latents and at D
    before its step, as the reference code's one graph gives them; G's adds λ ∇ of the
    mode-seeking term where λ > 0."""
    torch.manual_seed(0)
    generator = BEGANGenerator(resolution=32, latent_dim=8, channels=4)
    discriminator = BEGANDiscriminator(resolution=32, latent_dim=8, channels=4)
    prior = LatentPrior("uniform", 8)
    loss = BEGANLoss(generator, discriminator, prior, k_initial=0.3, mode_seeking=mode_seeking)
    real = real_images(32)
    latents = loss.latents(BATCH, step_state(32), real.device)  # the draw the D phase makes
    fake = generator(latents, 32)
    l_real = (real - discriminator(real, 32)).abs().mean()
    l_fake = (fake - discriminator(fake, 32)).abs().mean()
    d_params, g_params = list(discriminator.parameters()), list(generator.parameters())
    expected_d = torch.autograd.grad(l_real - 0.3 * l_fake, d_params, retain_graph=True)
    expected_g = torch.autograd.grad(l_fake + mode_seeking * mode_seeking_term(fake, latents),
                                     g_params)  # fmt: skip

    state = step_state(32)
    generator.requires_grad_(False)
    found = loss.accumulate_gradients(Phase("D", "D"), real, state)
    with torch.no_grad():
        for parameter in d_params:  # D steps before the G phase: G must not see the new D
            parameter.add_(1.0)
    generator.requires_grad_(True)
    discriminator.requires_grad_(False)
    found_g = loss.accumulate_gradients(Phase("G", "G"), real, state)

    assert torch.allclose(found["loss"], l_real - 0.3 * l_fake, atol=1e-6)
    assert torch.allclose(found_g["loss"], l_fake, atol=1e-6)
    for parameter, expected in zip(d_params, expected_d, strict=True):
        assert torch.allclose(parameter.grad, expected, atol=1e-5)
    for parameter, expected in zip(g_params, expected_g, strict=True):
        assert torch.allclose(parameter.grad, expected, atol=1e-5)
    assert ("mode_seeking" in found_g) == (mode_seeking > 0)


def test_mode_seeking_term_is_large_for_near_identical_pairs_and_splits_as_the_batch():
    latents = torch.rand(8, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    close = images.clone()
    close[1::2] = close[0::2] + 1e-3  # every pair near-identical
    assert mode_seeking_term(close, latents) > 100 * mode_seeking_term(images, latents)
    halves = [mode_seeking_term(images[i : i + 4], latents[i : i + 4]) for i in (0, 4)]
    torch.testing.assert_close(sum(halves) / 2, mode_seeking_term(images, latents))
    odd = mode_seeking_term(images[:3], latents[:3])  # the third row has no partner
    torch.testing.assert_close(odd, mode_seeking_term(images[:2], latents[:2]))
    assert mode_seeking_term(images[:1], latents[:1]) == 0


def test_began_g_phase_needs_the_d_phase_of_its_step():
    generator = BEGANGenerator(resolution=32, latent_dim=8, channels=4)
    discriminator = BEGANDiscriminator(resolution=32, latent_dim=8, channels=4)
    loss = BEGANLoss(generator, discriminator, LatentPrior("uniform", 8))
    with pytest.raises(RuntimeError, match="D phase"):
        loss.accumulate_gradients(Phase("G", "G"), real_images(32), step_state(32))
