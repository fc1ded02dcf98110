"""Conv VAE on grayscale Fashion-MNIST with a Gaussian likelihood (MSE up to constants).

Purpose: Fashion-MNIST images are genuinely grayscale (textures, shading), not ink-on-paper
strokes like MNIST digits, so binarising them destroys most of the signal and a Bernoulli
likelihood is the wrong model. A Gaussian p(x|z) = N(x; decoder(z), sigma^2 I) treats each
pixel as a continuous intensity; with fixed sigma^2 its log-density is
-||x - mean||^2 / (2 sigma^2) - (D/2) log(2 pi sigma^2), i.e. the MSE loss scaled by
1/(2 sigma^2) plus a constant. sigma^2 sets the balance against the KL term: with
`gaussian_logvar = log(0.1)` the reconstruction term dominates more than with sigma^2 = 1.
Use `likelihood="gaussian_learned"` to learn a per-pixel variance instead.

Command (needs fashion_mnist in the TFDS data_dir, or --config.data.download=True):
    python -m vae_jax.main --config experiments/fashion_mnist_gaussian.py \
        --workdir runs/fashion_gaussian --config.data.download=True

Hardware and time: not measured here (no offline copy of Fashion-MNIST on the development
machines); its loading is tested with `tfds.testing.mock_data`.
"""

import math

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "fashion_mnist"
    config.data.validation_size = 5000
    config.data.binarization = "none"
    config.likelihood = "gaussian"
    config.gaussian_logvar = math.log(0.1)
    config.encoder = "conv"
    config.decoder = "conv"
    config.latent_dim = 16
    config.batch_size = 128
    config.num_epochs = 20
    config.num_steps = 0
    config.steps_per_dispatch = 1
    config.log_every = 100
    config.eval_every = 2000
    config.checkpoint_every = 2000
    return config
