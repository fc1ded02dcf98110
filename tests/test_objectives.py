"""Tests for vae_jax.objectives against float64 numpy references written from the papers.

The references loop over examples, components and dimensions in float64 with the formulas as
the papers state them (Chen et al. 2018 appendix C for beta-TC, Kumar et al. 2018 Sec. 3 for
DIP, Gretton et al. 2012 eq. 3 for MMD); the code under test runs in float32. Multi-device
checks run under `jax.shard_map` on the fake CPU devices of tests/conftest.py.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax.sharding import PartitionSpec as P

from vae_jax import likelihoods, models, objectives, parallel, posteriors, priors
from vae_jax import model as model_lib

LOG_2PI = math.log(2.0 * math.pi)


def _batch(seed, batch=8, latent=3, spread=1.0):
    """float32 (z, mean, logvar) [B, Z] with z ~ q(z|x) drawn by numpy."""
    rng = np.random.default_rng(seed)
    mean = spread * rng.normal(size=(batch, latent))
    logvar = rng.uniform(-1.5, 0.5, size=(batch, latent))
    z = mean + np.exp(0.5 * logvar) * rng.normal(size=(batch, latent))
    return tuple(a.astype(np.float32) for a in (z, mean, logvar))


# ---------------------------------------------------------------------------------------------
# float64 references.


def _log_normal_ref(x, mean, logvar):
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 / math.exp(logvar))


def _logsumexp_ref(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _weights_ref(batch, dataset_size, estimator):
    """w[i, m]: the weight of q(z_i | x_m) in the estimate of q(z_i), from the strata.

    MWS (Chen et al. 2018, appendix C.1): 1 / (N M) for every member of the batch.
    MSS (appendix C.2): the own component stands for itself (1/N); the other M = B - 1 members
    are one draw from each of M strata partitioning the other N - 1 examples: M - 1 strata of
    N/M examples and one leftover stratum of N - 1 - (M - 1) N/M = (N - M)/M examples, here
    drawn by member (i + 1) mod B. A draw stands for its stratum: weight = stratum size / N.
    """
    n, m = float(dataset_size), batch - 1
    w = np.empty((batch, batch))
    for i in range(batch):
        for j in range(batch):
            if estimator == "mws":
                w[i, j] = 1.0 / (n * batch)
            elif j == i:
                w[i, j] = 1.0 / n
            elif j == (i + 1) % batch:
                w[i, j] = (n - 1.0 - (m - 1) * n / m) / n
            else:
                w[i, j] = (n / m) / n
    return w


def _tc_ref(z, mean, logvar, dataset_size, estimator):
    z, mean, logvar = (np.asarray(a, np.float64) for a in (z, mean, logvar))
    batch, latent = z.shape
    w = _weights_ref(batch, dataset_size, estimator)
    out = {k: np.zeros(batch) for k in ("log_qz", "log_prod_qzj", "log_qz_given_x", "log_pz")}
    for b in range(batch):
        joint = []
        for m in range(batch):
            log_q = sum(_log_normal_ref(z[b, j], mean[m, j], logvar[m, j]) for j in range(latent))
            joint.append(math.log(w[b, m]) + log_q)
        out["log_qz"][b] = _logsumexp_ref(joint)
        out["log_prod_qzj"][b] = sum(
            _logsumexp_ref([math.log(w[b, m]) + _log_normal_ref(z[b, j], mean[m, j], logvar[m, j])
                            for m in range(batch)])
            for j in range(latent))
        out["log_qz_given_x"][b] = sum(
            _log_normal_ref(z[b, j], mean[b, j], logvar[b, j]) for j in range(latent))
        out["log_pz"][b] = sum(_log_normal_ref(z[b, j], 0.0, 0.0) for j in range(latent))
    out["mutual_info"] = out["log_qz_given_x"] - out["log_qz"]
    out["total_correlation"] = out["log_qz"] - out["log_prod_qzj"]
    out["dimwise_kl"] = out["log_prod_qzj"] - out["log_pz"]
    return out


def _dip_ref(mean, logvar, kind, lambda_od, lambda_d):
    """Kumar et al. 2018, Sec. 3; covariances over the batch with 1/B (disentanglement_lib)."""
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    batch, latent = mean.shape
    mu = mean.mean(0)
    cov = np.zeros((latent, latent))
    for i in range(latent):
        for j in range(latent):
            cov[i, j] = sum((mean[b, i] - mu[i]) * (mean[b, j] - mu[j]) for b in range(batch))
            if kind == "ii" and i == j:
                cov[i, j] += sum(math.exp(logvar[b, i]) for b in range(batch))
    cov /= batch
    off = sum(cov[i, j] ** 2 for i in range(latent) for j in range(latent) if i != j)
    diag = sum((cov[i, i] - 1.0) ** 2 for i in range(latent))
    return lambda_od * off + lambda_d * diag, cov


def _kernel_ref(x, y, kernel, scale):
    d2 = float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return math.exp(-d2 / (2.0 * scale)) if kernel == "rbf" else scale / (scale + d2)


def _mmd_ref(x, y, kernel, scale=None):
    """Gretton et al. 2012, eq. 3: the unbiased MMD^2 U-statistic."""
    n, m, latent = len(x), len(y), x.shape[1]
    scale = 2.0 * latent if scale is None else scale
    kxx = sum(_kernel_ref(x[i], x[j], kernel, scale)
              for i in range(n) for j in range(n) if i != j)
    kyy = sum(_kernel_ref(y[i], y[j], kernel, scale)
              for i in range(m) for j in range(m) if i != j)
    kxy = sum(_kernel_ref(x[i], y[j], kernel, scale) for i in range(n) for j in range(m))
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)


# ---------------------------------------------------------------------------------------------
# beta-TC decomposition.

PER_EXAMPLE_KEYS = ("log_qz", "log_prod_qzj", "log_qz_given_x", "log_pz", "mutual_info",
                    "total_correlation", "dimwise_kl", "kl_mc")
MEAN_KEYS = ("mutual_info", "total_correlation", "dimwise_kl", "kl_mc")


class TCDecompositionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(estimator=("mws", "mss"), shape=((6, 3), (12, 4)))
    def test_matches_float64_reference(self, estimator, shape):
        batch, latent = shape
        z, mean, logvar = _batch(batch + latent, batch=batch, latent=latent)
        fn = self.variant(functools.partial(objectives.tc_decomposition, dataset_size=50,
                                            estimator=estimator))
        got = fn(z, mean, logvar)
        ref = _tc_ref(z, mean, logvar, 50, estimator)
        chex.assert_tree_all_finite(got)
        self.assertEqual(set(got), {f"{k}_b" for k in PER_EXAMPLE_KEYS} | set(MEAN_KEYS))
        chex.assert_shape([got[f"{k}_b"] for k in PER_EXAMPLE_KEYS], (batch,))
        chex.assert_shape([got[k] for k in MEAN_KEYS], ())
        for key in ref:
            np.testing.assert_allclose(got[f"{key}_b"], ref[key], rtol=1e-5, atol=1e-4,
                                       err_msg=key)
            if key in MEAN_KEYS:
                np.testing.assert_allclose(got[key], ref[key].mean(), rtol=1e-5, atol=1e-4)

    @parameterized.parameters("mws", "mss")
    def test_terms_sum_to_the_monte_carlo_kl(self, estimator):
        z, mean, logvar = _batch(1, batch=10, latent=4)
        got = objectives.tc_decomposition(z, mean, logvar, dataset_size=1000,
                                          estimator=estimator)
        kl_ref = np.array([sum(_log_normal_ref(z[b, j], mean[b, j], logvar[b, j])
                               - _log_normal_ref(z[b, j], 0.0, 0.0) for j in range(4))
                           for b in range(10)])
        terms_b = got["mutual_info_b"] + got["total_correlation_b"] + got["dimwise_kl_b"]
        np.testing.assert_allclose(terms_b, kl_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(terms_b, got["kl_mc_b"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["mutual_info"] + got["total_correlation"]
                                   + got["dimwise_kl"], kl_ref.mean(), rtol=1e-5, atol=1e-5)

    def test_mss_weights_rows_sum_to_one(self):
        # Independent of the code under test: the strata of the reference cover the data set.
        for batch, n in ((2, 2), (6, 50), (12, 12)):
            np.testing.assert_allclose(_weights_ref(batch, n, "mss").sum(1), 1.0, rtol=1e-12)

    def test_mss_is_exact_for_identical_and_for_separated_posteriors(self):
        # q(z) = 1/N sum_n q(z|x_n) is known in two limits: all N posteriors equal gives
        # q(z) = q(z|x); posteriors too far apart to overlap give q(z_b) = q(z_b|x_b) / N.
        # MSS is exact in both; MWS is low by log N and by log B.
        n, batch, latent = 1000, 8, 3
        z, mean, logvar = _batch(2, batch=batch, latent=latent)
        same_mean, same_logvar = np.zeros_like(mean), np.zeros_like(logvar)
        z_same = np.asarray(np.random.default_rng(3).normal(size=mean.shape), np.float32)
        far_mean = (mean + 100.0 * np.arange(batch)[:, None]).astype(np.float32)
        far_z = (z + 100.0 * np.arange(batch)[:, None]).astype(np.float32)
        # (z, mean, logvar, the exact MI term log q(z_b|x_b) - log q(z_b), MWS's excess)
        cases = {"identical": (z_same, same_mean, same_logvar, 0.0, math.log(n)),
                 "separated": (far_z, far_mean, logvar, math.log(n), math.log(batch))}
        for name, (zz, mm, lv, mutual_info, mws_excess) in cases.items():
            mss = objectives.tc_decomposition(zz, mm, lv, dataset_size=n, estimator="mss")
            mws = objectives.tc_decomposition(zz, mm, lv, dataset_size=n, estimator="mws")
            np.testing.assert_allclose(mss["mutual_info_b"], mutual_info, atol=2e-5,
                                       err_msg=name)
            np.testing.assert_allclose(mws["mutual_info_b"], mutual_info + mws_excess,
                                       atol=2e-5, err_msg=name)
        # Identical posteriors are independent across dimensions: no total correlation either.
        same = objectives.tc_decomposition(z_same, same_mean, same_logvar, dataset_size=n,
                                           estimator="mss")
        np.testing.assert_allclose(same["total_correlation_b"], 0.0, atol=2e-5)

    def test_gradients_are_finite(self):
        z, mean, logvar = _batch(4, batch=6, latent=3)

        def loss(mean, logvar):
            out = objectives.tc_decomposition(z, mean, logvar, dataset_size=60, estimator="mss")
            return out["mutual_info"] + 5.0 * out["total_correlation"] + out["dimwise_kl"]

        chex.assert_tree_all_finite(jax.jit(jax.grad(loss, argnums=(0, 1)))(mean, logvar))

    def test_invalid_arguments_are_clear_errors(self):
        z, mean, logvar = _batch(5, batch=6, latent=3)
        with self.assertRaisesRegex(ValueError, "estimator must be one of"):
            objectives.tc_decomposition(z, mean, logvar, dataset_size=60, estimator="mss2")
        with self.assertRaisesRegex(ValueError, "dataset_size must be .* >= the global batch"):
            objectives.tc_decomposition(z, mean, logvar, dataset_size=5)
        with self.assertRaisesRegex(ValueError, "batch of >= 2"):
            objectives.tc_decomposition(z[:1], mean[:1], logvar[:1], dataset_size=5)


# ---------------------------------------------------------------------------------------------
# DIP.


class DIPRegulariserTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(kind=("i", "ii"), shape=((6, 3), (12, 4)))
    def test_matches_float64_reference(self, kind, shape):
        batch, latent = shape
        _, mean, logvar = _batch(10 + batch + latent, batch=batch, latent=latent)
        mean = mean + 3.0  # an offset mean: the covariance must be centred
        fn = self.variant(functools.partial(objectives.dip_regulariser, kind=kind,
                                            lambda_od=2.0, lambda_d=7.0))
        penalty, metrics = fn(mean, logvar)
        ref_penalty, ref_cov = _dip_ref(mean, logvar, kind, 2.0, 7.0)
        chex.assert_shape(penalty, ())
        chex.assert_shape(metrics["cov_zz"], (latent, latent))
        np.testing.assert_allclose(metrics["cov_zz"], ref_cov, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(penalty, ref_penalty, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            2.0 * metrics["dip_off_diagonal"] + 7.0 * metrics["dip_diagonal"], penalty,
            rtol=1e-6)

    @parameterized.parameters("i", "ii")
    def test_zero_when_the_covariance_is_the_identity(self, kind):
        # Means at +-1 on one axis at a time (mean zero, covariance I for "i"); for "ii" the
        # same means scaled by sqrt(1/2) with variances 1/2.
        latent = 3
        mean = np.concatenate([np.eye(latent), -np.eye(latent)]) * math.sqrt(latent)
        logvar = np.full_like(mean, -50.0)
        if kind == "ii":
            mean, logvar = mean * math.sqrt(0.5), np.full_like(mean, math.log(0.5))
        penalty, metrics = objectives.dip_regulariser(
            jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32), kind=kind,
            lambda_od=10.0, lambda_d=10.0)
        np.testing.assert_allclose(metrics["cov_zz"], np.eye(latent), atol=1e-6)
        np.testing.assert_allclose(penalty, 0.0, atol=1e-10)

    def test_invalid_kind(self):
        _, mean, logvar = _batch(0)
        with self.assertRaisesRegex(ValueError, "kind must be one of"):
            objectives.dip_regulariser(mean, logvar, kind="iii", lambda_od=1.0, lambda_d=1.0)


# ---------------------------------------------------------------------------------------------
# MMD.


class MMDTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(kernel=("rbf", "imq"), case=((6, 6, 3, None), (12, 8, 4, 0.7)))
    def test_matches_float64_reference(self, kernel, case):
        *sizes, latent, scale = case
        rng = np.random.default_rng(sizes[0] + latent)
        x = rng.normal(0.3, 1.2, size=(sizes[0], latent)).astype(np.float32)
        y = rng.normal(size=(sizes[1], latent)).astype(np.float32)
        got = self.variant(functools.partial(objectives.mmd, kernel=kernel, scale=scale))(x, y)
        chex.assert_shape(got, ())
        np.testing.assert_allclose(got, _mmd_ref(x, y, kernel, scale), rtol=1e-5, atol=1e-6)

    @parameterized.parameters("rbf", "imq")
    def test_near_zero_for_one_distribution_and_growing_with_a_mean_shift(self, kernel):
        rng = np.random.default_rng(7)
        x = rng.normal(size=(256, 2)).astype(np.float32)
        y = rng.normal(size=(256, 2)).astype(np.float32)
        shifts = np.array([0.0, 0.25, 0.5, 1.0, 2.0])
        values = [float(objectives.mmd(x + shift, y, kernel=kernel)) for shift in shifts]
        # Under the null the U-statistic's standard deviation is O(1/n) (n = 256).
        self.assertLess(abs(values[0]), 0.005)
        self.assertTrue(np.all(np.diff(values) > 0), values)
        if kernel == "rbf":
            # Population MMD^2 of N(0, I) and N(d, I) for exp(-|x - y|^2 / (2 s)), s = 2 Z = 4:
            # 2 (s / (s + 2))^(Z/2) (1 - exp(-|d|^2 / (2 (s + 2)))). Monte Carlo tolerance.
            population = 2.0 * (4.0 / 6.0) * (1.0 - np.exp(-2.0 * shifts**2 / 12.0))
            np.testing.assert_allclose(values, population, atol=0.04)
        # A sample against itself: the U-statistic is -(2/n)(1 - mean_{i != j} k(x_i, x_j)).
        n = 12
        same = x[:n]
        off = np.mean([_kernel_ref(same[i], same[j], kernel, 4.0)
                       for i in range(n) for j in range(n) if i != j])
        np.testing.assert_allclose(objectives.mmd(same, same, kernel=kernel),
                                   -(2.0 / n) * (1.0 - off), rtol=1e-5, atol=1e-6)

    def test_invalid_arguments(self):
        x = np.zeros((4, 3), np.float32)
        with self.assertRaisesRegex(ValueError, "kernel must be one of"):
            objectives.mmd(x, x, kernel="laplace")
        with self.assertRaisesRegex(ValueError, ">= 2 samples"):
            objectives.mmd(x[:1], x, kernel="rbf")


# ---------------------------------------------------------------------------------------------
# Capacity.


def test_capacity_rises_linearly_then_stays():
    got = [float(objectives.capacity_target(s, max_capacity=25.0, num_steps=1000))
           for s in (0, 250, 1000, 5000)]
    np.testing.assert_allclose(got, [0.0, 6.25, 25.0, 25.0], rtol=1e-6)
    jitted = jax.jit(functools.partial(objectives.capacity_target, max_capacity=25.0,
                                       num_steps=1000))
    np.testing.assert_allclose(jitted(jnp.asarray(500)), 12.5, rtol=1e-6)
    np.testing.assert_allclose(objectives.capacity_target(3, max_capacity=2.0, num_steps=0),
                               2.0)


# ---------------------------------------------------------------------------------------------
# FactorVAE (Kim & Mnih 2018): the discriminator, its loss and the density-ratio TC.


def _discriminator_ref(disc_params, z_bz, slope=0.2):
    """The discriminator's logits [B, 2] in float64: leaky-ReLU dense layers, a linear head."""
    layers = disc_params["params"]
    h = np.asarray(z_bz, np.float64)
    hidden = sorted((k for k in layers if k.startswith("hidden_")), key=lambda k: int(k[7:]))
    for name in hidden:
        h = h @ np.asarray(layers[name]["kernel"], np.float64) + np.asarray(
            layers[name]["bias"], np.float64)
        h = np.where(h > 0, h, slope * h)
    return h @ np.asarray(layers["logits"]["kernel"], np.float64) + np.asarray(
        layers["logits"]["bias"], np.float64)


