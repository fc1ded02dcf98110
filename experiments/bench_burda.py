"""Benchmark W2 (and W4's model): the one-stochastic-layer VAE of Burda et al. (2016).

Purpose: the speed comparison with PyTorch in `benchmarks/run.py` on a small model with a small
batch, where per-step overhead dominates. Model of Burda, Grosse & Salakhutdinov, "Importance
Weighted Autoencoders" (ICLR 2016), Sec. 5, one stochastic layer: encoder 784-200-200 (tanh)
then heads of 50, decoder 50-200-200 (tanh)-784 (Bernoulli logits); Adam 1e-3, batch 20,
dynamic binarisation. Trained as a VAE (objective "elbo", K = 1); `--config.objective.name=iwae
--config.objective.num_samples=50` gives the IWAE of the paper. 100 steps run per dispatch.

Command:
    python -m vae_jax.main --config experiments/bench_burda.py --workdir runs/bench_burda \
        --config.data.data_dir=../shared/data/tfds

Hardware and time: 2-core AMD EPYC CPU; see benchmarks/README.md for the measured images/s.

Expected numbers: none claimed; this config exists for speed. (Burda et al. report a test NLL of
86.76 nats for this VAE after 3,280 epochs with their learning-rate schedule.)
"""

from vae_jax.config_defaults import default_config


def get_config():
    config = default_config()
    config.data.name = "mnist"
    config.data.validation_size = 5000
    config.data.binarization = "dynamic"
    config.model.encoder = "mlp"
    config.model.decoder = "mlp"
    config.model.hidden = (200, 200)
    config.model.latent_dim = 50
    config.model.activation = "tanh"
    config.model.kernel_init = "glorot_normal"
    config.model.likelihood = "bernoulli"
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.run.batch_size = 20
    config.run.num_epochs = 10
    config.run.num_steps = 0
    config.run.steps_per_dispatch = 100
    config.run.log_every = 1000
    config.run.eval_every = 5000
    config.run.checkpoint_every = 5000
    return config
