"""Networks: shapes, resolution checks, ProGAN's fade-in and layers, EMA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainers.ema import update_ema
from trainers.families import FAMILIES
from trainers.networks.began import BEGANDiscriminator, BEGANGenerator
from trainers.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from trainers.networks.layers import EqualizedConv2d, EqualizedLinear, MinibatchStddev, PixelNorm
from trainers.networks.progan import ProGANDiscriminator, ProGANGenerator, feature_maps
from trainers.prior import LatentPrior

BATCH = 4
# Small ProGAN widths so the tests run in seconds: 16 channels at 4 and 8 px, 8 at 16, 4 at 32.
SMALL_PROGAN = {"max_resolution": 32, "fmap_base": 64, "fmap_max": 16}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_progan() -> tuple[ProGANGenerator, ProGANDiscriminator]:
    torch.manual_seed(0)
    return ProGANGenerator(latent_dim=16, **SMALL_PROGAN), ProGANDiscriminator(**SMALL_PROGAN)


def latents_for(generator: nn.Module) -> torch.Tensor:
    return LatentPrior("normal", generator.latent_dim).sample(BATCH, seeded())


def images(resolution: int, batch: int = BATCH) -> torch.Tensor:
    return torch.rand(batch, 3, resolution, resolution, generator=seeded(1)) * 2 - 1


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_dcgan_shapes(resolution):
    generator = DCGANGenerator(resolution=resolution, latent_dim=16, channels=4)
    discriminator = DCGANDiscriminator(resolution=resolution, channels=4)
    fake = generator(latents_for(generator), resolution)
    assert fake.shape == (BATCH, 3, resolution, resolution)
    assert fake.abs().max() <= 1  # tanh output
    assert discriminator(fake, resolution).shape == (BATCH,)


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_began_shapes(resolution):
    generator = BEGANGenerator(resolution=resolution, latent_dim=8, channels=4)
    discriminator = BEGANDiscriminator(resolution=resolution, latent_dim=8, channels=4)
    fake = generator(latents_for(generator), resolution)
    assert fake.shape == (BATCH, 3, resolution, resolution)
    assert discriminator(fake, resolution).shape == fake.shape


def test_began_skip_connections_feed_h0_to_every_larger_scale():
    """With the paper's skips, each scale past 8² takes h0 beside its input (twice the
    channels), and the decoder's weights keep their names without them (checkpoints load)."""
    torch.manual_seed(0)
    plain = BEGANGenerator(resolution=32, latent_dim=8, channels=4)
    skips = BEGANGenerator(resolution=32, latent_dim=8, channels=4, skip_connections=True)
    first_convs = [m for m in skips.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 8]
    assert len(first_convs) == 2  # at 16² and 32²
    assert plain.state_dict().keys() == skips.state_dict().keys()
    latents = latents_for(skips)
    assert skips(latents, 32).shape == (BATCH, 3, 32, 32)
    seen = {}
    skips.decoder.layers[1].register_forward_hook(lambda m, args, out: seen.update(h0=out))
    first_convs[1].register_forward_pre_hook(lambda m, args: seen.update(at_32=args[0]))
    skips(latents, 32)
    upsampled = F.interpolate(seen["h0"], size=(32, 32), mode="nearest")
    assert torch.equal(seen["at_32"][:, 4:], upsampled)
    discriminator = BEGANDiscriminator(32, 8, 4, skip_connections=True)
    assert discriminator(skips(latents, 32), 32).shape == (BATCH, 3, 32, 32)