def _factor_vae_terms_ref(disc_params, z_bz, permuted_bz):
    """(TC, discriminator loss, accuracy) in float64 from the paper's formulas, per example."""
    tc_terms, loss_terms, correct = [], [], []
    for z, z_perm in zip(z_bz, permuted_bz):
        l_q = _discriminator_ref(disc_params, z[None])[0]
        l_p = _discriminator_ref(disc_params, z_perm[None])[0]
        d_q = math.exp(l_q[0]) / (math.exp(l_q[0]) + math.exp(l_q[1]))  # D(z)
        d_p = math.exp(l_p[0]) / (math.exp(l_p[0]) + math.exp(l_p[1]))  # D(z~)
        tc_terms.append(math.log(d_q / (1.0 - d_q)))
        loss_terms.append(-0.5 * (math.log(d_q) + math.log(1.0 - d_p)))
        correct += [d_q > 0.5, d_p <= 0.5]
    return np.mean(tc_terms), np.mean(loss_terms), np.mean(correct)


def _disc_setup(seed=21, batch=8, latent=3, hidden=(7, 5)):
    disc = models.Discriminator(hidden=hidden)
    z, _, _ = _batch(seed, batch=batch, latent=latent)
    disc_params = disc.init(jax.random.key(seed), jnp.zeros((1, latent)))
    return disc, disc_params, z


