"""The model families of issue 13 on MNIST, on one short schedule: shared by mnist_vamp.py,
mnist_iaf.py and mnist_full_covariance.py (see their runbooks).

The base is experiments/mnist_mlp.py (784-512-512-32 MLP VAE, ReLU, Kaiming-normal, Adam 1e-3,
batch 128, dynamically binarised MNIST, Bernoulli likelihood) cut to `EPOCHS` epochs; a variant
changes only `model.prior` / `model.posterior` (and their sizes), so rows compare families, not
recipes.
"""

import pathlib

from vae_jax.provenance import load_experiment

mnist_mlp = load_experiment(pathlib.Path(__file__).with_name("mnist_mlp.py"))

EPOCHS = 10  # 4,290 steps of batch 128


def family_config(*, prior: str = "standard_normal", posterior: str = "diagonal",
                  prior_components: int = 0):
    """mnist_mlp.py on the short schedule with the given prior and posterior family."""
    config = mnist_mlp.get_config()
    config.run.num_epochs = EPOCHS
    config.run.eval_every = 1000
    config.run.checkpoint_every = 1000
    config.model.prior = prior
    config.model.posterior = posterior
    config.model.prior_components = prior_components
    return config
