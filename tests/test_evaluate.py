"""Tests of vae_jax.evaluate: the NLL estimator, latent diagnostics, the passes and the command.

The importance-sampled log-likelihood (`model.log_likelihood_estimate`, which evaluate's NLL
program runs) is checked against the closed form of probabilistic PCA. The model is a
linear-Gaussian `model.VAE`: p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2 I), so
p(x) = N(b, W W^T + sigma^2 I) exactly (Tipping & Bishop 1999), evaluated in float64 with
scipy. The encoder is deliberately imperfect (the exact posterior mean, but the diagonal of
the posterior covariance inflated by `_VAR_INFLATION`), so the K = 1 bound is not tight.
"""

import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import special, stats

from tests import test_priors as tests_priors
from tests import test_train as tests_train
from tests.conftest import REPO_ROOT, xla_flags
from vae_jax import (
    distributions,
    evaluate,
    ground_truth,
    input_pipeline,
    likelihoods,
    models,
    objectives,
    parallel,
    posteriors,
    priors,
    train,
)
from vae_jax import model as model_lib
from vae_jax import workdir as workdir_lib

_IMAGE_SHAPE = (2, 2, 1)  # D = 4
_DATA_DIM = 4
_LATENT_DIM = 2
_NOISE_VAR = 0.25  # sigma^2 of the Gaussian likelihood.
_VAR_INFLATION = 2.0
_BATCH = 8


class _LinearEncoder(nn.Module):
    """mean = A x + c; logvar a per-dimension parameter shared by every example."""

    @nn.compact
    def __call__(self, x):
        x_bd = x.reshape(x.shape[0], -1)
        mean_bz = nn.Dense(_LATENT_DIM)(x_bd)
        logvar_z = self.param("logvar", nn.initializers.zeros, (_LATENT_DIM,))
        return mean_bz, jnp.broadcast_to(logvar_z, mean_bz.shape)


class _LinearDecoder(nn.Module):
    """Gaussian mean W z + b, shaped like the images."""

    @nn.compact
    def __call__(self, z_bz):
        return nn.Dense(_DATA_DIM)(z_bz).reshape((z_bz.shape[0],) + _IMAGE_SHAPE)


PPCA_VAE = model_lib.VAE(
    encoder=_LinearEncoder(),
    decoder=_LinearDecoder(),
    likelihood=likelihoods.make_likelihood("gaussian", gaussian_logvar=math.log(_NOISE_VAR)),
    prior=priors.make_prior("standard_normal"),
    posterior=posteriors.make_posterior("diagonal"),
    latent_dims=(_LATENT_DIM,),
)


@pytest.fixture(scope="module")
def ppca():
    """Float32 params, data x [B, 2, 2, 1] drawn from the model, and exact float64 log p(x)."""
    rng = np.random.default_rng(0)
    w_dz = rng.normal(size=(_DATA_DIM, _LATENT_DIM))
    b_d = rng.normal(size=_DATA_DIM)
    cov_dd = w_dz @ w_dz.T + _NOISE_VAR * np.eye(_DATA_DIM)
    x_bd = rng.multivariate_normal(b_d, cov_dd, size=_BATCH)
    exact_b = stats.multivariate_normal(b_d, cov_dd).logpdf(x_bd)

    # Exact posterior: N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I.
    m_inv_zz = np.linalg.inv(w_dz.T @ w_dz + _NOISE_VAR * np.eye(_LATENT_DIM))
    a_zd = m_inv_zz @ w_dz.T
    post_var_z = _NOISE_VAR * np.diag(m_inv_zz)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    params = {
        "encoder": {"params": {
            "Dense_0": {"kernel": f32(a_zd.T), "bias": f32(-a_zd @ b_d)},
            "logvar": f32(np.log(_VAR_INFLATION * post_var_z)),
        }},
        "decoder": {"params": {"Dense_0": {"kernel": f32(w_dz.T), "bias": f32(b_d)}}},
    }
    x = np.asarray(x_bd.reshape((_BATCH,) + _IMAGE_SHAPE), np.float32)
    return params, x, exact_b


def _estimator(num_samples, chunk_size):
    return jax.jit(functools.partial(model_lib.log_likelihood_estimate, PPCA_VAE,
                                     num_samples=num_samples, chunk_size=chunk_size))


def _repeated(ppca, num_samples, chunk_size, repeats):
    """[R, B] estimates: R independent copies of every example, told apart by example id."""
    params, x, _ = ppca
    x_rb = np.tile(x, (repeats, 1, 1, 1))
    got = _estimator(num_samples, chunk_size)(
        params, x_rb, jax.random.key(1), example_ids=jnp.arange(repeats * _BATCH))
    return np.asarray(got, np.float64).reshape(repeats, _BATCH)


def test_modules_match_the_ppca_parameters(ppca):
    params, _, _ = ppca
    chex.assert_trees_all_equal_shapes_and_dtypes(
        params, PPCA_VAE.init(jax.random.key(0), _IMAGE_SHAPE))


def test_large_k_converges_to_exact_log_likelihood(ppca):
    params, x, exact_b = ppca
    got_b = _estimator(5000, 500)(params, x, jax.random.key(0))
    assert got_b.shape == (_BATCH,)
    # The Monte Carlo std of one estimate at K = 5000 is ~0.0125 nats (0.028 measured at
    # K = 1000, over sqrt(5)); 0.06 nats is ~5 std per example. Observed max error: 0.015.
    err_b = np.asarray(got_b, np.float64) - exact_b
    np.testing.assert_allclose(err_b, 0.0, atol=0.06)
    assert abs(err_b.mean()) < 0.03


def test_small_k_is_biased_low_and_its_spread_shrinks_with_k(ppca):
    _, _, exact_b = ppca
    repeats = 32
    gap_1 = _repeated(ppca, 1, 1, repeats) - exact_b  # [R, B]
    gap_2 = _repeated(ppca, 2, 2, repeats) - exact_b
    gap_10 = _repeated(ppca, 10, 10, repeats) - exact_b
    gap_1000 = _repeated(ppca, 1000, 500, repeats) - exact_b
    stderr = lambda gap: gap.std(ddof=1) / math.sqrt(gap.size)  # noqa: E731
    # Jensen: E[L_K] <= log p(x). Observed mean gaps: -1.25 (K=1) and -0.50 (K=2) nats, each
    # more than 6 stderrs below 0; at K=1000 the gap is within noise of 0.
    for gap in (gap_1, gap_2):
        assert gap.mean() < -4.0 * stderr(gap), (gap.mean(), stderr(gap))
    assert gap_1.mean() < gap_2.mean() < gap_10.mean()
    assert abs(gap_1000.mean()) < 4.0 * stderr(gap_1000) + 1e-3
    # The spread over repeated estimates shrinks with K (asymptotically like 1 / sqrt(K));
    # observed 2.56, 0.28, 0.028 nats at K = 1, 10, 1000.
    spread = [g.std(axis=0, ddof=1).mean() for g in (gap_1, gap_10, gap_1000)]
    assert spread[1] < spread[0] / 3 and spread[2] < spread[1] / 5, spread


def test_estimate_does_not_depend_on_chunk_size(ppca):
    params, x, _ = ppca
    key = jax.random.key(3)
    # 7 and 300 do not divide K = 500 (71 chunks of 7 and a last of 3; one of 300 and a last
    # of 200).
    got = [np.asarray(_estimator(500, c)(params, x, key)) for c in (7, 50, 300, 500)]
    for other in got[:-1]:
        np.testing.assert_allclose(other, got[-1], rtol=1e-4)