def test_permute_dims_permutes_each_dimension_over_the_batch():
    z = np.arange(40, dtype=np.float32).reshape(10, 4) * np.array([1, 100, 1e4, 1e6], np.float32)
    out = np.asarray(objectives.permute_dims(jnp.asarray(z), jax.random.key(0)))
    for j in range(4):
        np.testing.assert_array_equal(np.sort(out[:, j]), np.sort(z[:, j]))
    # Independent permutations: the rows are mixed, not moved whole.
    rows = {tuple(r) for r in z}
    assert sum(tuple(r) in rows for r in out) < 10
    assert not np.array_equal(out[:, 0], z[:, 0]) and not np.array_equal(out[:, 1], out[:, 2])


def test_density_ratio_tc_and_discriminator_loss_match_float64():
    disc, disc_params, z = _disc_setup()
    permuted = np.asarray(objectives.permute_dims(jnp.asarray(z), jax.random.key(1)))
    logits_q = disc.apply(disc_params, z)
    logits_p = disc.apply(disc_params, permuted)
    np.testing.assert_allclose(logits_q, _discriminator_ref(disc_params, z), rtol=1e-5,
                               atol=1e-6)
    tc_ref, loss_ref, accuracy_ref = _factor_vae_terms_ref(disc_params, z, permuted)
    np.testing.assert_allclose(objectives.density_ratio_tc(logits_q), tc_ref, rtol=1e-5,
                               atol=1e-6)
    loss, accuracy = objectives.discriminator_loss(logits_q, logits_p)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    np.testing.assert_allclose(accuracy, accuracy_ref)


