"""beta-VAE with the convolutional encoder/decoder on MNIST, for latent traversals.

Purpose: with beta > 1 the KL term weighs more than the reconstruction (Higgins et al. 2017),
so the posterior is pushed towards the factorised prior and fewer latent dimensions carry
information; the ones that do tend to capture separate factors (stroke width, slant, digit
identity). The conv model of `mnist_conv.py` with 10 latents and beta = 4, on grayscale MNIST
with a Bernoulli likelihood on dynamically binarised digits.

Commands:
    python -m vae_jax.main --config experiments/mnist_conv_beta.py --workdir runs/mnist_conv_beta \
        --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir runs/mnist_conv_beta --num_importance_samples 500 \
        --max_examples 1000

`runs/mnist_conv_beta/plots/traversals.png` then shows one row per latent dimension, sorted by
KL, each decoded from -3 to +3 around an encoded test digit.

Hardware and time, expected numbers: see the README ("Experiments"), measured on a 2-core CPU.
"""

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "mnist"
    config.data.validation_size = 5000
    config.encoder = "conv"
    config.decoder = "conv"
    config.features = (32, 64)
    config.latent_dim = 10
    config.beta = 4.0
    config.batch_size = 128
    config.num_epochs = 10
    config.num_steps = 0
    config.steps_per_dispatch = 1
    config.log_every = 100
    config.eval_every = 1000
    config.checkpoint_every = 1000
    return config
