"""Quickstart: an MLP VAE on the embedded 8x8 handwritten digits (no download).

Purpose: check an installation and see a VAE train end to end in about a minute on a laptop
CPU. The data are scikit-learn's bundled digits (1,797 real 8x8 images with 17 grey levels),
dynamically binarised at every step, with a Bernoulli likelihood.

Command:
    python -m vae_jax.main --config experiments/digits.py --workdir runs/digits

Hardware and time: 2-core CPU, about a minute (including compilation).

Expected numbers (measured on that machine, seed 0, 3,000 steps): see the README table
"Quickstart"; the validation ELBO (`val_elbo_nats` in eval_metrics.jsonl) climbs from about
-44 nats at initialisation to about -17 nats per image.
"""

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "digits"
    config.data.validation_size = 150
    config.latent_dim = 8
    config.hidden = (256, 256)
    config.batch_size = 64
    config.eval_batch_size = 256
    config.num_steps = 3000
    config.steps_per_dispatch = 50
    config.log_every = 100
    config.eval_every = 1000
    config.checkpoint_every = 1000
    return config