def test_factor_vae_sends_each_gradient_to_its_own_network():
    # The summed value's gradient is the VAE loss's for the model (the discriminator fixed)
    # and the discriminator loss's for the discriminator (z fixed).
    vae = model_lib.VAE(
        encoder=models.MLPEncoder(3, hidden=(6,), activation="tanh"),
        decoder=models.MLPDecoder((2, 2, 1), hidden=(6,), activation="tanh"),
        likelihood=likelihoods.make_likelihood("bernoulli"),
        prior=priors.make_prior("standard_normal"),
        posterior=posteriors.make_posterior("diagonal"), latent_dims=(3,))
    settings = objectives.Settings(name="factor_vae", factor_gamma=7.0,
                                   discriminator_hidden=(5, 4))
    params = vae.init(jax.random.key(0), (2, 2, 1))
    params["objective"] = objectives.init_objective_params(settings, jax.random.key(1), vae)
    x = (np.random.default_rng(2).uniform(size=(6, 2, 2, 1)) > 0.5).astype(np.float32)
    key = jax.random.key(3)
    loss_fn = objectives.make_loss_fn(settings, vae)
    grads, metrics = jax.grad(lambda p: loss_fn(p, x, key, beta=0.5), has_aux=True)(params)

    disc = models.Discriminator(hidden=(5, 4))

    def vae_part(model_params):
        elbo = objectives.make_loss_fn(objectives.Settings(name="elbo"), vae)
        loss, m = elbo(model_params, x, key, beta=0.5)
        draw = vae.log_weights(model_params, x, key, num_samples=1)
        logits = disc.apply(params["objective"]["discriminator"], draw.z[0][0])
        return loss + 7.0 * jnp.mean(logits[:, 0] - logits[:, 1])

    def disc_part(disc_params):
        z = vae.log_weights(params, x, key, num_samples=1).z[0][0]
        z_perm = objectives.permute_dims(z, jax.random.fold_in(key, 2**31 - 2))
        return objectives.discriminator_loss(disc.apply(disc_params, z),
                                             disc.apply(disc_params, z_perm))[0]

    model_params = {k: v for k, v in params.items() if k != "objective"}
    want_model = jax.grad(vae_part)(model_params)
    want_disc = jax.grad(disc_part)(params["objective"]["discriminator"])
    chex.assert_trees_all_close({k: grads[k] for k in model_params}, want_model, rtol=1e-5,
                                atol=1e-6)
    chex.assert_trees_all_close(grads["objective"]["discriminator"], want_disc, rtol=1e-5,
                                atol=1e-6)
    assert float(metrics["loss"]) == pytest.approx(float(vae_part(model_params)), rel=1e-5)
    assert set(metrics) >= {"total_correlation_nats", "discriminator_loss",
                            "discriminator_accuracy", "recon_nats", "kl_nats"}