def test_began_reference_initialization_is_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    layers = [
        m
        for m in BEGANDiscriminator(32, 8, 16, initialization="xavier").modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    for layer in layers:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        bound = (6 / (fan_in + fan_out * layer.weight[0, 0].numel())) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert not layer.bias.any()
    untouched = BEGANGenerator(32, 8, 16, initialization="pytorch").decoder.layers[2]
    assert untouched.bias.any()  # PyTorch's default biases are not zero
    with pytest.raises(ValueError, match="initialization"):
        BEGANGenerator(32, 8, 16, initialization="glorot")


@pytest.mark.parametrize("resolution", [4, 8, 16, 32])
def test_progan_shapes_at_every_resolution(resolution):
    generator, discriminator = small_progan()
    latents = latents_for(generator)
    fade_alpha = 1.0 if resolution == 4 else 0.5
    fake = generator(latents, resolution, fade_alpha)
    assert fake.shape == (BATCH, 3, resolution, resolution)
    assert discriminator(fake, resolution, fade_alpha).shape == (BATCH,)


@pytest.mark.parametrize(
    "build",
    [
        lambda: DCGANGenerator(resolution=16),
        lambda: DCGANDiscriminator(resolution=256),
        lambda: DCGANGenerator(resolution=48),
        lambda: BEGANGenerator(resolution=16),
        lambda: BEGANDiscriminator(resolution=96),
        lambda: ProGANGenerator(max_resolution=2048),
        lambda: ProGANDiscriminator(max_resolution=100),
        lambda: ProGANGenerator(max_resolution=64, fmap_base=16),  # no maps left at 64 px
        lambda: ProGANDiscriminator(max_resolution=8, mbstd_group_size=1),
    ],
)
def test_bad_constructor_arguments_are_errors(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize(
    ("resolution", "fade_alpha"), [(64, 1.0), (12, 1.0), (2, 1.0), (4, 0.5), (8, 1.5)]
)
def test_progan_rejects_bad_resolution_or_fade(resolution, fade_alpha):
    generator, discriminator = small_progan()
    with pytest.raises(ValueError):
        generator(latents_for(generator), resolution, fade_alpha)
    with pytest.raises(ValueError):
        discriminator(images(max(resolution, 4)), resolution, fade_alpha)


def test_fixed_resolution_nets_refuse_other_resolutions():
    generator = DCGANGenerator(resolution=32, latent_dim=8, channels=4)
    with pytest.raises(AssertionError):
        generator(latents_for(generator), 64)


SMALL_CONFIGS = {
    "wgan_gp": {"resolution": 32, "latent_dim": 8, "channels": 4},
    "began": {"resolution": 32, "latent_dim": 8, "channels": 4},
    "progan": {"resolution": 32, "latent_dim": 16, "fmap_base": 64, "fmap_max": 16},
}


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_the_config_alone_rebuilds_the_networks(name):
    """A checkpoint stores the config, not constructor arguments: the family rebuilds the same
    architecture from the config's JSON."""
    family = FAMILIES[name](FAMILIES[name].config_class(**SMALL_CONFIGS[name]))
    rebuilt_config = family.config_class.model_validate_json(family.config.model_dump_json())
    rebuilt = FAMILIES[name](rebuilt_config)
    for build in ("build_generator", "build_discriminator"):
        network = getattr(family, build)()
        getattr(rebuilt, build)().load_state_dict(network.state_dict())  # strict: same shapes


def test_latent_priors_and_reproducibility():
    normal = LatentPrior("normal", 16).sample(4096, seeded(3))
    assert normal.shape == (4096, 16)
    assert abs(normal.mean()) < 0.02 and abs(normal.std() - 1) < 0.02
    assert torch.equal(normal, LatentPrior("normal", 16).sample(4096, seeded(3)))
    uniform = LatentPrior("uniform", 16).sample(4096, seeded(3))
    assert -1 <= uniform.min() < -0.99 and 0.99 < uniform.max() <= 1
    assert abs(uniform.mean()) < 0.02
    assert torch.equal(
        LatentPrior("uniform", 16).seeded(8, 5), LatentPrior("uniform", 16).seeded(8, 5)
    )


def test_each_family_draws_from_its_papers_prior():
    priors = {name: family(family.config_class()).prior for name, family in FAMILIES.items()}
    assert {name: prior.distribution for name, prior in priors.items()} == {
        "wgan_gp": "normal",
        "began": "uniform",
        "progan": "normal",
    }


def test_official_dcgan_discriminator_has_layer_norm_on_convs_two_to_four_and_5x5_kernels():
    discriminator = DCGANDiscriminator(
        resolution=64, channels=8
    )  # the defaults are the official ones
    layers = list(discriminator.layers)
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
    assert len(convs) == 4 and all(layers[i].kernel_size == (5, 5) for i in convs)
    normalized = [isinstance(layers[i + 1], nn.GroupNorm) for i in convs]
    assert normalized == [False, True, True, True]
    assert all(layers[i + 1].num_groups == 1 for i in convs[1:])  # over (C, H, W) per sample
    weights = torch.cat([layers[i].weight.flatten() for i in convs])
    assert abs(weights.std() - 0.02) < 0.002 and abs(weights.mean()) < 0.002
    generator = DCGANGenerator(resolution=64, latent_dim=16, channels=8)
    fake = generator(latents_for(generator), 64)
    assert fake.shape == (BATCH, 3, 64, 64) and discriminator(fake, 64).shape == (BATCH,)
    plain = DCGANDiscriminator(resolution=64, channels=8, kernel_size=4, discriminator_norm="none")
    assert not any(isinstance(layer, nn.GroupNorm) for layer in plain.layers)


def test_layer_norm_keeps_the_discriminator_per_sample():
    """The penalty takes each sample's gradient alone: a sample's score must not depend on the
    rest of the batch (batch norm would make it)."""
    discriminator = DCGANDiscriminator(resolution=32, channels=4)
    batch = images(32)
    assert torch.allclose(discriminator(batch, 32)[:1], discriminator(batch[:1], 32), atol=1e-6)


def test_progan_channels_follow_the_official_schedule():
    channels = [feature_maps(2**p, 8192, 512) for p in range(2, 11)]
    assert channels == [512, 512, 512, 512, 256, 128, 64, 32, 16]


def test_generator_fade_in_starts_at_upsampled_previous_output():
    generator, _ = small_progan()
    latents = latents_for(generator)
    previous = generator(latents, 8)
    expected = F.interpolate(previous, scale_factor=2, mode="nearest")
    assert torch.allclose(generator(latents, 16, fade_alpha=0.0), expected, atol=1e-6)


def test_generator_fade_in_ends_on_the_new_block_alone():
    generator, _ = small_progan()
    latents = latents_for(generator)
    grown, halfway = generator(latents, 16, 1.0), generator(latents, 16, 0.5)
    with torch.no_grad():
        generator.to_rgb[1].weight.mul_(3).add_(1)  # toRGB of 8 px, the previous resolution
    assert torch.allclose(generator(latents, 16, 1.0), grown, atol=1e-6)
    assert not torch.allclose(generator(latents, 16, 0.5), halfway)


def test_discriminator_fade_in_starts_at_downsampled_previous_input():
    _, discriminator = small_progan()
    x = images(16)
    expected = discriminator(F.avg_pool2d(x, 2), 8)
    assert torch.allclose(discriminator(x, 16, fade_alpha=0.0), expected, atol=1e-6)


def test_discriminator_fade_in_ends_on_the_new_block_alone():
    _, discriminator = small_progan()
    x = images(16)
    grown, halfway = discriminator(x, 16, 1.0), discriminator(x, 16, 0.5)
    with torch.no_grad():
        discriminator.from_rgb[1][0].weight.mul_(3).add_(1)  # fromRGB of 8 px
    assert torch.allclose(discriminator(x, 16, 1.0), grown, atol=1e-6)
    assert not torch.allclose(discriminator(x, 16, 0.5), halfway)


def test_equalized_conv_scales_stored_normal_weights_by_he_constant():
    torch.manual_seed(0)
    layer = EqualizedConv2d(16, 32, 3)
    assert abs(layer.weight.mean()) < 0.05 and abs(layer.weight.std() - 1) < 0.05
    assert torch.count_nonzero(layer.bias) == 0
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 16, 8, 8)
    effective = layer.weight * math.sqrt(2 / (16 * 3 * 3))
    assert torch.allclose(layer(x), F.conv2d(x, effective, layer.bias, padding=1), atol=1e-6)


def test_equalized_linear_gain_and_gradient_scale():
    torch.manual_seed(0)
    layer = EqualizedLinear(64, 8, gain=1.0)
    scale = 1 / math.sqrt(64)
    x = torch.randn(5, 64)
    effective = (layer.weight * scale).detach().requires_grad_(True)
    assert torch.allclose(layer(x), F.linear(x, effective, layer.bias), atol=1e-6)
    layer(x).square().sum().backward()
    F.linear(x, effective, layer.bias).square().sum().backward()
    # The stored weight's gradient is the effective weight's, scaled by the same constant.
    assert torch.allclose(layer.weight.grad, effective.grad * scale, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8, 5, 5), (6, 32)])