def _reference_terms(params, x, key, num_samples, example_ids=None):
    """Float64 (log p(x|z), log p(z), log q(z|x)), each [K, B], and the posterior's (mean
    [B, Z], logvar [Z]) of the linear-Gaussian model, with the noise documented in
    `vae_jax.model`: eps_bk = normal(fold_in(fold_in(fold_in(key, id_b), k), 0)) (layer 0),
    drawn by `jax.random` itself."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    enc, dec = params["encoder"]["params"], params["decoder"]["params"]
    x_bd = f64(x).reshape(len(x), _DATA_DIM)
    example_ids = jnp.arange(len(x)) if example_ids is None else jnp.asarray(example_ids)
    mean_bz = x_bd @ f64(enc["Dense_0"]["kernel"]) + f64(enc["Dense_0"]["bias"])
    logvar_z = f64(enc["logvar"])
    draw = lambda b, k: jax.random.normal(  # noqa: E731
        jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, b), k), 0),
        (_LATENT_DIM,))
    eps_kbz = f64(jax.vmap(jax.vmap(draw, (0, None)), (None, 0))(
        example_ids, jnp.arange(num_samples)))
    z_kbz = mean_bz + np.exp(0.5 * logvar_z) * eps_kbz
    mean_kbd = z_kbz @ f64(dec["Dense_0"]["kernel"]) + f64(dec["Dense_0"]["bias"])
    log_px_z = stats.norm.logpdf(x_bd, mean_kbd, math.sqrt(_NOISE_VAR)).sum(-1)
    log_pz = stats.norm.logpdf(z_kbz).sum(-1)
    log_qz = stats.norm.logpdf(z_kbz, mean_bz, np.exp(0.5 * logvar_z)).sum(-1)
    return (log_px_z, log_pz, log_qz), (mean_bz, logvar_z)


def _reference_log_weights(ppca, key, num_samples):
    """[K, B] float64 log w_bk = log p(x|z) + log p(z) - log q(z|x) (`_reference_terms`)."""
    params, x, _ = ppca
    (log_px_z, log_pz, log_qz), _ = _reference_terms(params, x, key, num_samples)
    return log_px_z + log_pz - log_qz


@pytest.mark.parametrize("num_samples, chunk_size", [(1, 100), (5, 2), (777, 100)])
def test_any_k_equals_a_float64_logsumexp_over_its_k_log_weights(ppca, num_samples,
                                                                  chunk_size):
    params, x, _ = ppca
    key = jax.random.key(8)
    got_b = np.asarray(_estimator(num_samples, chunk_size)(params, x, key), np.float64)
    log_w_kb = _reference_log_weights(ppca, key, num_samples)
    want_b = special.logsumexp(log_w_kb, axis=0) - math.log(num_samples)
    np.testing.assert_allclose(got_b, want_b, rtol=0, atol=2e-5)
    # The check sees a wrong normaliser or a last chunk of full size: K = 5 and 777 run as
    # 2 chunks of 2 and a last of 1, and 7 of 100 and a last of 77; log(6 / 5) and
    # log(800 / 777) are far above the tolerance, and so is the weight of the draws a full last
    # chunk would add (the reference's next samples).
    chunk = min(chunk_size, num_samples)
    padded = -(-num_samples // chunk) * chunk
    assert (padded > num_samples) == (num_samples > 1)
    if padded > num_samples:
        assert np.all(np.abs(got_b + math.log(num_samples) - math.log(padded) - want_b) > 1e-3)
        log_w_kb = _reference_log_weights(ppca, key, padded)
        unmasked_b = special.logsumexp(log_w_kb, axis=0) - math.log(num_samples)
        assert np.all(np.abs(unmasked_b - want_b) > 1e-4), unmasked_b - want_b


def test_one_and_eight_devices_agree(ppca):
    params, x, _ = ppca
    key = jax.random.key(4)
    example_ids = np.arange(_BATCH, dtype=np.int32)
    single = np.asarray(_estimator(210, 100)(params, x, key, example_ids=example_ids))
    for num_devices in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:num_devices])
        program = evaluate.make_nll_program(mesh, PPCA_VAE, num_samples=210, chunk_size=100)
        got = program(parallel.replicate(params, mesh), parallel.shard_rows(x, mesh),
                      parallel.replicate(key, mesh), parallel.shard_rows(example_ids, mesh))
        assert len(got.sharding.device_set) == num_devices
        np.testing.assert_allclose(np.asarray(got), single, rtol=1e-5)


@pytest.mark.parametrize("num_samples, chunk_size", [(0, 10), (-5, 10), (10, 0), (10, -1)])
def test_non_positive_k_or_chunk_size_is_a_clear_error(ppca, tmp_path, num_samples,
                                                       chunk_size):
    params, x, _ = ppca
    given = f"num_samples={num_samples} and chunk_size={chunk_size}"
    with pytest.raises(ValueError, match=f"{given} must be >= 1"):
        model_lib.log_likelihood_estimate(PPCA_VAE, params, x, jax.random.key(0),
                                          num_samples=num_samples, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=f"{given} must both be positive"):
        evaluate.make_nll_program(parallel.make_mesh(), PPCA_VAE, num_samples=num_samples,
                                  chunk_size=chunk_size)
    # The command refuses them before it reads anything.
    with pytest.raises(ValueError, match=f"{given} must both be positive"):
        evaluate.evaluate_workdir(tmp_path / "not_read", num_importance_samples=num_samples,
                                  chunk_size=chunk_size)


# The same estimator with learned priors. With a Gaussian-mixture prior
# p(z) = sum_c pi_c N(mu_c, diag v_c) and p(x|z) = N(W z + b, sigma^2 I) the marginal is a
# Gaussian mixture in closed form (`tests.test_priors.linear_gaussian_ref`, float64). A `vamp`
# prior with the linear encoder is such a mixture: pi_c = 1/C, mu_c = A u_c + a, v_c = exp(logvar)
# at the pseudo-inputs u_c, and the same encoder is the proposal q(z|x) = N(A x + a, v).


def _learned_prior_case(name):
    """(VAE, float32 params, x [B, 2, 2, 1], exact float64 log p(x) [B]) for `name`."""
    rng = np.random.default_rng(5)
    w_dz = 0.5 * rng.normal(size=(_DATA_DIM, _LATENT_DIM))
    b_d = rng.normal(size=_DATA_DIM)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    if name == "mixture":
        weights_c = np.array([0.5, 0.3, 0.2])
        mean_cz = np.array([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]])
        var_cz = np.array([[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]])
        prior = priors.make_prior("mixture", num_components=3)
        prior_params = {"logits": f32(np.log(weights_c)), "mean": f32(mean_cz),
                        "logvar": f32(np.log(var_cz))}
    else:
        # The components sit at the encoder's outputs A u_c + a for three pseudo-inputs in
        # [0, 1]^4, with variance v; the encoder is the posterior-mean map under the Gaussian
        # N(m, v I) at the components' mean m = A u_bar + a, a good proposal:
        #   A x + a = S (W^T (x - b) / sigma^2 + m / v),  S = (W^T W / sigma^2 + I / v)^-1.
        var = 0.5
        s_zz = np.linalg.inv(w_dz.T @ w_dz / _NOISE_VAR + np.eye(_LATENT_DIM) / var)
        a_zd = s_zz @ w_dz.T / _NOISE_VAR
        u_cd = rng.uniform(size=(3, _DATA_DIM))
        a_z = np.linalg.solve(np.eye(_LATENT_DIM) - s_zz / var,
                              s_zz @ (a_zd @ u_cd.mean(0) / var - w_dz.T @ b_d / _NOISE_VAR))
        weights_c = np.full(3, 1 / 3)
        mean_cz = u_cd @ a_zd.T + a_z
        var_cz = np.full((3, _LATENT_DIM), var)
        prior = priors.make_prior("vamp", num_components=3, posterior=PPCA_VAE.posterior)
        prior_params = {"pseudo_inputs": f32(u_cd.reshape((3,) + _IMAGE_SHAPE))}
    component_b = rng.choice(3, size=_BATCH, p=weights_c)
    z_bz = mean_cz[component_b] + np.sqrt(var_cz[component_b]) * rng.normal(
        size=(_BATCH, _LATENT_DIM))
    x_bd = z_bz @ w_dz.T + b_d + math.sqrt(_NOISE_VAR) * rng.normal(size=(_BATCH, _DATA_DIM))
    exact_b, q_mean_bz, q_logvar_bz = tests_priors.linear_gaussian_ref(
        weights_c, mean_cz, var_cz, w=w_dz, b=b_d, s2=_NOISE_VAR, x=x_bd)
    if name == "mixture":
        # The linear encoder closest (least squares) to the float64 proposal of every example,
        # with the widest of their variances.
        x1_bd = np.concatenate([x_bd, np.ones((_BATCH, 1))], axis=1)
        coef = np.linalg.lstsq(x1_bd, q_mean_bz, rcond=None)[0]
        a_zd, a_z = coef[:-1].T, coef[-1]
        logvar_z = q_logvar_bz.max(axis=0)
    else:
        logvar_z = np.full(_LATENT_DIM, math.log(var))
    params = {
        "encoder": {"params": {"Dense_0": {"kernel": f32(a_zd.T), "bias": f32(a_z)},
                               "logvar": f32(logvar_z)}},
        "decoder": {"params": {"Dense_0": {"kernel": f32(w_dz.T), "bias": f32(b_d)}}},
        "prior": prior_params,
    }
    x = np.asarray(x_bd.reshape((_BATCH,) + _IMAGE_SHAPE), np.float32)
    return dataclasses.replace(PPCA_VAE, prior=prior), params, x, exact_b


@pytest.mark.parametrize("prior_name", ["mixture", "vamp"])
def test_estimator_with_a_learned_prior_converges_to_the_closed_form_from_below(prior_name):
    vae, params, x, exact_b = _learned_prior_case(prior_name)
    chex.assert_trees_all_equal_shapes(params, vae.init(jax.random.key(0), _IMAGE_SHAPE))

    def errors(num_samples, repeats):  # [R, B] estimate - exact, R copies told apart by id
        estimate = jax.jit(functools.partial(model_lib.log_likelihood_estimate, vae,
                                             num_samples=num_samples, chunk_size=1000))
        got = estimate(params, np.tile(x, (repeats, 1, 1, 1)), jax.random.key(num_samples),
                       example_ids=jnp.arange(repeats * _BATCH))
        return np.asarray(got, np.float64).reshape(repeats, _BATCH) - exact_b

    err = {k: errors(k, r) for k, r in ((10, 10_000), (100, 200), (10_000, 10))}
    # The error shrinks with K (roughly as 1 / sqrt(K)).
    mean_abs = [np.abs(e).mean() for e in err.values()]
    assert mean_abs[0] > 2.0 * mean_abs[1] and mean_abs[1] > 4.0 * mean_abs[2], mean_abs
    # K = 10,000: every estimate within 0.05 nats of the closed form, and the mean over the
    # repeats within 5 standard errors of it.
    final = err[10_000]
    np.testing.assert_array_less(np.abs(final), 0.05)
    np.testing.assert_array_less(np.abs(final.mean(0)), 5.0 * final.std(0) / math.sqrt(10))
    # Jensen: at K = 10 the estimate is low on average (NLL overestimated) for every example,
    # by more than 5 standard errors.
    small = err[10]
    np.testing.assert_array_less(small.mean(0), -5.0 * small.std(0) / math.sqrt(len(small)))


def test_nll_summary_matches_numpy():
    log_px = np.random.default_rng(0).normal(-90.0, 5.0, size=37)
    summary = evaluate.nll_summary(jnp.asarray(log_px, jnp.float32), num_dims=784)
    nll = -log_px
    assert summary["num_examples"] == 37
    assert summary["nll_nats"] == pytest.approx(nll.mean(), rel=1e-6)
    assert summary["nll_stderr_nats"] == pytest.approx(nll.std(ddof=1) / np.sqrt(37), rel=1e-5)
    assert summary["bits_per_dim"] == pytest.approx(nll.mean() / (784 * np.log(2)), rel=1e-6)


# --------------------------------------------------------------------------- latent diagnostics


def kl_per_dim_reference(mean_nz, logvar_nz):
    """Float64 mean over examples of KL(N(m, e^lv) || N(0, 1)) per dimension."""
    m, lv = np.asarray(mean_nz, np.float64), np.asarray(logvar_nz, np.float64)
    return np.mean(0.5 * (m**2 + np.exp(lv) - 1.0 - lv), axis=0)


def calc_mi_reference(mu, logvar, z):
    """He et al. (2019) `calc_mi`, transcribed to float64 numpy (one z per x)."""
    mu, logvar, z = (np.asarray(a, np.float64) for a in (mu, logvar, z))
    x_batch, nz = mu.shape
    neg_entropy = np.mean(-0.5 * nz * np.log(2 * np.pi) - 0.5 * np.sum(1 + logvar, -1))
    dev = z[:, None, :] - mu[None]  # [z_batch, x_batch, nz]
    log_density = (-0.5 * np.sum(dev**2 / np.exp(logvar)[None], -1)
                   - 0.5 * (nz * np.log(2 * np.pi) + np.sum(logvar, -1))[None])
    log_qz = special.logsumexp(log_density, axis=1) - np.log(x_batch)
    return neg_entropy - log_qz.mean()


def collapsed_posteriors(n=64):
    """Dims 0..2 vary across examples (var ~ 1); dims 3..5 are the prior N(0, 1) for every x."""
    rng = np.random.default_rng(0)
    mean_nz = np.zeros((n, 6), np.float32)
    logvar_nz = np.zeros((n, 6), np.float32)
    mean_nz[:, :3] = rng.normal(size=(n, 3))
    logvar_nz[:, :3] = rng.uniform(-3.0, 0.0, size=(n, 3))
    return mean_nz, logvar_nz


def test_latent_diagnostics_counts_active_units_and_matches_float64_kl():
    mean_nz, logvar_nz = collapsed_posteriors()
    got = jax.jit(evaluate.latent_diagnostics)(mean_nz, logvar_nz, jax.random.key(0))
    chex.assert_shape(got["kl_per_dim"], (6,))
    chex.assert_tree_all_finite(got)
    assert int(got["active_units"]) == 3
    np.testing.assert_allclose(got["kl_per_dim"], kl_per_dim_reference(mean_nz, logvar_nz),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(got["kl_per_dim"])[3:], 0.0)
    np.testing.assert_allclose(got["mean_variance_per_dim"],
                               np.var(mean_nz.astype(np.float64), axis=0), rtol=1e-5, atol=1e-8)
    # The 0.01 threshold: a dimension whose means vary with variance 0.005 is inactive.
    mean_nz[:, 3] = np.sqrt(0.005) * np.where(np.arange(len(mean_nz)) % 2, 1.0, -1.0)
    got = evaluate.latent_diagnostics(mean_nz, logvar_nz, jax.random.key(0))
    assert int(got["active_units"]) == 3


# Posterior means whose variances over examples straddle both 0.01 (Burda et al.'s threshold)
# and 0.1: +-sqrt(v) on alternate examples has variance v exactly (ddof = 0).
_VARIANCES = np.array([1.0, 0.15, 0.05, 0.02, 0.011, 0.009, 0.0])


def _means_with_variances(n=40):
    signs_n = np.where(np.arange(n) % 2, 1.0, -1.0)
    return (signs_n[:, None] * np.sqrt(_VARIANCES)[None] + 0.3).astype(np.float32)


def test_active_units_count_variances_above_0_01():
    mean_nz = _means_with_variances()
    want = int(np.sum(np.var(mean_nz.astype(np.float64), axis=0) > 0.01))
    assert want == 5 and int(np.sum(_VARIANCES > 0.1)) == 2  # the thresholds disagree here
    got = jax.jit(evaluate.latent_diagnostics)(mean_nz, np.zeros_like(mean_nz),
                                               jax.random.key(0))
    assert int(got["active_units"]) == want
    # The path of evaluate_workdir: the posterior's point summaries (of every layer) and, where
    # the model has it in closed form, the KL per dimension; without it kl_per_dim is None.
    kl_nz = np.random.default_rng(0).uniform(size=mean_nz.shape)
    got = evaluate.latent_mean_diagnostics(mean_nz, kl_nz)
    assert got["active_units"] == want
    np.testing.assert_allclose(got["mean_variance_per_dim"], _VARIANCES, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["kl_per_dim"], kl_nz.mean(axis=0), rtol=1e-12)
    got = evaluate.latent_mean_diagnostics(mean_nz)
    assert got["kl_per_dim"] is None and got["active_units"] == want
    np.testing.assert_allclose(got["mean_variance_per_dim"], _VARIANCES, rtol=1e-6, atol=1e-9)


def test_mutual_information_matches_the_he_et_al_reference():
    mean_nz, logvar_nz = collapsed_posteriors(n=50)
    z_nz = np.asarray(distributions.reparameterize(jax.random.key(1), mean_nz, logvar_nz))
    want = calc_mi_reference(mean_nz, logvar_nz, z_nz)
    for chunk_size in (7, 64):  # 7 does not divide N = 50
        got = jax.jit(functools.partial(evaluate.mutual_information, chunk_size=chunk_size))(
            mean_nz, logvar_nz, z_nz)
        assert float(got) == pytest.approx(want, abs=1e-4)
    # latent_diagnostics draws its z with `reparameterize` from the key it is given.
    got = evaluate.latent_diagnostics(mean_nz, logvar_nz, jax.random.key(1))
    assert float(got["mutual_information_nats"]) == pytest.approx(want, abs=1e-4)


def test_mutual_information_is_zero_for_identical_posteriors_and_grows_to_log_n():
    n, z_dim = 400, 4
    rng = np.random.default_rng(1)
    base_z = rng.normal(size=z_dim).astype(np.float32)
    logvar_nz = np.full((n, z_dim), -1.0, np.float32)
    identical = evaluate.latent_diagnostics(np.tile(base_z, (n, 1)), logvar_nz,
                                            jax.random.key(2))
    # Pure Monte Carlo noise here: std sqrt(Z / (2 N)) = 0.071 nats; 4 std.
    assert abs(float(identical["mutual_information_nats"])) < 4 * np.sqrt(z_dim / (2 * n))
    assert int(identical["active_units"]) == 0

    spread_nz = rng.normal(size=(n, z_dim)).astype(np.float32)
    estimates = [float(evaluate.latent_diagnostics(
        scale * spread_nz, logvar_nz, jax.random.key(3))["mutual_information_nats"])
        for scale in (0.25, 1.0, 4.0, 100.0)]
    assert estimates == sorted(estimates), estimates
    assert estimates[1] > 0.5
    # Well-separated posteriors: the estimator saturates at log N (its known bias), up to
    # the Monte Carlo term mean_n 1/2 sum_z (eps_nz^2 - 1), computed here from the draws.
    eps_nz = rng.normal(size=(n, z_dim)).astype(np.float32)
    mean_nz = 100.0 * spread_nz
    z_nz = mean_nz + np.exp(0.5 * logvar_nz) * eps_nz
    got = float(evaluate.mutual_information(mean_nz, logvar_nz, z_nz))
    noise = 0.5 * np.mean(np.sum(np.square(eps_nz.astype(np.float64)) - 1.0, axis=-1))
    assert got == pytest.approx(np.log(n) + noise, abs=2e-3)
    assert estimates[-1] == pytest.approx(np.log(n), abs=4 * np.sqrt(z_dim / (2 * n)))


def test_latent_paths_match_numpy():
    mean_z = jnp.array([0.5, -1.0, 2.0])
    values = np.linspace(-3, 3, 5)
    got = np.asarray(evaluate.traversal_latents(mean_z, np.array([2, 0]), values))
    chex.assert_shape(got, (2, 5, 3))
    np.testing.assert_allclose(got[0, :, 2], 2.0 + values, rtol=1e-6)
    np.testing.assert_allclose(got[0, :, :2], np.tile([0.5, -1.0], (5, 1)))
    np.testing.assert_allclose(got[1, :, 0], 0.5 + values, rtol=1e-6)

    path = np.asarray(evaluate.interpolation_latents(jnp.zeros(3), jnp.array([1.0, 2.0, 4.0]), 5))
    np.testing.assert_allclose(path, np.linspace(0, 1, 5)[:, None] * [1.0, 2.0, 4.0], rtol=1e-6)

    grid = np.asarray(evaluate.manifold_latents(4))
    quantiles = stats.norm.ppf(np.linspace(0.05, 0.95, 4))
    chex.assert_shape(grid, (4, 4, 2))
    np.testing.assert_allclose(grid[0, :, 0], quantiles, rtol=1e-5)
    np.testing.assert_allclose(grid[:, 0, 1], quantiles[::-1], rtol=1e-5)


def test_binarize_once_is_seeded_and_has_the_right_probabilities():
    levels = np.tile(np.array([0, 8, 16], np.uint8), (2000, 1)).reshape(2000, 3, 1, 1)
    a = evaluate.binarize_once(levels, 1 / 16, seed=5)
    np.testing.assert_array_equal(a, evaluate.binarize_once(levels, 1 / 16, seed=5))
    assert not np.array_equal(a, evaluate.binarize_once(levels, 1 / 16, seed=6))
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert a[:, 0].max() == 0.0 and a[:, 2].min() == 1.0
    assert abs(a[:, 1].mean() - 0.5) < 4 * 0.5 / np.sqrt(2000)  # 4 std of the mean


def test_dequantize_once_is_seeded_per_example_and_stays_in_the_bins():
    levels = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 1)).astype(np.uint8)
    y = evaluate.dequantize_once(levels, 256, seed=3)
    assert y.dtype == np.float32 and y.shape == levels.shape
    assert np.all(levels / 256 <= y) and np.all(y < (levels + 1.0) / 256)
    np.testing.assert_array_equal(y, evaluate.dequantize_once(levels, 256, seed=3))
    # Example n's draw depends on n alone: --max_examples keeps every example's y.
    np.testing.assert_array_equal(evaluate.dequantize_once(levels[:4], 256, seed=3), y[:4])
    assert np.all(evaluate.dequantize_once(levels, 256, seed=4) != y)


# --------------------------------------------------------------------------- data-parallel passes


def test_run_in_batches_pads_the_last_batch_and_agrees_with_one_call(ppca):
    params, x, _ = ppca
    x13 = np.concatenate([x, x[:5]])  # 13 rows: batches of 8 on 8 devices, the last padded
    key = jax.random.key(5)
    want = np.asarray(_estimator(100, 50)(params, x13, key, example_ids=jnp.arange(13)))
    mesh = parallel.make_mesh(jax.devices()[:8])
    program = evaluate.make_nll_program(mesh, PPCA_VAE, num_samples=100, chunk_size=50)
    got = evaluate.run_in_batches(program, parallel.replicate(params, mesh), x13,
                                  parallel.replicate(key, mesh), mesh, batch_size=8)
    assert got.shape == (13,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


class _Interrupted(Exception):
    pass


def _counted(program, calls, *, stop_at=None):
    """`program`, appending to `calls` at each call; raises _Interrupted at call `stop_at`."""
    def run(*args):
        if len(calls) == stop_at:
            raise _Interrupted
        calls.append(1)
        return program(*args)
    return run


def test_run_in_batches_continues_after_the_batches_its_progress_holds(ppca, tmp_path):
    params, x, _ = ppca
    x13 = np.concatenate([x, x[:5]])  # 13 rows: batches of 4, 4, 4 and 1
    mesh = parallel.make_mesh(jax.devices()[:1])
    program = evaluate.make_nll_program(mesh, PPCA_VAE, num_samples=100, chunk_size=50)
    params, key = parallel.replicate(params, mesh), parallel.replicate(jax.random.key(5), mesh)
    path = tmp_path / "progress.npz"

    def run(calls, identity="a", stop_at=None):
        progress = evaluate.BatchProgress(path, identity, every_s=0.0)
        return evaluate.run_in_batches(_counted(program, calls, stop_at=stop_at), params, x13,
                                       key, mesh, batch_size=4, progress=progress)

    want = evaluate.run_in_batches(program, params, x13, key, mesh, batch_size=4)
    calls = []
    with pytest.raises(_Interrupted):
        run(calls, stop_at=2)
    np.testing.assert_array_equal(np.load(path)["done"], want[:8])
    calls = []
    np.testing.assert_array_equal(run(calls), want)
    assert len(calls) == 2  # the two batches the interrupted run had not finished
    # Saved under another identity (other arguments, parameters, data) or unreadable: all
    # four batches again, and the file replaced.
    for prepare in (lambda: None, lambda: path.write_bytes(b"not an npz")):
        prepare()
        calls = []
        np.testing.assert_array_equal(run(calls, identity="b"), want)
        assert len(calls) == 4 and str(np.load(path)["identity"]) == "b"


def test_per_example_metrics_on_eight_devices(ppca):
    params, x, exact_b = ppca
    x64 = np.tile(x, (8, 1, 1, 1))  # 8 independent copies of every example (distinct ids)
    key = jax.random.key(6)
    ids = jnp.arange(len(x64))
    loss_fn = objectives.make_loss_fn(objectives.Settings(name="elbo"), PPCA_VAE)
    _, metrics = loss_fn(params, x64, jax.random.fold_in(key, 0), example_ids=ids)
    mean_bz, logvar_bz = PPCA_VAE.encode(params, x64)[:2]
    fn = functools.partial(evaluate.per_example_metrics, PPCA_VAE, iwae_ks=(1, 5, 50))
    mesh = parallel.make_mesh(jax.devices()[:8])
    got = evaluate.run_in_batches(
        evaluate.make_per_example_program(fn, mesh), parallel.replicate(params, mesh), x64,
        parallel.replicate(key, mesh), mesh, batch_size=32)
    chex.assert_shape([got["point"], got["mean"], got["logvar"], got["kl_per_dim"]],
                      (64, _LATENT_DIM))
    chex.assert_shape([got["elbo"], got["recon"], got["kl"]], (64,))
    chex.assert_shape(got["iwae"], (64, 3))
    # The same noise as one unsharded call: keyed by example id, not by device.
    for name in ("elbo", "recon", "kl", "kl_per_dim"):
        np.testing.assert_allclose(got[name], metrics["per_example"][name], rtol=1e-5)
    np.testing.assert_allclose(got["mean"], mean_bz, rtol=1e-6)
    np.testing.assert_allclose(got["logvar"], logvar_bz, rtol=1e-6)
    np.testing.assert_array_equal(got["point"], got["mean"])  # a diagonal Gaussian's mean
    # Against float64 recomputations with the documented noise: the ELBO's one draw from
    # fold_in(key, 0) with the closed-form KL, and L_k over the first k draws from
    # fold_in(key, 1).
    (log_px_z, _, _), (mean64_bz, logvar64_z) = _reference_terms(
        params, x64, jax.random.fold_in(key, 0), 1, ids)
    kl64_bz = 0.5 * (mean64_bz**2 + np.exp(logvar64_z) - 1.0 - logvar64_z)
    np.testing.assert_allclose(got["recon"], -log_px_z[0], rtol=0, atol=2e-5)
    np.testing.assert_allclose(got["kl_per_dim"], kl64_bz, rtol=0, atol=2e-5)
    np.testing.assert_allclose(got["kl"], kl64_bz.sum(-1), rtol=0, atol=2e-5)
    terms, _ = _reference_terms(params, x64, jax.random.fold_in(key, 1), 50, ids)
    log_w_kb = terms[0] + terms[1] - terms[2]
    for i, k in enumerate((1, 5, 50)):
        np.testing.assert_allclose(got["iwae"][:, i],
                                   special.logsumexp(log_w_kb[:k], axis=0) - math.log(k),
                                   rtol=0, atol=2e-5)
    # Against the exact log p(x): every bound is below it on average, tighter with k, and
    # L_1 equals the ELBO in expectation (it estimates the KL by one sample).
    gap_nk = got["iwae"].astype(np.float64) - np.tile(exact_b, 8)[:, None]
    mean_gap_k = gap_nk.mean(axis=0)
    stderr_k = gap_nk.std(axis=0, ddof=1) / np.sqrt(64)
    assert mean_gap_k[0] < mean_gap_k[1] < mean_gap_k[2] < 4 * stderr_k[2], mean_gap_k
    elbo_gap = got["elbo"] - np.tile(exact_b, 8)
    assert abs(mean_gap_k[0] - elbo_gap.mean()) < 4 * stderr_k[0]


# --------------------------------------------------------------------------- the command


def _tiny_mlp(latent_dim=2):
    vae = model_lib.VAE(
        encoder=models.MLPEncoder(latent_dim=latent_dim, hidden=(16,)),
        decoder=models.MLPDecoder(output_shape=(8, 8, 1), hidden=(16,)),
        likelihood=likelihoods.make_likelihood("bernoulli"),
        prior=priors.make_prior("standard_normal"),
        posterior=posteriors.make_posterior("diagonal"),
        latent_dims=(latent_dim,))
    return vae, vae.init(jax.random.key(0), (8, 8, 1))


def test_save_plots_writes_every_picture_for_a_two_latent_model(tmp_path):
    vae, params = _tiny_mlp(latent_dim=2)
    x = np.asarray(jax.random.bernoulli(jax.random.key(1), 0.3, (20, 8, 8, 1)), np.float32)
    mean_nz = vae.point(params, x)
    paths = evaluate.save_plots(
        tmp_path / "plots", vae, params, x, jax.random.key(2),
        kl_per_dim=np.array([0.1, 0.3]), mean_nz=np.asarray(mean_nz), labels=np.arange(20) % 3)
    names = {p.name for p in paths}
    assert names == {"reconstructions.png", "samples.png", "traversals.png",
                     "interpolation.png", "latent_scatter.png", "manifold.png"}
    for path in paths:
        with Image.open(path) as image:
            image.verify()
    # The manifold is the 15 x 15 grid of 8 x 8 images at the default scale (6), pad 1.
    with Image.open(tmp_path / "plots" / "manifold.png") as image:
        assert image.size == (15 * (48 + 1) + 1,) * 2
    # Traversals: one row per latent dimension.
    with Image.open(tmp_path / "plots" / "traversals.png") as image:
        assert image.height == 2 * (48 + 1) + 1


def _write_config(workdir, **overrides):
    config = tests_train.tiny_digits(**overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort())
    return config


def test_missing_workdir_or_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        evaluate.evaluate_workdir(tmp_path / "nothing_here")
    _write_config(tmp_path / "untrained")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        evaluate.evaluate_workdir(tmp_path / "untrained", num_importance_samples=10,
                                  chunk_size=10)
    assert not (tmp_path / "untrained" / "checkpoints").exists()
    (tmp_path / "untrained" / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        evaluate.evaluate_workdir(tmp_path / "untrained", num_importance_samples=10,
                                  chunk_size=10)
    with pytest.raises(ValueError, match="split"):
        evaluate.evaluate_workdir(tmp_path / "untrained", split="train")


def test_restore_uses_the_ema_parameters_when_the_run_kept_them(tmp_path):
    config = _write_config(tmp_path / "ema", **{"optim.ema_decay": 0.9, "model.hidden": (16,),
                                                "model.latent_dim": 2})
    vae = train.make_model(config, (8, 8, 1))
    state = train.init_state(jax.random.key(0), vae, (8, 8, 1), train.make_optimizer(config),
                             ema=True)
    ema = jax.tree.map(lambda p: p + 0.01, state.params)
    state = state.replace(step=jnp.asarray(7, jnp.int32), ema_params=ema)
    checkpoints = workdir_lib.Checkpoints(tmp_path / "ema" / "checkpoints", keep=2)
    checkpoints.save(7, state)
    checkpoints.close()
    params, step = evaluate.restore_eval_params(config, tmp_path / "ema", vae, (8, 8, 1))
    assert step == 7
    chex.assert_trees_all_close(params, ema)
    # eval.json says which parameters it scored.
    result = evaluate.evaluate_workdir(tmp_path / "ema", num_importance_samples=2, chunk_size=2,
                                       max_examples=8, iwae_ks=(1,), write_plots=False)
    assert (result["parameters"], result["ema_decay"]) == ("ema", 0.9)
    # The same checkpoint without the average: the optimiser's own parameters, said so.
    params, _ = evaluate.restore_eval_params(config, tmp_path / "ema", vae, (8, 8, 1),
                                             parameters="iterate")
    chex.assert_trees_all_close(params, state.params)
    iterate = evaluate.evaluate_workdir(
        tmp_path / "ema", num_importance_samples=2, chunk_size=2, max_examples=8, iwae_ks=(1,),
        write_plots=False, parameters="iterate", out_dir=tmp_path / "iterate")
    assert iterate["parameters"] == "iterate" and "ema_decay" not in iterate
    assert iterate["nll_nats"] != result["nll_nats"]
    # An EMA asked of a run that kept none, or an unknown name: refused before anything runs.
    plain = _write_config(tmp_path / "plain", **{"model.hidden": (16,), "model.latent_dim": 2})
    for parameters, message in (("ema", "kept no EMA"), ("average", "must be one of")):
        with pytest.raises(ValueError, match=message):
            evaluate.evaluate_workdir(tmp_path / "plain", parameters=parameters)
        with pytest.raises(ValueError, match=message):
            evaluate.restore_eval_params(plain, tmp_path / "plain", vae, (8, 8, 1),
                                         parameters=parameters)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["config.json"]


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory):
    """A digits workdir with untrained checkpoints at steps 3 and 7 (different parameters)."""
    workdir = tmp_path_factory.mktemp("evaluate") / "two_checkpoints"
    config = _write_config(workdir, **{"model.hidden": (16,), "model.latent_dim": 2})
    vae = train.make_model(config, (8, 8, 1))
    state = train.init_state(jax.random.key(0), vae, (8, 8, 1), train.make_optimizer(config),
                             ema=False)
    checkpoints = workdir_lib.Checkpoints(workdir / "checkpoints", keep=3)
    params_by_step = {}
    for step, shift in ((3, 0.0), (7, 0.05)):
        params = jax.tree.map(lambda p, s=shift: p + s, state.params)
        checkpoints.save(step, state.replace(step=jnp.asarray(step, jnp.int32), params=params))
        params_by_step[step] = params
    checkpoints.close()
    return workdir, config, params_by_step


def test_restore_picks_the_step_asked_for_and_names_the_steps_there_are(two_checkpoint_run):
    workdir, config, params_by_step = two_checkpoint_run
    restore = functools.partial(evaluate.restore_eval_params, config, workdir,
                                train.make_model(config, (8, 8, 1)), (8, 8, 1))
    for step, want in ((None, 7), (7, 7), (3, 3)):
        params, got_step = restore(step=step)
        assert got_step == want
        chex.assert_trees_all_close(params, params_by_step[want])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 5 .*it has 3, 7"):
        restore(step=5)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 5 .*it has 3, 7"):
        evaluate.evaluate_workdir(workdir, step=5, num_importance_samples=3, chunk_size=2)


def test_a_corrupt_latest_checkpoint_is_skipped_and_left_in_place(two_checkpoint_run, tmp_path):
    source, config, params_by_step = two_checkpoint_run
    workdir = tmp_path / "copy"
    shutil.copytree(source, workdir)
    victim = max((p for p in (workdir / "checkpoints" / "7").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    restore = functools.partial(evaluate.restore_eval_params, config, workdir,
                                train.make_model(config, (8, 8, 1)), (8, 8, 1))
    params, step = restore()
    assert step == 3
    chex.assert_trees_all_close(params, params_by_step[3])
    with pytest.raises(workdir_lib.CheckpointRestoreError, match="checkpoint 7 is corrupt"):
        restore(step=7)
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before  # nothing moved


_SMALL_EVALUATION = dict(num_importance_samples=3, chunk_size=2, max_examples=16, batch_size=8,
                         write_plots=False)


def test_an_evaluation_writing_into_a_workdir_in_use_is_refused(two_checkpoint_run, tmp_path):
    workdir, _, _ = two_checkpoint_run
    reported = []
    with workdir_lib.WorkdirLock(workdir, purpose="training"):
        # At once, before the computation: nothing is reported.
        for out_dir in (None, workdir / "evaluations"):
            with pytest.raises(workdir_lib.WorkdirLocked, match=f"process {os.getpid()} on"):
                evaluate.evaluate_workdir(workdir, out_dir=out_dir, report=reported.append,
                                          devices=jax.devices()[:1], **_SMALL_EVALUATION)
        assert not reported and not (workdir / "evaluations").exists()
        # Written elsewhere, the evaluation does not need the workdir.
        result = evaluate.evaluate_workdir(workdir, out_dir=tmp_path / "out",
                                           devices=jax.devices()[:1], **_SMALL_EVALUATION)
        assert json.loads((tmp_path / "out" / "eval.json").read_text()) == result
    # A training run that starts while the numbers are computed: refused at the writing, and
    # the numbers have been reported.
    training = workdir_lib.WorkdirLock(workdir, purpose="training")
    try:
        with pytest.raises(workdir_lib.WorkdirLocked, match="this evaluation did not start"):
            evaluate.evaluate_workdir(workdir, report=lambda r: (reported.append(r),
                                                                 training.acquire()),
                                      devices=jax.devices()[:1], **_SMALL_EVALUATION)
    finally:
        training.release()
    assert reported[0]["checkpoint_step"] == 7 and not (workdir / "eval.json").exists()


def test_an_interrupted_evaluation_continues_where_it_stopped(two_checkpoint_run, tmp_path,
                                                               monkeypatch):
    workdir, _, _ = two_checkpoint_run
    small = dict(_SMALL_EVALUATION, devices=jax.devices()[:1])  # two NLL batches of 8
    reference = evaluate.evaluate_workdir(workdir, out_dir=tmp_path / "reference", **small)
    monkeypatch.setattr(evaluate, "PROGRESS_EVERY_S", 0.0)  # a save after every batch
    make_nll_program, calls = evaluate.make_nll_program, []

    def run(out_dir, stop_at=None, **kwargs):
        monkeypatch.setattr(evaluate, "make_nll_program", lambda *a, **k: _counted(
            make_nll_program(*a, **k), calls, stop_at=stop_at))
        return evaluate.evaluate_workdir(workdir, out_dir=out_dir, **small, **kwargs)

    out = tmp_path / "interrupted"
    with pytest.raises(_Interrupted):
        run(out, stop_at=1)
    assert (out / evaluate.NLL_PROGRESS).is_file() and not (out / evaluate.EVAL_JSON).exists()
    calls.clear()
    result = run(out)
    assert len(calls) == 1  # the second batch only
    assert ({k: v for k, v in result.items() if k != "wall_time_s"}
            == {k: v for k, v in reference.items() if k != "wall_time_s"})
    np.testing.assert_array_equal(evaluate.load_evaluation(out)[1]["nll_nats"],
                                  evaluate.load_evaluation(tmp_path / "reference")[1]["nll_nats"])
    assert not (out / evaluate.NLL_PROGRESS).exists()  # eval.json holds the numbers
    # Other arguments (here the seed of the importance samples) do not reuse the progress.
    with pytest.raises(_Interrupted):
        run(out, stop_at=len(calls) + 1)
    calls.clear()
    run(out, seed=1)
    assert len(calls) == 2


@pytest.mark.slow
def test_the_command_refuses_a_workdir_in_use_in_one_line(two_checkpoint_run):
    workdir, _, _ = two_checkpoint_run
    with workdir_lib.WorkdirLock(workdir, purpose="training"):
        proc = subprocess.run(
            [sys.executable, "-m", "vae_jax.evaluate", "--workdir", str(workdir)],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {workdir} is in use by process {os.getpid()}")
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout


def _read_only_command(workdir, *args):
    """`python -m vae_jax.evaluate --workdir workdir *args` with workdir read-only: a read-only
    bind mount of it onto itself in a private mount namespace (`unshare --mount`), so writes
    fail with EROFS as on a read-only file system, also for root (who ignores chmod), and the
    mount ends with the process. Skips where mount namespaces are not allowed."""
    mount = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && '
             'if touch "$0/probe" 2>/dev/null; then echo not-read-only >&2; exit 97; fi && ')
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", mount + "exit 0", str(workdir)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {probe.stderr.strip()[:200]}")
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", mount + 'exec "$@"', str(workdir), sys.executable,
         "-m", "vae_jax.evaluate", "--workdir", str(workdir), *args],
        env=dict(os.environ, XLA_FLAGS=xla_flags(1)),
        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_read_only_workdir_still_prints_the_numbers_and_out_writes_elsewhere(
        two_checkpoint_run, tmp_path):
    workdir, _, _ = two_checkpoint_run
    args = ["--num_importance_samples", "3", "--chunk_size", "2", "--max_examples", "16",
            "--batch_size", "8"]
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    proc = _read_only_command(workdir, *args, "--noplots")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "test (16 examples, step 7): nll_nats=" in proc.stdout
    assert "iwae_bounds: L_1=" in proc.stdout
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: could not write the evaluation into {workdir}")
    assert "Read-only file system" in last_line and "--out" in last_line
    assert "Traceback" not in proc.stderr

    out = tmp_path / "elsewhere"
    proc = _read_only_command(workdir, *args, "--step", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3): nll_nats=" in proc.stdout and f"written: {out / 'eval.json'}" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["checkpoint_step"] == 3 and result["workdir"] == str(workdir)
    assert result["num_importance_samples"] == 3 and result["num_examples"] == 16
    assert result["plots"] and all((out / name).is_file() for name in result["plots"])
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_paired_difference_is_the_covariance_identity_and_covers_the_true_difference():
    rng = np.random.default_rng(0)
    # Two rows whose per-example values share a per-example difficulty (correlation ~0.98).
    n, replicates, true_difference = 300, 4000, 0.3
    difficulty = rng.gamma(4.0, 20.0, size=(replicates, n))
    a = difficulty + true_difference + rng.normal(0, 3.0, size=(replicates, n))
    b = difficulty + rng.normal(0, 3.0, size=(replicates, n))
    first = evaluate.paired_difference(a[0], b[0])
    # The float64 identity se^2 = se_a^2 + se_b^2 - 2 cov(a, b) / N.
    cov = np.cov(a[0], b[0], ddof=1)
    assert first["stderr"] ** 2 == pytest.approx(
        (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / n, rel=1e-10)
    assert first["unpaired_stderr"] ** 2 == pytest.approx((cov[0, 0] + cov[1, 1]) / n, rel=1e-10)
    assert first["correlation"] == pytest.approx(stats.pearsonr(a[0], b[0])[0], rel=1e-10)
    assert first["unpaired_stderr"] > 5 * first["stderr"]
    # Monte Carlo: the paired interval +- 1.96 se covers the true difference 95% of the time
    # (binomial sd of the rate over 4000 replicates: 0.0034), the unpaired one almost always.
    results = [evaluate.paired_difference(a[r], b[r]) for r in range(replicates)]
    covered = np.mean([abs(r["difference"] - true_difference) <= 1.96 * r["stderr"]
                       for r in results])
    assert covered == pytest.approx(0.95, abs=0.012)
    # The reported se matches the spread of the difference over replicates.
    spread = np.std([r["difference"] for r in results], ddof=1)
    assert np.mean([r["stderr"] for r in results]) == pytest.approx(spread, rel=0.05)
    with pytest.raises(ValueError, match="equal-length"):
        evaluate.paired_difference(a[0], b[0, :-1])


def test_compare_evaluations_pairs_two_checkpoints_on_the_same_images_only(
        two_checkpoint_run, tmp_path):
    workdir, _, _ = two_checkpoint_run
    kwargs = dict(num_importance_samples=4, chunk_size=4, max_examples=24, batch_size=8,
                  iwae_ks=(1,), write_plots=False)
    for name, step, binarization_seed in (("a", 7, 0), ("b", 3, 0), ("other", 3, 1)):
        evaluate.evaluate_workdir(workdir, step=step, binarization_seed=binarization_seed,
                                  out_dir=tmp_path / name, **kwargs)
    eval_a, arrays_a = evaluate.load_evaluation(tmp_path / "a")
    eval_b, arrays_b = evaluate.load_evaluation(tmp_path / "b")
    comparison = evaluate.compare_evaluations(tmp_path / "a", tmp_path / "b")
    assert comparison["nll_nats"] == [eval_a["nll_nats"], eval_b["nll_nats"]]
    assert comparison["nll"]["difference"] == pytest.approx(
        eval_a["nll_nats"] - eval_b["nll_nats"], abs=1e-9)
    assert comparison["elbo"]["difference"] == pytest.approx(
        eval_a["elbo_nats"] - eval_b["elbo_nats"], abs=1e-9)
    d = arrays_a["nll_nats"] - arrays_b["nll_nats"]
    assert comparison["nll"]["stderr"] == pytest.approx(np.std(d, ddof=1) / math.sqrt(24))
    # Another binarisation of the same test images is other data: refused, naming the field.
    assert eval_a["data_sha256"] != json.loads((tmp_path / "other" / "eval.json").read_text())[
        "data_sha256"]
    with pytest.raises(ValueError, match="data_sha256"):
        evaluate.compare_evaluations(tmp_path / "a", tmp_path / "other")
    # The command prints both rows and A - B with the paired error; errors are one line.
    script = [sys.executable, str(REPO_ROOT / "experiments" / "compare_evaluations.py")]
    proc = subprocess.run([*script, str(tmp_path / "a"), str(tmp_path / "b"), "--json",
                           str(tmp_path / "c.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("NLL: A ") and "(paired; unpaired +- " in proc.stdout
    assert proc.stdout.count("A - B") == 2
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(comparison))
    proc = subprocess.run([*script, str(tmp_path / "a"), str(tmp_path / "other")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    assert "data_sha256" in proc.stderr
    assert "Traceback" not in proc.stderr
    # An evaluation from before per_example.npz existed: the error says how to get one.
    (tmp_path / "b" / evaluate.PER_EXAMPLE_NPZ).unlink()
    with pytest.raises(FileNotFoundError, match="evaluate again with the same flags"):
        evaluate.compare_evaluations(tmp_path / "a", tmp_path / "b")


EVAL_KEYS = ("nll_nats", "nll_stderr_nats", "bits_per_dim", "elbo_nats", "iwae_bounds",
             "kl_per_dim", "mean_variance_per_dim", "active_units", "mutual_information_nats",
             "latent_dim", "latent_dims", "num_importance_samples", "split", "num_examples",
             "checkpoint_step", "parameters", "binarization_seed", "likelihood", "prior",
             "posterior", "data_sha256")
# Numbers a model does not define come as notes: kl_per_dim without a closed-form KL per
# dimension, the mutual information unless q(z | x) is one diagonal Gaussian layer.
NOTE_KEYS = ("kl_per_dim_note", "mutual_information_note")
TWO_LAYER_KEYS = tuple(k for k in EVAL_KEYS
                       if k not in ("kl_per_dim", "mutual_information_nats")) + NOTE_KEYS


def check_eval_json(workdir, *, num_examples, num_importance_samples, step, latent_dims,
                    keys=EVAL_KEYS):
    """eval.json has every key, finite numbers, and the orderings the bounds imply."""
    result = json.loads((workdir / "eval.json").read_text())
    assert set(keys) <= set(result)
    for key, value in result.items():
        if key == "iwae_bounds":
            value = list(value.values())
        if not isinstance(value, str) and key != "plots":
            assert np.all(np.isfinite(np.asarray(value, np.float64))), key
    assert result["num_examples"] == num_examples
    assert result["num_importance_samples"] == num_importance_samples
    assert result["checkpoint_step"] == step
    assert result["parameters"] == "iterate" and "ema_decay" not in result
    latent_dim = sum(latent_dims)
    assert result["latent_dims"] == list(latent_dims) and result["latent_dim"] == latent_dim
    # A number or its note, never both.
    assert ("kl_per_dim" in result) != ("kl_per_dim_note" in result), result
    assert ("mutual_information_nats" in result) != ("mutual_information_note" in result)
    if "kl_per_dim" in result:
        assert len(result["kl_per_dim"]) == latent_dim
        # kl_nats is the mean of the same closed-form KL, summed over dimensions.
        assert result["kl_nats"] == pytest.approx(sum(result["kl_per_dim"]), rel=1e-4)
    variances = np.asarray(result["mean_variance_per_dim"])
    assert variances.shape == (latent_dim,)
    assert result["active_units"] == int(np.sum(variances > 0.01)), variances
    iwae = result["iwae_bounds"]
    assert set(iwae) == {"1", "5", "50"}
    # L_1 <= L_5 <= L_50 in expectation; the draws are shared, so noise rarely reverses them.
    assert iwae["1"] - 0.05 <= iwae["5"] <= iwae["50"] + 0.05, iwae
    # -log p(x) (K samples) is below -ELBO up to noise; the ELBO is IWAE-1 with exact KL.
    assert result["nll_nats"] <= -result["elbo_nats"] + 0.5, result
    assert result["nll_nats"] == pytest.approx(-iwae["50"], abs=1.0)
    # per_example.npz holds the numbers eval.json averages, one per example.
    per_example = evaluate.load_evaluation(workdir)[1]
    assert set(per_example) == {"nll_nats", "elbo_nats"}
    for key in ("nll_nats", "elbo_nats"):
        assert per_example[key].shape == (num_examples,) and per_example[key].dtype == np.float64
        assert np.mean(per_example[key]) == pytest.approx(result[key], rel=1e-9)
    assert np.std(per_example["nll_nats"], ddof=1) / math.sqrt(num_examples) == pytest.approx(
        result["nll_stderr_nats"], rel=1e-9)
    return result


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """A tiny digits run (20 steps) to evaluate."""
    workdir = tmp_path_factory.mktemp("evaluate") / "digits"
    config = tests_train.tiny_digits(**{"run.num_steps": 20, "run.eval_every": 10,
                                        "run.checkpoint_every": 20})
    train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    return workdir


@pytest.mark.slow
def test_evaluate_command_end_to_end_on_digits(trained_digits):
    proc = subprocess.run(
        [sys.executable, "-m", "vae_jax.evaluate", "--workdir", str(trained_digits),
         "--num_importance_samples", "50", "--chunk_size", "25", "--parameters", "iterate"],
        env=dict(os.environ, XLA_FLAGS=xla_flags(2)),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nll_nats=" in proc.stdout
    result = check_eval_json(trained_digits, num_examples=input_pipeline.DIGITS_TEST_SIZE,
                             num_importance_samples=50, step=20, latent_dims=(8,))
    assert result["split"] == "test" and result["binarization_seed"] == 0
    written = {p.name for p in (trained_digits / "plots").glob("*.png")}
    assert written == {"reconstructions.png", "samples.png", "traversals.png",
                       "interpolation.png", "latent_scatter.png", "training_curves.png"}
    assert sorted(result["plots"]) == sorted(f"plots/{name}" for name in written)
    for name in written:
        with Image.open(trained_digits / "plots" / name) as image:
            image.verify()
    with Image.open(trained_digits / "plots" / "traversals.png") as image:
        assert image.height == 8 * (48 + 1) + 1  # one row per latent dimension


def test_the_command_reports_a_missing_workdir(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vae_jax.evaluate", "--workdir", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "config.json not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_evaluate_on_real_mnist(tmp_path, mnist_data_dir):
    config = tests_train.load_config("mnist_mlp", **{
        "run.num_steps": 10, "run.steps_per_dispatch": 10, "run.log_every": 10,
        "run.eval_every": 10, "run.checkpoint_every": 10, "model.hidden": (64,),
        "run.num_image_examples": 8, "data.data_dir": mnist_data_dir,
        "data.validation_size": 1000})
    workdir = tmp_path / "mnist"
    train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    evaluate.evaluate_workdir(workdir, num_importance_samples=50, chunk_size=25,
                              max_examples=200, batch_size=200, write_plots=False)
    result = check_eval_json(workdir, num_examples=200, num_importance_samples=50, step=10,
                             latent_dims=(config.model.latent_dim,))
    # Ten steps from initialisation: far better than a uniform Bernoulli (784 log 2 = 543
    # nats, 1 bit per dimension), far worse than a trained model (~85 nats).
    assert 85 < result["nll_nats"] < 543 and result["bits_per_dim"] < 1.0


# --------------------------------------------------------------------------- two stochastic layers


def _two_layer_model(seed=0):
    """A tiny two-stochastic-layer VAE (Z = 3, 2) with random weights (scale 0.5, so both
    layers matter) and binary 6-pixel data."""
    vae = model_lib.VAE(
        encoder=models.MLPEncoder(3, hidden=(5,)),
        decoder=models.MLPDecoder((2, 3, 1), hidden=(5,)),
        likelihood=likelihoods.make_likelihood("bernoulli"),
        prior=priors.make_prior("standard_normal"),
        posterior=posteriors.make_posterior("diagonal"),
        latent_dims=(3, 2),
        upper_encoders=(models.MLPEncoder(2, hidden=(4,)),),
        upper_priors=(models.MLPEncoder(3, hidden=(4,)),),
    )
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(vae.init, image_shape=(2, 3, 1)),
                            jax.random.key(0))
    assert set(shapes) == {"encoder", "decoder", "upper_encoders", "upper_priors"}
    params = jax.tree.map(
        lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), jnp.float32), shapes)
    x = (rng.random((_BATCH, 2, 3, 1)) < 0.4).astype(np.float32)
    return vae, params, x


def _two_layer_estimator(vae, num_samples, chunk_size):
    return jax.jit(functools.partial(model_lib.log_likelihood_estimate, vae,
                                     num_samples=num_samples, chunk_size=chunk_size))


@pytest.mark.parametrize("num_samples, chunk_sizes", [(77, (10, 40, 77, 100)), (1, (1, 100))])
def test_two_layer_estimate_matches_one_big_logsumexp_and_ignores_chunk_size(num_samples,
                                                                             chunk_sizes):
    """Chunked logaddexp == logsumexp over all K log weights drawn at once (float64), for
    chunk sizes that do and do not divide K (77 = 7 x 10 + 7 = 40 + 37)."""
    vae, params, x = _two_layer_model()
    key = jax.random.key(5)
    log_w_kb = np.asarray(vae.log_weights(params, x, key, num_samples=num_samples).weights.log_w,
                          np.float64)
    reference_b = special.logsumexp(log_w_kb, axis=0) - math.log(num_samples)
    for chunk_size in chunk_sizes:
        got = _two_layer_estimator(vae, num_samples, chunk_size)(params, x, key)
        np.testing.assert_allclose(np.asarray(got), reference_b, rtol=1e-5)
    with pytest.raises(ValueError, match=f"num_samples={num_samples} and chunk_size=0 must be"):
        _two_layer_estimator(vae, num_samples, 0)(params, x, key)


def test_two_layer_estimate_on_one_and_eight_devices_agree():
    vae, params, x = _two_layer_model(seed=1)
    key = jax.random.key(6)
    example_ids = np.arange(_BATCH, dtype=np.int32)
    single = np.asarray(_two_layer_estimator(vae, 40, 20)(params, x, key,
                                                          example_ids=example_ids))
    for num_devices in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:num_devices])
        program = evaluate.make_nll_program(mesh, vae, num_samples=40, chunk_size=20)
        got = program(parallel.replicate(params, mesh), parallel.shard_rows(x, mesh),
                      parallel.replicate(key, mesh), parallel.shard_rows(example_ids, mesh))
        assert len(got.sharding.device_set) == num_devices
        np.testing.assert_allclose(np.asarray(got), single, rtol=1e-5)


def test_two_layer_per_example_metrics():
    vae, params, x = _two_layer_model(seed=2)
    key = jax.random.key(7)
    out = jax.jit(functools.partial(evaluate.per_example_metrics, vae))(params, x, key)
    chex.assert_shape([out["mean"], out["logvar"]], (_BATCH, 3))
    chex.assert_shape(out["point"], (_BATCH, 3 + 2))
    chex.assert_shape(out["iwae"], (_BATCH, len(evaluate.IWAE_KS)))
    chex.assert_tree_all_finite(out)
    # Two layers have no closed-form KL, so none per dimension either.
    assert "kl_per_dim" not in out
    np.testing.assert_allclose(out["recon"] + out["kl"], -out["elbo"], rtol=1e-5)
    # The ELBO's terms are those of the one draw from fold_in(key, 0), its KL the Monte Carlo
    # log q - log p; the points are q(z1 | x)'s mean and q(z2 | z1)'s at that draw's z1.
    draw = vae.log_weights(params, x, jax.random.fold_in(key, 0), num_samples=1)
    weights = draw.weights
    np.testing.assert_allclose(out["recon"], -weights.log_px_z[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["kl"], (weights.log_qz - weights.log_pz)[0], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(out["point"][:, :3], out["mean"], rtol=1e-6)
    upper_mean_bz, _ = vae.upper_encoders[0].apply(params["upper_encoders"][0], draw.z[0][0])
    np.testing.assert_allclose(out["point"][:, 3:], upper_mean_bz, rtol=1e-5, atol=1e-6)
    # L_1 is the one-draw ELBO estimate; L_50 >= L_1 on average.
    assert np.mean(out["iwae"][:, -1]) >= np.mean(out["iwae"][:, 0])


@pytest.fixture(scope="module")
def trained_two_layer_digits(tmp_path_factory):
    """A tiny run of the two-stochastic-layer model (model.num_layers=2, 20 steps)."""
    workdir = tmp_path_factory.mktemp("evaluate") / "two_layer"
    config = tests_train.tiny_two_layer_digits()
    assert config.model.num_layers == 2
    train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    return workdir


def test_evaluate_workdir_on_a_two_layer_run(trained_two_layer_digits):
    workdir = trained_two_layer_digits
    evaluate.evaluate_workdir(workdir, num_importance_samples=50, chunk_size=25,
                              max_examples=64, devices=jax.devices()[:2])
    # Active units are counted from the variances of the points of both layers, [z1, z2].
    result = check_eval_json(workdir, num_examples=64, num_importance_samples=50, step=20,
                             latent_dims=(6, 3), keys=TWO_LAYER_KEYS)
    assert result["prior"] == "standard_normal" and result["posterior"] == "diagonal"
    assert "kl_per_dim" not in result and "mutual_information_nats" not in result
    # The pictures decode z1: traversals in standard deviations of its points (one row per
    # dimension of z1); no manifold (Z1 = 6).
    written = {p.name for p in (workdir / "plots").glob("*.png")}
    assert written == {"reconstructions.png", "samples.png", "traversals.png",
                       "interpolation.png", "latent_scatter.png", "training_curves.png"}
    for name in written:
        with Image.open(workdir / "plots" / name) as image:
            image.verify()
    with Image.open(workdir / "plots" / "traversals.png") as image:
        assert image.height == 6 * (48 + 1) + 1


# --------------------------------------------------------------------------- dequantised runs


@pytest.fixture(scope="module")
def trained_dequantized_digits(tmp_path_factory):
    """A tiny run (100 steps) of a learned-variance Gaussian on dequantised digits."""
    workdir = tmp_path_factory.mktemp("evaluate") / "dequantized"
    config = tests_train.tiny_digits(**{
        "run.num_steps": 100, "run.steps_per_dispatch": 50, "run.log_every": 50,
        "run.eval_every": 100, "run.checkpoint_every": 100,
        "model.likelihood": "gaussian_learned", "data.binarization": "none",
        "data.dequantize": True})
    train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    return workdir


@pytest.mark.slow
def test_evaluate_workdir_scores_a_dequantized_run_as_a_model_of_the_levels(
        trained_dequantized_digits):
    workdir = trained_dequantized_digits
    evaluate.evaluate_workdir(workdir, num_importance_samples=50, chunk_size=25,
                              split="validation", write_plots=False, devices=jax.devices()[:1])
    keys = tuple(k for k in EVAL_KEYS if k != "binarization_seed") + (
        "dequantization_seed", "dequantization_offset_nats")
    result = check_eval_json(workdir, num_examples=150, num_importance_samples=50, step=100,
                             latent_dims=(8,), keys=keys)
    # 8 x 8 digits of L = 17 levels: log P(k) >= log p(y) - D log L (Theis et al. 2016), so
    # bits/dim = (-log p(y) + D ln L) / (D ln 2) = -log p(y) / (D ln 2) + log2 17.
    num_dims, offset_nats = 64, 64 * math.log(17)
    assert result["dequantization_offset_nats"] == pytest.approx(offset_nats, rel=1e-12)
    assert result["bits_per_dim"] == pytest.approx(result["nll_nats"] / (num_dims * math.log(2)),
                                                   rel=1e-12)
    assert result["elbo_nats"] == pytest.approx(-result["recon_nats"] - result["kl_nats"],
                                                abs=1e-3)
    # The footing of training's validation pass: the ELBO of y = (k + u) / 17 on the same
    # split with the same parameters, up to the noise of one u and one z per image.
    val_elbo_nats = tests_train.read_jsonl(workdir / "eval_metrics.jsonl")[-1]["val_elbo_nats"]
    assert result["elbo_nats"] + offset_nats == pytest.approx(
        val_elbo_nats, abs=5 * result["elbo_stderr_nats"])


# ---------------------------------------------------------------------------------------------
# --disentanglement: a run trained on the procedural sprites, scored with every metric.


@pytest.fixture(scope="module")
def sprites_run(tmp_path_factory):
    """Two steps of a small MLP VAE on the sprites (3 latents)."""
    workdir = tmp_path_factory.mktemp("sprites") / "run"
    config = tests_train.load_config("sprites_disentanglement", **{
        "objective.name": "elbo", "model.encoder": "mlp", "model.decoder": "mlp",
        "model.hidden": (16,), "model.latent_dim": 3, "data.validation_size": 64,
        "run.batch_size": 16, "run.eval_batch_size": 32, "run.num_steps": 2,
        "run.log_every": 2, "run.eval_every": 2, "run.checkpoint_every": 2,
        "run.num_image_examples": 4})
    train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    return workdir


def test_the_disentanglement_evaluation_scores_the_posterior_means(sprites_run, tmp_path):
    out = tmp_path / "out"
    result = evaluate.evaluate_workdir(
        sprites_run, num_importance_samples=2, max_examples=32, devices=jax.devices()[:1],
        out_dir=out, disentanglement=True, disentanglement_num_train=200,
        disentanglement_num_eval=100)
    scores = json.loads((out / evaluate.DISENTANGLEMENT_JSON).read_text())
    assert json.loads((out / evaluate.EVAL_JSON).read_text())["disentanglement"] == (
        scores["metrics"]) == result["disentanglement"]
    assert set(scores["metrics"]) == {
        "mig", "modularity", "explicitness_train", "explicitness_test", "sap",
        "dci_disentanglement", "dci_completeness", "dci_informativeness_train",
        "dci_informativeness_test", "beta_vae_train_accuracy", "beta_vae_eval_accuracy",
        "factor_vae_train_accuracy", "factor_vae_eval_accuracy", "factor_vae_num_active_dims"}
    for name, value in scores["metrics"].items():
        assert math.isfinite(value) and (name == "factor_vae_num_active_dims" or
                                         0.0 <= value <= 1.0), (name, value)
    assert [c["dim"] for c in scores["codes"]] == [0, 1, 2]
    assert {c["factor"] for c in scores["codes"]} <= set(ground_truth.Sprites.factor_names)
    assert (scores["num_train"], scores["num_eval"]) == (200, 100)
    assert (out / "plots" / "traversals.png").is_file()

    # The codes are the posterior means of the images' intensities, recomputed here in float64
    # from the restored parameters (dense layers and ReLU of the MLP encoder).
    config = evaluate.load_run_config(sprites_run)
    vae = train.make_model(config, (64, 64, 1))
    params, _ = evaluate.restore_eval_params(config, sprites_run, vae, (64, 64, 1))
    images = ground_truth.Sprites().images_from_factors(
        ground_truth.Sprites().sample_factors(5, np.random.default_rng(0)))
    enc = jax.tree.map(lambda a: np.asarray(a, np.float64), params["encoder"]["params"])
    h = np.maximum(images.reshape(5, -1) @ enc["hidden_0"]["kernel"] + enc["hidden_0"]["bias"],
                   0.0)
    want = h @ enc["mean"]["kernel"] + enc["mean"]["bias"]
    got = evaluate.representation_function(vae, params, 1.0)(images)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_disentanglement_of_a_run_without_known_factors_is_refused_first(two_checkpoint_run,
                                                                         tmp_path):
    workdir, _, _ = two_checkpoint_run
    with pytest.raises(ValueError, match="needs a run trained on data with known factors.*"
                                         "'digits'"):
        evaluate.evaluate_workdir(workdir, out_dir=tmp_path / "out", disentanglement=True)
    assert not (tmp_path / "out").exists()
