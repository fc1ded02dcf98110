"""Full-covariance Gaussian posteriors on MNIST: the closed-form KL of two multivariate
Gaussians (`distributions.kl_mvn_tril`) in training.

Purpose: the same MLP VAE (experiments/mnist_families.py: 784-512-512-32, 10 epochs) with a
posterior N(mean, L L^T), L lower triangular with a positive diagonal (the encoder emits the
mean, log diag(L)^2 and the 496 entries below the diagonal); against N(0, I) the ELBO's KL is
the closed form 1/2 [tr(L L^T) + mean^T mean - Z - log det(L L^T)]. Variants: `diagonal`,
`full_covariance`.

Commands (one workdir per variant; rerunning a command resumes it):
    python -m vae_jax.main --config experiments/mnist_full_covariance.py:full_covariance \
        --workdir ../runs/families/full_covariance --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir ../runs/families/full_covariance \
        --num_importance_samples 1000

RESULTS
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "mnist_families", pathlib.Path(__file__).with_name("mnist_families.py"))
mnist_families = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mnist_families)

VARIANTS = {"diagonal": dict(posterior="diagonal"),
            "full_covariance": dict(posterior="full_covariance")}


def get_config(variant: str = "full_covariance"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    return mnist_families.family_config(**VARIANTS[variant])
