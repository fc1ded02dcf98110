"""MLP VAE on dynamically binarised MNIST (TFDS), Bernoulli likelihood.

Purpose: the standard MNIST VAE baseline: 784-512-512-Z encoder and its mirror decoder, ReLU,
Kaiming-normal initialisation, Adam 1e-3, batch 128, every pixel redrawn from Bernoulli(intensity)
at every step (dynamic binarisation), so the Bernoulli likelihood (binary cross-entropy on the
logits) is the exact likelihood of the data the model sees.

Command (data in a pre-populated TFDS directory; drop data_dir and add
--config.data.download=True on a machine with internet):
    python -m vae_jax.main --config experiments/mnist_mlp.py --workdir runs/mnist_mlp \
        --config.data.data_dir=../shared/data/tfds --config.model.latent_dim=32

Hardware and time: 2-core CPU, no GPU: 50 epochs (21,450 steps) took 5.5 minutes with other
jobs competing for the cores.

Expected numbers (seed 0, 50 epochs): validation ELBO -96.7 nats (reconstruction 70.5, KL 26.1);
training ELBO -94.5. The validation ELBO passes -100 nats within the first 10,000 steps.
"""

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "mnist"
    config.data.validation_size = 5000
    config.data.binarization = "dynamic"
    config.model.latent_dim = 32
    config.model.hidden = (512, 512)
    config.run.batch_size = 128
    config.run.num_epochs = 50
    config.run.num_steps = 0
    config.run.steps_per_dispatch = 50
    config.run.log_every = 200
    config.run.eval_every = 2000
    config.run.checkpoint_every = 2000
    return config
