"""Tests for the likelihood comparison: experiments/mnist_likelihoods.py, likelihood_comparison.py
and every experiments/fashion_mnist_*.py, trained for two steps on mocked Fashion-MNIST.

References: hand-computed bin masses of toy densities on [0, 1] (the uniform density, whose
dequantised bound is exactly 8 bits/dim, and the density 2x, whose expected log density over a
bin has a closed form), and `tfds.testing.mock_data` for Fashion-MNIST, which is not available
offline.
"""

import json
import math
import pathlib

import jax
import numpy as np
import pytest

from vae_jax import input_pipeline, losses, train
from vae_jax.provenance import load_experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("bernoulli_binarized", "gaussian_fixed", "gaussian_learned", "continuous_bernoulli",
            "discretized_logistic", "gaussian_fixed_dequantized", "gaussian_learned_dequantized",
            "continuous_bernoulli_dequantized")


@pytest.fixture(scope="module")
def comparison():
    return load_experiment("likelihood_comparison")


def flat(config):
    """{"data.binarization": ..., ...}: every leaf of a config by its dotted path."""
    def walk(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(config.to_dict(), ""))


# ----------------------------------------------------------------------------------- configs


def test_every_variant_validates_and_differs_only_in_the_likelihood():
    module = load_experiment("mnist_likelihoods")
    assert module.VARIANTS == VARIANTS
    configs = {v: module.get_config(v) for v in VARIANTS}
    expected = {
        "bernoulli_binarized": ("bernoulli", "dynamic"),
        "gaussian_fixed": ("gaussian", "none"),
        "gaussian_learned": ("gaussian_learned", "none"),
        "continuous_bernoulli": ("continuous_bernoulli", "none"),
        "discretized_logistic": ("discretized_logistic", "none"),
    }
    reference = flat(configs["bernoulli_binarized"])
    for variant, config in configs.items():
        train.validate_config(config, 1)
        grid_variant = variant.removesuffix("_dequantized")
        assert (config.model.likelihood, config.data.binarization) == expected[grid_variant]
        assert config.data.dequantize == (variant != grid_variant)
        assert config.data.name == "mnist" and config.model.latent_dim == 32
        assert tuple(config.model.hidden) == (512, 512)
        assert config.model.encoder == config.model.decoder == "mlp"
        # Same model, optimiser and budget: only the likelihood and its data change.
        changed = {k for k, v in flat(config).items() if v != reference[k]}
        assert changed <= {"model.likelihood", "data.binarization", "data.dequantize"}
    assert configs["gaussian_fixed"].model.gaussian_logvar == pytest.approx(math.log(0.01))
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("bernoulli")


def test_footing_of_each_likelihood(comparison):
    assert comparison.footing("discretized_logistic", "none") == "discrete"
    for name in ("gaussian", "gaussian_learned", "continuous_bernoulli"):
        assert comparison.footing(name, "none") == "dequantized"
    assert comparison.footing("bernoulli", "dynamic") == "binary"
    assert comparison.footing("bernoulli", "static") == "binary"
    with pytest.raises(ValueError, match="not a normalised likelihood"):
        comparison.footing("bernoulli", "none")


# ---------------------------------------------------------------------------- dequantisation


def test_dequantized_points_lie_in_their_bins(comparison):
    levels = np.array([[0, 1, 128, 255]], np.uint8)
    for u in (0.0, 0.5, 1.0 - 1e-12):
        x = comparison.dequantize(levels, np.full(levels.shape, u))
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, (levels + u) / 256, rtol=1e-6)
        assert np.all(x >= levels / 256) and np.all(x < 1.0)
    # The training points k/255 fall inside bin k = [k/256, (k+1)/256].
    k = np.arange(256)
    assert np.all(k / 256 <= k / 255) and np.all(k / 255 <= (k + 1) / 256)


def test_uniform_density_is_exactly_eight_bits_per_dim(comparison):
    num_dims = 784
    log_density_b = np.zeros(5)  # log p = 0 for the uniform density on [0, 1]^D
    bound_b = losses.dequantized_log_mass_bound(log_density_b, num_dims)
    np.testing.assert_allclose(bound_b, -num_dims * math.log(256))  # P(bin) = 256^-D exactly
    assert comparison.bits_per_dim(bound_b, num_dims) == pytest.approx(8.0, abs=1e-12)


