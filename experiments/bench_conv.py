"""Benchmark W3: the convolutional VAE of `experiments/mnist_conv.py`, for speed.

Purpose: the speed comparison with PyTorch in `benchmarks/run.py`. Same model as
`mnist_conv.py`: stride-2 3x3 convolutions (32, 64 channels; 28 -> 14 -> 7), dense heads of 16,
a decoder projecting z to 7x7x64 and upsampling with stride-2 3x3 transposed convolutions
(sub-pixel, `models.ConvTranspose`); ReLU, Bernoulli likelihood, Adam 1e-3, batch 128, dynamic
binarisation, one step per dispatch.

Command:
    python -m vae_jax.main --config experiments/bench_conv.py --workdir runs/bench_conv \
        --config.data.data_dir=../shared/data/tfds

Hardware and time: 2-core AMD EPYC CPU; see benchmarks/README.md for the measured images/s.

Expected numbers: those of `experiments/mnist_conv.py` (this config only changes the logging
cadence).
"""

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "mnist"
    config.data.validation_size = 5000
    config.model.encoder = "conv"
    config.model.decoder = "conv"
    config.model.features = (32, 64)
    config.model.kernel_size = 3
    config.model.strides = 2
    config.model.latent_dim = 16
    config.run.batch_size = 128
    config.run.num_epochs = 20
    config.run.num_steps = 0
    config.run.steps_per_dispatch = 1
    config.run.log_every = 50
    config.run.eval_every = 2000
    config.run.checkpoint_every = 2000
    return config
