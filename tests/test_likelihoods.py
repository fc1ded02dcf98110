"""Tests of vae_jax.likelihoods: the likelihood objects against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae_jax import likelihoods


def test_bernoulli_and_gaussian_log_prob_against_float64():
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(3, 2, 2, 1)) > 0.5).astype(np.float32)
    logits = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
    bern = likelihoods.make_likelihood("bernoulli")
    expected = np.sum((x * logits - np.logaddexp(0, logits.astype(np.float64))).reshape(3, -1), -1)
    np.testing.assert_allclose(bern.log_prob(logits, x), expected, rtol=1e-5)
    np.testing.assert_allclose(bern.mean(logits), 1 / (1 + np.exp(-logits)), rtol=1e-5)
    gauss = likelihoods.make_likelihood("gaussian", gaussian_logvar=np.log(0.25))
    y = rng.uniform(size=(3, 2, 2, 1)).astype(np.float32)
    expected = stats.norm.logpdf(y, logits, 0.5).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(gauss.log_prob(logits, y), expected, rtol=1e-5)


def test_learned_gaussian_reads_two_outputs_per_channel():
    rng = np.random.default_rng(1)
    y = rng.uniform(size=(2, 2, 2, 1)).astype(np.float32)
    out = rng.normal(size=(2, 2, 2, 2)).astype(np.float32)
    lik = likelihoods.make_likelihood("gaussian_learned")
    assert lik.num_params == 2 and lik.is_density
    expected = stats.norm.logpdf(y[..., 0], out[..., 0], np.exp(0.5 * out[..., 1]))
    np.testing.assert_allclose(lik.log_prob(out, y), expected.reshape(2, -1).sum(-1), rtol=1e-5)


def test_support_checks_agree_host_and_device():
    lik = likelihoods.make_likelihood("bernoulli")
    good = np.array([[0.0, 0.5, 1.0]], np.float32)
    bad = np.array([[0.0, 1.5, -0.1]], np.float32)
    lik.check_support(good)
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\]"):
        lik.check_support(bad)
    assert int(jax.jit(lik.support_violations)(good)) == 0
    assert int(jax.jit(lik.support_violations)(bad)) == 2


def test_data_mean_bias_is_the_logit_of_the_mean():
    lik = likelihoods.make_likelihood("bernoulli")
    bias = lik.data_mean_bias(np.array([0.5, 0.9, 0.0]))
    np.testing.assert_allclose(bias, [0.0, np.log(9.0), np.log(1e-3 / (1 - 1e-3))], rtol=1e-5)


def test_likelihoods_are_static_values_chosen_by_name():
    a = likelihoods.make_likelihood("discretized_logistic", num_bins=17)
    assert a == likelihoods.make_likelihood("discretized_logistic", num_bins=17)
    assert hash(a) == hash(likelihoods.Likelihood("discretized_logistic", num_bins=17))
    traced = jax.jit(lambda x, lik: lik.support_violations(x), static_argnums=1)
    assert int(traced(jnp.array([0.5 + 1 / 32]), a)) == 1
    with pytest.raises(ValueError, match=r"unknown likelihood 'poisson'.*'bernoulli'"):
        likelihoods.make_likelihood("poisson")


def test_only_a_bernoulli_on_unbinarised_grey_levels_is_flagged():
    flag = likelihoods.is_grey_level_bernoulli
    assert flag("bernoulli", binarized=False, num_levels=17)
    assert not flag("bernoulli", binarized=True, num_levels=256)  # binarised copies
    assert not flag("bernoulli", binarized=False, num_levels=2)  # data that are binary already
    assert not flag("continuous_bernoulli", binarized=False, num_levels=256)  # a density on [0, 1]