def test_pixel_norm_gives_unit_mean_square_over_channels(shape):
    scale = torch.rand(shape[0], 1, *shape[2:]) * 10 + 0.1  # varies per pixel
    x = torch.randn(shape) * scale
    mean_square = PixelNorm()(x).square().mean(dim=1)
    assert torch.allclose(mean_square, torch.ones_like(mean_square), atol=1e-6)


def test_minibatch_stddev_appends_each_groups_mean_stddev():
    x = torch.randn(8, 3, 4, 4, generator=seeded())
    output = MinibatchStddev(group_size=4)(x)
    assert output.shape == (8, 4, 4, 4)
    assert torch.allclose(output[:, :3], x, atol=1e-6)
    for group in range(2):  # 8 samples in groups of 4 consecutive ones
        members = x[4 * group : 4 * group + 4]
        expected = members.std(dim=0, unbiased=False).mean()
        feature = output[4 * group : 4 * group + 4, 3]
        assert torch.allclose(feature, expected.expand_as(feature), atol=1e-6)
    # split at a multiple of the group size (over workers), each part gets the same feature
    halves = torch.cat([MinibatchStddev(group_size=4)(part) for part in x.split(4)])
    assert torch.equal(halves, output)


def test_minibatch_stddev_groups_are_independent():
    layer = MinibatchStddev(group_size=2)
    x = torch.randn(4, 2, 4, 4, generator=seeded())
    changed = x.clone()
    changed[0] *= 5  # sample 0 is in group 0 with sample 1
    before, after = layer(x)[:, 2], layer(changed)[:, 2]
    assert torch.allclose(after[[2, 3]], before[[2, 3]], atol=1e-6)
    assert not torch.allclose(after[[0, 1]], before[[0, 1]])


