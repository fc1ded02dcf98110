"""Priors on MNIST: N(0, I) against a learned mixture and a VampPrior (Tomczak & Welling 2018).

Purpose: the same MLP VAE (experiments/mnist_families.py: 784-512-512-32, 10 epochs) with the
prior as the only difference, so the rows show what a learned prior adds to the likelihood.
Variants: `standard` (N(0, I)), `mixture` (10 learned diagonal Gaussians), `vamp` (the uniform
mixture of q(z | u_c) at 500 learned pseudo-inputs u_c).

Commands (one workdir per variant; rerunning a command resumes it):
    python -m vae_jax.main --config experiments/mnist_vamp.py:vamp \
        --workdir ../runs/families/vamp --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir ../runs/families/vamp --num_importance_samples 1000

RESULTS
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "mnist_families", pathlib.Path(__file__).with_name("mnist_families.py"))
mnist_families = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mnist_families)

VARIANTS = {
    "standard": dict(prior="standard_normal"),
    "mixture": dict(prior="mixture", prior_components=10),
    "vamp": dict(prior="vamp", prior_components=500),
}


def get_config(variant: str = "vamp"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    return mnist_families.family_config(**VARIANTS[variant])
