"""Conv VAE on grayscale Fashion-MNIST with a Gaussian likelihood (MSE up to constants).

Purpose: Fashion-MNIST images are genuinely grayscale (textures, shading), not ink-on-paper
strokes like MNIST digits, so binarising them destroys most of the signal and a Bernoulli
likelihood is the wrong model. A Gaussian p(x|z) = N(x; decoder(z), sigma^2 I) treats each
pixel as a continuous intensity; with fixed sigma^2 its log-density is
-||x - mean||^2 / (2 sigma^2) - (D/2) log(2 pi sigma^2), i.e. the MSE loss scaled by
1/(2 sigma^2) plus a constant. sigma^2 sets the balance against the KL term: with
`model.gaussian_logvar = log(0.1)` the reconstruction term dominates more than with sigma^2 = 1.

The other likelihoods on the same model, data and schedule (`fashion_config`, shared by all
four files):
    fashion_mnist_gaussian_learned.py  learned per-pixel variance on dequantised pixels
    fashion_mnist_logistic.py          discretised logistic: the exact likelihood of 8-bit pixels
    fashion_mnist_bernoulli.py         Bernoulli on binarised pixels: the contrast

Command (needs fashion_mnist in the TFDS data_dir, or --config.data.download=True):
    python -m vae_jax.main --config experiments/fashion_mnist_gaussian.py \
        --workdir runs/fashion_gaussian --config.data.download=True

Hardware and time: not measured here (no offline copy of Fashion-MNIST on the development
machines); its loading and a few training steps are tested with `tfds.testing.mock_data`.
For scale: the same conv model and schedule on MNIST (`mnist_conv.py`, 20 epochs = 8,580
steps) took 4.4 minutes on the 2-core development CPU, shared with other jobs.
"""

import math

from vae_jax.config_defaults import default_config


def fashion_config(likelihood: str, *, binarization: str = "none", dequantize: bool = False):
    """The conv VAE on Fashion-MNIST that every `fashion_mnist_*.py` file trains: the same
    model, optimiser and 20-epoch schedule for all; the likelihood by name, and the data it
    sees (`data.binarization`, `data.dequantize`)."""
    config = default_config()
    config.data.name = "fashion_mnist"
    config.data.validation_size = 5000
    config.data.binarization = binarization
    config.data.dequantize = dequantize
    config.model.likelihood = likelihood
    config.model.encoder = "conv"
    config.model.decoder = "conv"
    config.model.latent_dim = 16
    config.run.batch_size = 128
    config.run.num_epochs = 20
    config.run.num_steps = 0
    config.run.steps_per_dispatch = 1
    config.run.log_every = 100
    config.run.eval_every = 2000
    config.run.checkpoint_every = 2000
    return config


def get_config():
    config = fashion_config("gaussian")
    config.model.gaussian_logvar = math.log(0.1)
    return config