# ---------------------------------------------------------------------------------------------
# The global batch under shard_map.

CASES = {
    "permute_dims": lambda z, mean, logvar, prior, axis_name=None: objectives.permute_dims(
        z, jax.random.key(5), axis_name=axis_name),
    "tc_mws": functools.partial(objectives.tc_decomposition, dataset_size=100, estimator="mws"),
    "tc_mss": functools.partial(objectives.tc_decomposition, dataset_size=100, estimator="mss"),
    "dip_i": lambda z, mean, logvar, prior, axis_name=None: objectives.dip_regulariser(
        mean, logvar, kind="i", lambda_od=1.0, lambda_d=10.0, axis_name=axis_name),
    "dip_ii": lambda z, mean, logvar, prior, axis_name=None: objectives.dip_regulariser(
        mean, logvar, kind="ii", lambda_od=1.0, lambda_d=1.0, axis_name=axis_name),
    "mmd_rbf": lambda z, mean, logvar, prior, axis_name=None: objectives.mmd(
        z, prior, kernel="rbf", axis_name=axis_name),
    "mmd_imq": lambda z, mean, logvar, prior, axis_name=None: objectives.mmd(
        z, prior, kernel="imq", scale=3.0, axis_name=axis_name),
}


def _call(name, z, mean, logvar, prior, axis_name=None):
    fn = CASES[name]
    if name.startswith("tc"):
        return fn(z, mean, logvar, axis_name=axis_name)
    return fn(z, mean, logvar, prior, axis_name=axis_name)


