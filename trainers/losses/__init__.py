"""Loss classes of the GAN families (base.GanLoss subclasses) and their phase lists:
`wgan_gp` (WGAN-GP and ProGAN), `began`."""
