"""Generator and discriminator networks of the GAN families: plain modules, built by their
family (trainers.families) from its config.

Every generator has `latent_dim` and `forward(z, resolution, fade_alpha=1.0)` -> images
[N, 3, R, R] in roughly [-1, 1]; its latents come from the family's prior. Every
discriminator has `forward(x, resolution, fade_alpha=1.0)`: the WGAN-GP and ProGAN ones (the
WGAN-GP paper's "critics") return scores [N]; BEGAN's returns its autoencoder reconstruction
[N, 3, R, R].

Fixed-resolution networks (DCGAN, BEGAN) accept only their own resolution and ignore
`fade_alpha`; ProGAN networks run the blocks up to `resolution` and fade in the newest one.
"""
