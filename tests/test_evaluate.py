"""Importance-sampled log-likelihood against the closed form of probabilistic PCA.

The model is a linear-Gaussian VAE: p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2 I), so
p(x) = N(b, W W^T + sigma^2 I) exactly (Tipping & Bishop 1999), evaluated in float64 with
scipy. The encoder is deliberately imperfect (the exact posterior mean, but the diagonal of
the posterior covariance inflated by `_VAR_INFLATION`), so the K = 1 bound is not tight.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae_jax import evaluate, parallel

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


ENCODER = _LinearEncoder()
DECODER = _LinearDecoder()


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
    return jax.jit(functools.partial(
        evaluate.importance_sampled_log_likelihood, encoder=ENCODER, decoder=DECODER,
        likelihood="gaussian", num_samples=num_samples, chunk_size=chunk_size,
        gaussian_logvar=math.log(_NOISE_VAR)))


def _repeated(ppca, num_samples, chunk_size, repeats):
    """[R, B] estimates: R independent copies of every example, told apart by example id."""
    params, x, _ = ppca
    x_rb = np.tile(x, (repeats, 1, 1, 1))
    got = _estimator(num_samples, chunk_size)(
        params, x_rb, jax.random.key(1), example_ids=jnp.arange(repeats * _BATCH))
    return np.asarray(got, np.float64).reshape(repeats, _BATCH)


def test_modules_match_the_ppca_parameters(ppca):
    params, _, _ = ppca
    assert jax.tree.structure(params["encoder"]) == jax.tree.structure(
        ENCODER.init(jax.random.key(0), jnp.zeros((1,) + _IMAGE_SHAPE)))
    assert jax.tree.structure(params["decoder"]) == jax.tree.structure(
        DECODER.init(jax.random.key(0), jnp.zeros((1, _LATENT_DIM))))


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
    got = [np.asarray(_estimator(500, c)(params, x, key)) for c in (50, 100, 500)]
    np.testing.assert_allclose(got[0], got[2], rtol=1e-4)
    np.testing.assert_allclose(got[1], got[2], rtol=1e-4)


def test_one_and_eight_devices_agree(ppca):
    params, x, _ = ppca
    key = jax.random.key(4)
    example_ids = np.arange(_BATCH, dtype=np.int32)
    single = np.asarray(_estimator(200, 100)(params, x, key, example_ids=example_ids))
    for num_devices in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:num_devices])
        program = evaluate.make_nll_program(
            mesh, encoder=ENCODER, decoder=DECODER, likelihood="gaussian", num_samples=200,
            chunk_size=100, gaussian_logvar=math.log(_NOISE_VAR))
        got = program(parallel.replicate(params, mesh), parallel.shard_rows(x, mesh),
                      parallel.replicate(key, mesh), parallel.shard_rows(example_ids, mesh))
        assert len(got.sharding.device_set) == num_devices
        np.testing.assert_allclose(np.asarray(got), single, rtol=1e-5)


def test_chunk_size_that_does_not_divide_k_is_a_clear_error(ppca):
    params, x, _ = ppca
    with pytest.raises(ValueError, match="num_samples=500 .* chunk_size=300"):
        evaluate.importance_sampled_log_likelihood(
            params, x, jax.random.key(0), encoder=ENCODER, decoder=DECODER,
            likelihood="gaussian", num_samples=500, chunk_size=300)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate.make_nll_program(parallel.make_mesh(), encoder=ENCODER, decoder=DECODER,
                                  likelihood="gaussian", num_samples=10, chunk_size=4)


def test_nll_summary_matches_numpy():
    log_px = np.random.default_rng(0).normal(-90.0, 5.0, size=37)
    summary = evaluate.nll_summary(jnp.asarray(log_px, jnp.float32), num_dims=784)
    nll = -log_px
    assert summary["num_examples"] == 37
    assert summary["nll_nats"] == pytest.approx(nll.mean(), rel=1e-6)
    assert summary["nll_stderr_nats"] == pytest.approx(nll.std(ddof=1) / np.sqrt(37), rel=1e-5)
    assert summary["bits_per_dim"] == pytest.approx(nll.mean() / (784 * np.log(2)), rel=1e-6)
