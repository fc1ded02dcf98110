"""Conv VAE on dequantised Fashion-MNIST with a learned per-pixel Gaussian variance.

Purpose: the model of `fashion_mnist_gaussian.py` with sigma^2 learned instead of chosen: the
decoder outputs a mean and a log-variance for every pixel (`model.likelihood="gaussian_learned"`),
so no sigma^2 has to be picked as a KL weight. On the grid points x = k / 255 a learned
variance has a degenerate direction: much of the background is exactly 0, and shrinking the
variance of those pixels raises the density there without limit (the "likelihood" becomes
positive and meaningless). So the pixels are uniformly dequantised (`data.dequantize=True`):
every step sees y = (k + u) / 256, u ~ U[0, 1) per pixel; the expected log-density of a pixel
over its bin of width 1/256 is at most log 256 (Gibbs' inequality: the uniform density on the
bin is the best), and the ELBO becomes a bound on the code length of the 8-bit images (Theis
et al. 2016):

    bits/dim <= -ELBO(y) / (D ln 2) + log2 256      (D = 784)

logged during training as `val_bits_per_dim`. `python -m vae_jax.evaluate` scores the test set
on the same footing (one dequantisation per image, importance-sampled -log p(y) + D log 256).

Command (needs fashion_mnist in the TFDS data_dir, or --config.data.download=True):
    python -m vae_jax.main --config experiments/fashion_mnist_gaussian_learned.py \
        --workdir runs/fashion_gaussian_learned --config.data.download=True
    python -m vae_jax.evaluate --workdir runs/fashion_gaussian_learned

Hardware and time: not measured here: no offline Fashion-MNIST on the development machines
(a few training steps are tested on `tfds.testing.mock_data`). The schedule is that of
`fashion_mnist_gaussian.py` (20 epochs, 8,580 steps of batch 128).

What it should show: val_bits_per_dim well below the 8 bits/dim of a uniform guess and finite
for the whole run, and an upper bound comparable with the exact bits/dim of
`fashion_mnist_logistic.py` (same data, same model), which it should not beat: on MNIST
(`mnist_likelihoods.py`) the dequantised learned-variance Gaussian measured 5.57 bits/dim
against 1.54 for the discretised logistic. Reconstructions keep shading and texture, unlike
`fashion_mnist_bernoulli.py`.
"""

import pathlib
import runpy

# The shared set-up (experiment files are not a package: load the sibling by path).
fashion_config = runpy.run_path(
    str(pathlib.Path(__file__).with_name("fashion_mnist_gaussian.py")))["fashion_config"]


def get_config():
    return fashion_config("gaussian_learned", dequantize=True)