def _out_specs(value):
    """Per-example [B] outputs are split over the devices; everything else is replicated."""
    if isinstance(value, dict):
        return {k: P(parallel.AXIS) if k.endswith("_b") else P() for k in value}
    return jax.tree.map(lambda _: P(), value)


@pytest.mark.parametrize("num_devices", [1, 4, 8])
@pytest.mark.parametrize("name", sorted(CASES))
def test_values_do_not_depend_on_the_device_count(name, num_devices):
    z, mean, logvar = _batch(11, batch=16, latent=3)
    prior = np.random.default_rng(12).normal(size=(16, 3)).astype(np.float32)
    single = jax.jit(functools.partial(_call, name))(z, mean, logvar, prior)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    program = jax.jit(parallel.data_parallel(
        functools.partial(_call, name, axis_name=parallel.AXIS), mesh,
        in_specs=(P(parallel.AXIS),) * 4,
        out_specs=P(parallel.AXIS) if name == "permute_dims" else _out_specs(single)))
    sharded = program(*(parallel.shard_rows(a, mesh) for a in (z, mean, logvar, prior)))
    chex.assert_trees_all_close(sharded, single, rtol=1e-5, atol=1e-5)


def _scalar_objective(name, params, x, eps, prior, axis_name=None):
    """A scalar built from each function, through a linear encoder with replicated params."""
    mean = x @ params["w_mean"]
    logvar = 0.3 * jnp.tanh(x @ params["w_logvar"])
    z = mean + jnp.exp(0.5 * logvar) * eps
    out = _call(name, z, mean, logvar, prior, axis_name=axis_name)
    if isinstance(out, dict):
        return out["mutual_info"] + 4.0 * out["total_correlation"] + out["dimwise_kl"]
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", ["tc_mss", "dip_ii", "mmd_rbf"])
def test_mean_of_device_gradients_is_the_single_device_gradient(name):
    # The project's data-parallel step differentiates per device and averages the gradients
    # (tests/test_losses.py); with all_gather/psum inside, that must give the global gradient.
    rng = np.random.default_rng(13)
    params = {k: rng.normal(size=(5, 3)).astype(np.float32) for k in ("w_mean", "w_logvar")}
    x, eps, prior = (rng.normal(size=(16, d)).astype(np.float32) for d in (5, 3, 3))
    single = jax.jit(jax.grad(functools.partial(_scalar_objective, name)))(params, x, eps, prior)
    mesh = parallel.make_mesh(jax.devices()[:4])
    grad_fn = jax.grad(functools.partial(_scalar_objective, name, axis_name=parallel.AXIS))

    def per_device(params, x, eps, prior):
        return jax.lax.pmean(grad_fn(params, x, eps, prior), parallel.AXIS)

    program = jax.jit(parallel.data_parallel(
        per_device, mesh, in_specs=(P(),) + (P(parallel.AXIS),) * 3, out_specs=P()))
    sharded = program(parallel.replicate(params, mesh),
                      *(parallel.shard_rows(a, mesh) for a in (x, eps, prior)))
    chex.assert_trees_all_close(sharded, single, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    absltest.main()