def test_dequantized_bound_of_a_linear_density_matches_the_hand_computation(comparison):
    # p(x) = 2x on [0, 1] for each of D pixels. Bin k of width 1/256 has mass
    #   P(k) = ((k+1)^2 - k^2) / 256^2 = (2k + 1) / 65536,
    # and the bound's expectation has a closed form: with x = (k + u)/256,
    #   E_u log p(x) = log(2/256) + E_u log(k + u) = log(2/256) + (k+1) log(k+1) - k log k - 1.
    rng = np.random.default_rng(0)
    levels = np.array([0, 3, 100, 255])
    num_draws = 200_000
    u = rng.random((num_draws, levels.size))
    x = comparison.dequantize(np.broadcast_to(levels, u.shape), u).astype(np.float64)
    bound_n = losses.dequantized_log_mass_bound(np.sum(np.log(2 * x), axis=1), levels.size)
    xlogx = lambda t: np.where(t > 0, t * np.log(np.maximum(t, 1)), 0.0)  # noqa: E731
    expected = np.sum(math.log(2 / 256) + xlogx(levels + 1.0) - xlogx(levels) - 1.0)
    expected -= levels.size * math.log(256)
    standard_error = np.std(bound_n) / math.sqrt(num_draws)
    assert abs(np.mean(bound_n) - expected) < 5 * standard_error
    exact = np.sum(np.log((2 * levels + 1) / 65536.0))
    # Jensen: a lower bound, tight where p is smooth over the bin. In bin 0, where log p
    # diverges, the gap is log 1 - (log 2 - 1) = 1 - log 2 nats; in bin 3 it is
    # log(7/2) + 1 - 4 log 4 + 3 log 3 = 0.0041, and less in bins 100 and 255.
    gap = exact - expected
    assert 1 - math.log(2) < gap < 1 - math.log(2) + 0.005


# ------------------------------------------------------------- Fashion-MNIST on mocked TFDS


def test_fashion_mnist_gaussian_loads_mocked_fashion_mnist(tmp_path):
    import tensorflow_datasets as tfds

    config = load_experiment("fashion_mnist_gaussian").get_config()
    assert (config.data.name, config.model.likelihood, config.data.binarization) == (
        "fashion_mnist", "gaussian", "none")
    train.validate_config(config, 1)
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        data = input_pipeline.load_dataset(
            config.data.name, data_dir=tmp_path, validation_size=2,
            binarization=config.data.binarization, seed=config.data.seed)
    assert data.image_shape == (28, 28, 1) and data.num_levels == 256
    assert data.train.shape == (10, 28, 28, 1) and data.test.dtype == np.uint8
    losses.check_data_support(data.test * data.scale, config.model.likelihood)


# experiments/fashion_mnist_<name>.py -> (model.likelihood, data.binarization, data.dequantize,
# footing in the comparison)
FASHION_CONFIGS = {
    "gaussian": ("gaussian", "none", False, "dequantized"),
    "gaussian_learned": ("gaussian_learned", "none", True, "dequantized"),
    "logistic": ("discretized_logistic", "none", False, "discrete"),
    "bernoulli": ("bernoulli", "dynamic", False, "binary"),
}
FASHION_FILES = sorted(path.stem for path in (REPO / "experiments").glob("fashion_mnist_*.py"))


def test_every_fashion_mnist_config_is_tested():
    assert FASHION_FILES == sorted(f"fashion_mnist_{name}" for name in FASHION_CONFIGS)


@pytest.mark.parametrize("name", FASHION_FILES)
def test_fashion_mnist_config_trains_on_mocked_data_and_is_compared(tmp_path, comparison, name):
    import tensorflow_datasets as tfds

    # `mock_sliced_tfds` (USE_FILES with written metadata) because the training loop sizes the
    # training set from TFDS metadata, which the plain USE_CODE mock does not provide.
    from tests.test_input_pipeline import MOCK_SPLIT_SIZES, mock_sliced_tfds

    likelihood, binarization, dequantize, footing = FASHION_CONFIGS[
        name.removeprefix("fashion_mnist_")]
    config = load_experiment(name).get_config()
    assert (config.data.name, config.model.likelihood, config.data.binarization,
            config.data.dequantize) == ("fashion_mnist", likelihood, binarization, dequantize)
    # One model, optimiser and schedule for all: only the likelihood and its data differ.
    reference = flat(load_experiment("fashion_mnist_gaussian").fashion_config("gaussian"))
    changed = {k for k, v in flat(config).items() if v != reference[k]}
    assert changed <= {"model.likelihood", "model.gaussian_logvar", "data.binarization",
                       "data.dequantize"}
    train.validate_config(config, 1)

    config.data.data_dir = str(tmp_path)
    config.data.validation_size = 4
    config.run.update(batch_size=4, eval_batch_size=4, num_steps=2, steps_per_dispatch=2,
                      log_every=2, eval_every=2, checkpoint_every=2, num_image_examples=4)
    config.model.update(latent_dim=4, features=(4, 8))
    workdir = tmp_path / name
    with mock_sliced_tfds(tfds, tmp_path):
        train.train_and_evaluate(config, str(workdir), quiet=True, devices=jax.devices()[:1])
        row = comparison.compare_workdir(workdir, num_samples=2, max_examples=4, batch_size=4)
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and all(np.isfinite(m["loss"]) for m in metrics)
    assert (workdir / "checkpoints" / "2").is_dir()
    assert row["footing"] == footing and row["checkpoint_step"] == 2
    assert row["dequantize"] == dequantize and row["likelihood"] == likelihood
    assert row["num_examples"] == MOCK_SPLIT_SIZES["test"] and np.isfinite(row["bits_per_dim"])
    assert f"| {name} | {likelihood} |" in comparison.markdown_table([row])
