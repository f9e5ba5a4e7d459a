"""Generator and discriminator networks of the three GAN families, behind one interface.

Every generator has `latent_dim`, `init_kwargs` (its exact constructor keyword arguments,
JSON-serialisable, so a checkpoint can rebuild it), `sample_latents(n, generator, device)`
-> [n, latent_dim] and `forward(z, resolution, fade_alpha=1.0)` -> images [N, 3, R, R] in
roughly [-1, 1]. Every discriminator has `init_kwargs` and `forward(x, resolution,
fade_alpha=1.0)`: WGAN-GP and ProGAN critics return scores [N]; the BEGAN discriminator
returns its autoencoder reconstruction [N, 3, R, R].

Fixed-resolution networks (DCGAN, BEGAN) accept only their own resolution and ignore
`fade_alpha`; ProGAN networks run the blocks up to `resolution` and fade in the newest one.
"""

from torch import nn

from trainers.networks import began, dcgan, progan

NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        dcgan.DCGANGenerator,
        dcgan.DCGANCritic,
        began.BEGANGenerator,
        began.BEGANDiscriminator,
        progan.ProGANGenerator,
        progan.ProGANDiscriminator,
    )
}


def build_network(description: dict) -> nn.Module:
    """A network from its `{"class": name, "init_kwargs": {...}}` description (networks.json)."""
    return NETWORK_CLASSES[description["class"]](**description["init_kwargs"])