def test_minibatch_stddev_batch_must_split_into_groups():
    layer = MinibatchStddev(group_size=4)
    assert layer(torch.randn(2, 3, 4, 4)).shape == (2, 4, 4, 4)  # group shrinks to the batch
    with pytest.raises(ValueError, match="multiple of mbstd_group_size"):
        layer(torch.randn(6, 3, 4, 4))


def test_update_ema_interpolates_parameters_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    model(torch.randn(8, 4))  # training-mode forward moves BatchNorm's running statistics
    old = [parameter.clone() for parameter in ema.parameters()]
    update_ema(ema, model, beta=0.9)
    for ema_parameter, old_parameter, parameter in zip(
        ema.parameters(), old, model.parameters(), strict=True
    ):
        assert torch.allclose(ema_parameter, 0.9 * old_parameter + 0.1 * parameter, atol=1e-6)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(ema_buffer, buffer)


def test_began_generator_channels_widen_g_alone():
    """model.generator_channels gives G its own n; D's encoder and decoder keep `channels`."""
    from trainers.families.began import Began, BeganConfig

    def widths(module: nn.Module) -> set[int]:
        return {m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)}

    family = Began(BeganConfig(resolution=32, latent_dim=8, channels=4, generator_channels=6))
    generator, discriminator = family.build_generator(), family.build_discriminator()
    assert widths(generator) == {6, 3}  # its convs, and the one to RGB
    assert widths(discriminator.decoder) == {4, 3}
    fake = generator(latents_for(generator), 32)
    assert discriminator(fake, 32).shape == fake.shape == (BATCH, 3, 32, 32)
    same = Began(BeganConfig(resolution=32, latent_dim=8, channels=4)).build_generator()
    assert widths(same) == {4, 3}
