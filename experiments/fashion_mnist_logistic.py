"""Conv VAE on Fashion-MNIST with a discretised logistic likelihood: exact for 8-bit pixels.

Purpose: the likelihood to report. The decoder outputs a location and a log-scale per pixel,
and p(k | z) is the mass of a logistic distribution over the bin of level k, with the two
edge bins taking the tails (Salimans et al. 2017, PixelCNN++, without the mixture): a
probability distribution over the 256 levels themselves, so -ELBO is the code length of the
8-bit image in nats (no dequantisation, no conversion), and bits/dim = -log2 P(x) / 784 is
directly comparable with published Fashion-MNIST numbers and with the bound of
`fashion_mnist_gaussian_learned.py`. Pixels go in as k / 255, unbinarised.

Command (needs fashion_mnist in the TFDS data_dir, or --config.data.download=True):
    python -m vae_jax.main --config experiments/fashion_mnist_logistic.py \
        --workdir runs/fashion_logistic --config.data.download=True
    python -m vae_jax.evaluate --workdir runs/fashion_logistic    # test NLL, bits_per_dim

Hardware and time: not measured here: no offline Fashion-MNIST on the development machines
(a few training steps are tested on `tfds.testing.mock_data`). The schedule is that of
`fashion_mnist_gaussian.py` (20 epochs, 8,580 steps of batch 128).

What it should show: the lowest bits/dim of the Fashion-MNIST configs (a positive
reconstruction term: a real number of nats) with sharp reconstructions that keep textures. On
MNIST the same likelihood measured 1.54 bits/dim against a 5.57 bits/dim bound for the
dequantised learned-variance Gaussian (`mnist_likelihoods.py`); Fashion-MNIST has more
grey levels in use, so expect more bits/dim than on MNIST, not the same number.
"""

import pathlib
import runpy

# The shared set-up (experiment files are not a package: load the sibling by path).
fashion_config = runpy.run_path(
    str(pathlib.Path(__file__).with_name("fashion_mnist_gaussian.py")))["fashion_config"]


def get_config():
    return fashion_config("discretized_logistic")
