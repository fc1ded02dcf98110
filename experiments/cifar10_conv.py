"""Conv VAE on CIFAR-10 (32x32x3, 8-bit) with a discretised logistic likelihood.

Purpose: natural colour images at 8 bits per channel; the discretised logistic
(Salimans et al. 2017) assigns probability mass to each of the 256 intensity bins, so the
reported NLL is a true discrete log-likelihood (convert with bits/dim = nats / (3072 ln 2)).
Three stride-2 conv layers (32 -> 16 -> 8 -> 4) and a mirrored sub-pixel transposed decoder.

Command (needs cifar10 in the TFDS data_dir, or --config.data.download=True):
    python -m vae_jax.main --config experiments/cifar10_conv.py --workdir runs/cifar10 \
        --config.data.download=True

Hardware and time: not measured here (no offline copy of CIFAR-10 on the development
machines); its loading is tested with `tfds.testing.mock_data`.
"""

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "cifar10"
    config.data.validation_size = 5000
    config.data.binarization = "none"
    config.model.likelihood = "discretized_logistic"
    config.model.encoder = "conv"
    config.model.decoder = "conv"
    config.model.features = (64, 128, 256)
    config.model.latent_dim = 128
    config.run.batch_size = 128
    config.optim.learning_rate = 5e-4
    config.optim.grad_clip_norm = 100.0
    config.run.num_epochs = 100
    config.run.num_steps = 0
    config.run.steps_per_dispatch = 1
    config.run.log_every = 100
    config.run.eval_every = 5000
    config.run.checkpoint_every = 5000
    return config
