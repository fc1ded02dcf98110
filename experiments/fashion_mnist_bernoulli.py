"""Conv VAE with a Bernoulli likelihood on dynamically binarised Fashion-MNIST: the contrast.

Purpose: show what the MNIST recipe (binary cross-entropy on binarised pixels) does to
genuinely grayscale images. Dynamic binarisation replaces every pixel at every step by a coin
flip b ~ Bernoulli(k / 255). On MNIST that changes little: most pixels are ink (k near 255)
or paper (k = 0), so the flips are nearly certain. Fashion-MNIST's content is in the middle
grey levels (shading, folds, knit and print textures), and there the flips are nearly fair:
a uniform mid-grey sleeve becomes a different salt-and-pepper pattern at every step, a
stripe of k = 100 next to one of k = 150 becomes two patterns of 39% and 59% white dots, and
dark garments turn almost entirely black. The grey level survives only as the expectation
over many draws; within one image the texture is indistinguishable from binarisation noise at
the pixel scale. A mid-grey pixel costs close to 1 bit whatever the model knows about the
garment, so the ELBO is dominated by the coin flips, not by the clothes.

The Bernoulli is nevertheless the exact likelihood of the binary data it sees: its bits/dim
are a real number for a different, binary data set, not comparable with the 8-bit numbers of
`fashion_mnist_logistic.py` or the bound of `fashion_mnist_gaussian_learned.py` (the "binary"
footing of `likelihood_comparison.py`). The pictures show the decoder's probabilities, which
estimate k / 255 and so can look gray and smooth, but they are blurred averages: the model
learned what fraction of flips come up white, not where the texture is.

Command (needs fashion_mnist in the TFDS data_dir, or --config.data.download=True):
    python -m vae_jax.main --config experiments/fashion_mnist_bernoulli.py \
        --workdir runs/fashion_bernoulli --config.data.download=True

Hardware and time: not measured here: no offline Fashion-MNIST on the development machines
(a few training steps are tested on `tfds.testing.mock_data`). The schedule is that of
`fashion_mnist_gaussian.py` (20 epochs, 8,580 steps of batch 128).

What it should show: reconstructions and samples that keep silhouettes but lose the textures
and prints that `fashion_mnist_gaussian.py` and `fashion_mnist_logistic.py` reproduce, and a
reconstruction term that stays large however long it trains (the coin flips of the grey pixels
cannot be predicted).
"""

import pathlib
import runpy

# The shared set-up (experiment files are not a package: load the sibling by path).
fashion_config = runpy.run_path(
    str(pathlib.Path(__file__).with_name("fashion_mnist_gaussian.py")))["fashion_config"]


def get_config():
    return fashion_config("bernoulli", binarization="dynamic")
