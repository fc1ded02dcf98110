"""Benchmark W1: the VAE of pytorch/examples (`vae/main.py`) on dynamically binarised MNIST.

Purpose: the speed comparison with PyTorch in `benchmarks/run.py`. The model is exactly the
pytorch/examples one: encoder 784-400 (ReLU) then two linear heads of 20 (mean, log-variance),
decoder 20-400 (ReLU)-784 (logits), Bernoulli likelihood, Adam 1e-3, batch 128. Every pixel is
redrawn from Bernoulli(intensity) at every step. 100 steps run per dispatch in one `lax.scan`.

Command (the benchmark overrides run.num_steps and the logging cadence):
    python -m vae_jax.main --config experiments/bench_pytorch_example.py \
        --workdir runs/bench_pytorch_example --config.data.data_dir=../shared/data/tfds

Hardware and time: 2-core AMD EPYC CPU; see benchmarks/README.md for the measured images/s.

Expected numbers: 10 epochs reach a validation ELBO of about -105 nats (pytorch/examples reports
its test loss ~105 nats per image after 10 epochs).
"""

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "mnist"
    config.data.validation_size = 5000
    config.data.binarization = "dynamic"
    config.model.encoder = "mlp"
    config.model.decoder = "mlp"
    config.model.hidden = (400,)
    config.model.latent_dim = 20
    config.model.activation = "relu"
    config.model.kernel_init = "lecun_normal"
    config.model.likelihood = "bernoulli"
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.run.batch_size = 128
    config.run.num_epochs = 10
    config.run.num_steps = 0
    config.run.steps_per_dispatch = 100
    config.run.log_every = 400
    config.run.eval_every = 4200
    config.run.checkpoint_every = 4200
    return config
