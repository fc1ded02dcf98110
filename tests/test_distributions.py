"""Tests for vae_jax.distributions against independent float64 numpy/scipy references.

Every reference is written out here from the textbook formula (or comes from scipy.stats /
scipy.integrate) in float64; the code under test runs in float32 unless a test says otherwise.
Monte Carlo checks use numpy's generator, not the code under test, unless they test the
sampler itself, and state their tolerance in standard errors (SE).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from scipy import integrate, special, stats

from vae_jax import distributions

# Monte Carlo tolerances are this many standard errors: a correct implementation fails a given
# check with probability ~6e-7 (and the seeds are fixed, so the tests are deterministic).
NUM_SE = 5.0


def _random_spd(rng, k, cond):
    """A k x k SPD matrix: random rotation, eigenvalues log-spaced from 1 down to 1/cond."""
    rotation, _ = np.linalg.qr(rng.normal(size=(k, k)))
    eigenvalues = np.logspace(0.0, -np.log10(cond), k)
    cov = (rotation * eigenvalues) @ rotation.T
    return 0.5 * (cov + cov.T)


def _kl_mvn_ref(mean_0, cov_0, mean_1, cov_1):
    """Textbook float64 KL(N0 || N1) with an explicit inverse and slogdet, batched over axis 0."""
    out = []
    for m0, s0, m1, s1 in zip(*(np.asarray(a, np.float64) for a in (mean_0, cov_0, mean_1, cov_1))):
        s1_inv = np.linalg.inv(s1)
        diff = m1 - m0
        out.append(0.5 * (np.trace(s1_inv @ s0) + diff @ s1_inv @ diff - len(m0)
                          + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1]))
    return np.array(out)


def _kl_univariate_ref(mean_q, logvar_q, mean_p, logvar_p):
    """KL between univariate normals via standard deviations, float64, summed over last axis."""
    mean_q, logvar_q, mean_p, logvar_p = (
        np.asarray(a, np.float64) for a in (mean_q, logvar_q, mean_p, logvar_p))
    std_q, std_p = np.exp(0.5 * logvar_q), np.exp(0.5 * logvar_p)
    kl = np.log(std_p / std_q) + (std_q**2 + (mean_q - mean_p) ** 2) / (2 * std_p**2) - 0.5
    return kl.sum(-1)


# ---------------------------------------------------------------------------------------------
# reparameterize


class ReparameterizeTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes(self):
        key = jax.random.key(0)
        mean_bz, logvar_bz = jnp.zeros((4, 3)), jnp.zeros((4, 3))
        one = self.variant(distributions.reparameterize)
        many = self.variant(functools.partial(distributions.reparameterize, num_samples=5))
        chex.assert_shape(one(key, mean_bz, logvar_bz), (4, 3))
        chex.assert_shape(many(key, mean_bz, logvar_bz), (5, 4, 3))

    def test_vmap_over_per_example_keys(self):
        keys_b = jax.random.split(jax.random.key(1), 4)
        sample = functools.partial(distributions.reparameterize, num_samples=6)
        z_bkz = jax.vmap(sample)(keys_b, jnp.zeros((4, 3)), jnp.zeros((4, 3)))
        chex.assert_shape(z_bkz, (4, 6, 3))
        # Every example and every sample gets its own noise.
        flat = np.asarray(z_bkz).reshape(24, 3)
        self.assertEqual(len(np.unique(flat[:, 0])), 24)

    def test_moments(self):
        # K = 100_000 draws per dimension: the sample mean has SE std/sqrt(K), the sample variance
        # SE ~ var * sqrt(2/K) (0.45% of var); both checked to NUM_SE standard errors.
        num = 100_000
        mean = np.array([1.0, -2.0, 0.5], np.float32)
        logvar = np.log(np.array([1.0, 4.0, 0.01], np.float32))
        z_kz = np.asarray(distributions.reparameterize(
            jax.random.key(2), jnp.asarray(mean), jnp.asarray(logvar), num_samples=num),
            np.float64)
        var = np.exp(logvar.astype(np.float64))
        np.testing.assert_array_less(np.abs(z_kz.mean(0) - mean), NUM_SE * np.sqrt(var / num))
        np.testing.assert_array_less(np.abs(z_kz.var(0) - var), NUM_SE * var * np.sqrt(2 / num))

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients(self):
        key = jax.random.key(3)
        mean = jnp.array([[0.3, -1.0, 2.0], [0.0, 0.5, -0.2]])
        logvar = jnp.array([[0.0, -2.0, 1.0], [0.7, -0.3, 3.0]])
        sample = self.variant(distributions.reparameterize)
        z = np.asarray(sample(key, mean, logvar), np.float64)
        jac_mean, jac_logvar = jax.jacobian(sample, argnums=(1, 2))(key, mean, logvar)
        chex.assert_tree_all_finite((jac_mean, jac_logvar))
        # The noise recovered from the output in float64: eps = (z - mean) / std.
        std = np.exp(0.5 * np.asarray(logvar, np.float64))
        eps = (z - np.asarray(mean, np.float64)) / std
        eye = np.eye(6).reshape(2, 3, 2, 3)
        np.testing.assert_allclose(jac_mean, eye, atol=1e-6)
        expected = eye * (0.5 * std * eps)[:, :, None, None]
        np.testing.assert_allclose(jac_logvar, expected, rtol=1e-5, atol=1e-6)

    def test_keys(self):
        mean, logvar = jnp.zeros((2, 3)), jnp.zeros((2, 3))
        first = distributions.reparameterize(jax.random.key(4), mean, logvar)
        again = distributions.reparameterize(jax.random.key(4), mean, logvar)
        other = distributions.reparameterize(jax.random.key(5), mean, logvar)
        np.testing.assert_array_equal(first, again)
        self.assertTrue(np.all(np.asarray(first) != np.asarray(other)))
        z_kz = distributions.reparameterize(jax.random.key(4), mean, logvar, num_samples=2)
        self.assertTrue(np.all(np.asarray(z_kz[0]) != np.asarray(z_kz[1])))

    def test_shape_mismatch_raises(self):
        with self.assertRaisesRegex(AssertionError, r"\(2, 3\).*\(2, 4\)"):
            distributions.reparameterize(jax.random.key(0), jnp.zeros((2, 3)), jnp.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# KL divergences


class DiagonalKLTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(10)
        self.mean_q = rng.normal(size=(5, 4)).astype(np.float32)
        self.logvar_q = rng.normal(size=(5, 4)).astype(np.float32)
        self.mean_p = rng.normal(size=(4,)).astype(np.float32)
        self.logvar_p = rng.normal(size=(4,)).astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_standard_normal_matches_reference(self):
        kl_b = self.variant(distributions.kl_standard_normal)(self.mean_q, self.logvar_q)
        chex.assert_shape(kl_b, (5,))
        zeros = np.zeros(4)
        ref = _kl_univariate_ref(self.mean_q, self.logvar_q, zeros, zeros)
        np.testing.assert_allclose(kl_b, ref, rtol=1e-5)
        self.assertTrue(np.all(np.asarray(kl_b) >= 0))
        both_general = distributions.kl_diagonal_normals(self.mean_q, self.logvar_q, 0.0, 0.0)
        np.testing.assert_allclose(kl_b, both_general, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_diagonal_matches_reference_and_broadcasts(self):
        kl_b = self.variant(distributions.kl_diagonal_normals)(
            self.mean_q, self.logvar_q, self.mean_p, self.logvar_p)
        chex.assert_shape(kl_b, (5,))
        ref = _kl_univariate_ref(self.mean_q, self.logvar_q, self.mean_p, self.logvar_p)
        np.testing.assert_allclose(kl_b, ref, rtol=1e-5)
        self.assertTrue(np.all(np.asarray(kl_b) >= 0))

    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_when_equal(self):
        zeros = jnp.zeros((3, 4))
        kl_std = self.variant(distributions.kl_standard_normal)(zeros, zeros)
        kl_diag = self.variant(distributions.kl_diagonal_normals)(
            self.mean_q, self.logvar_q, self.mean_q, self.logvar_q)
        np.testing.assert_array_equal(kl_std, np.zeros(3))
        np.testing.assert_allclose(kl_diag, np.zeros(5), atol=1e-6)

    def test_extreme_logvars_stay_finite(self):
        # exp(200) overflows float32, but only logvar differences enter the diagonal KL.
        logvar = jnp.full((2, 3), 200.0)  # [B, Z]; means [Z] broadcast
        kl_b = distributions.kl_diagonal_normals(jnp.zeros(3), logvar, jnp.ones(3), logvar)
        np.testing.assert_allclose(kl_b, np.zeros(2), atol=1e-6)

    def test_monte_carlo(self):
        # 200k numpy draws from q; the estimate's SE is std(log q - log p)/sqrt(n).
        rng = np.random.default_rng(11)
        mean_q, logvar_q = self.mean_q[0].astype(np.float64), self.logvar_q[0].astype(np.float64)
        mean_p, logvar_p = self.mean_p.astype(np.float64), self.logvar_p.astype(np.float64)
        z = mean_q + np.exp(0.5 * logvar_q) * rng.normal(size=(200_000, 4))
        log_ratio = (stats.norm.logpdf(z, mean_q, np.exp(0.5 * logvar_q)).sum(-1)
                     - stats.norm.logpdf(z, mean_p, np.exp(0.5 * logvar_p)).sum(-1))
        se = log_ratio.std() / np.sqrt(len(log_ratio))
        kl = distributions.kl_diagonal_normals(
            self.mean_q[0], self.logvar_q[0], self.mean_p, self.logvar_p)
        self.assertLess(abs(float(kl) - log_ratio.mean()), NUM_SE * se)

    def test_shape_errors(self):
        with self.assertRaisesRegex(AssertionError, r"\(2, 3\).*\(2, 4\)"):
            distributions.kl_standard_normal(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
        with self.assertRaisesRegex(ValueError, r"mean_q: \(2, 3\).*mean_p: \(4,\)"):
            distributions.kl_diagonal_normals(
                jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(4), jnp.zeros(4))


class MultivariateKLTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_reference_batched(self):
        rng = np.random.default_rng(20)
        mean_0, mean_1 = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
        cov_0, cov_1 = (np.stack([_random_spd(rng, 4, 10.0) for _ in range(3)]).astype(np.float32)
                        for _ in range(2))
        kl_b = self.variant(distributions.kl_mvn)(mean_0, cov_0, mean_1, cov_1)
        chex.assert_shape(kl_b, (3,))
        np.testing.assert_allclose(kl_b, _kl_mvn_ref(mean_0, cov_0, mean_1, cov_1), rtol=1e-4)
        self.assertTrue(np.all(np.asarray(kl_b) >= 0))

    def test_broadcasts_leading_dims(self):
        rng = np.random.default_rng(21)
        mean_0 = rng.normal(size=(5, 3)).astype(np.float32)
        cov_0 = _random_spd(rng, 3, 10.0).astype(np.float32)
        mean_1, cov_1 = np.zeros(3, np.float32), np.eye(3, dtype=np.float32)
        kl_b = distributions.kl_mvn(mean_0, cov_0, mean_1, cov_1)
        chex.assert_shape(kl_b, (5,))
        ref = _kl_mvn_ref(mean_0, np.broadcast_to(cov_0, (5, 3, 3)), np.zeros((5, 3)),
                          np.broadcast_to(np.eye(3), (5, 3, 3)))
        np.testing.assert_allclose(kl_b, ref, rtol=1e-4)

    def test_diagonal_covariances_match_diagonal_kl(self):
        rng = np.random.default_rng(22)
        mean_q, mean_p = rng.normal(size=(2, 4, 3)).astype(np.float32)
        logvar_q, logvar_p = rng.normal(size=(2, 4, 3)).astype(np.float32)
        diag = jax.vmap(jnp.diag)
        kl_full = distributions.kl_mvn(
            mean_q, diag(jnp.exp(logvar_q)), mean_p, diag(jnp.exp(logvar_p)))
        kl_diag = distributions.kl_diagonal_normals(mean_q, logvar_q, mean_p, logvar_p)
        np.testing.assert_allclose(kl_full, kl_diag, rtol=1e-5, atol=1e-6)

    def test_monte_carlo(self):
        # 100k draws from N0 with numpy; tolerance NUM_SE standard errors of the estimate.
        rng = np.random.default_rng(23)
        mean_0, mean_1 = rng.normal(size=(2, 3))
        cov_0, cov_1 = _random_spd(rng, 3, 5.0), _random_spd(rng, 3, 5.0)
        z = rng.multivariate_normal(mean_0, cov_0, size=100_000)
        log_ratio = (stats.multivariate_normal.logpdf(z, mean_0, cov_0)
                     - stats.multivariate_normal.logpdf(z, mean_1, cov_1))
        se = log_ratio.std() / np.sqrt(len(log_ratio))
        kl = distributions.kl_mvn(*(a.astype(np.float32) for a in (mean_0, cov_0, mean_1, cov_1)))
        self.assertLess(abs(float(kl) - log_ratio.mean()), NUM_SE * se)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ill_conditioned(self):
        # Eigenvalues spanning 1e6 under random rotations, in float32. The reference is float64 on
        # the same float32-rounded inputs. The KL itself has condition number ~cond(S1): rounding
        # the inputs to float32 already moves it by up to ~eps * 1e6 ~ 6e-2 relative (measured
        # ~1e-2 over 40 draws), so no float32 algorithm can promise better than a few 1e-2.
        rng = np.random.default_rng(24)
        cov_0, cov_1 = (np.stack([_random_spd(rng, 6, 1e6) for _ in range(8)]).astype(np.float32)
                        for _ in range(2))
        mean_0, mean_1 = (rng.normal(scale=0.1, size=(8, 6)).astype(np.float32) for _ in range(2))
        kl_mvn = self.variant(distributions.kl_mvn)
        kl_b = kl_mvn(mean_0, cov_0, mean_1, cov_1)
        np.testing.assert_allclose(kl_b, _kl_mvn_ref(mean_0, cov_0, mean_1, cov_1), rtol=5e-2)
        # With identical inputs the Cholesky route is exactly zero, where an explicit inverse
        # leaves tr(S^-1 S) - k ~ eps * cond ~ 1e-2 of noise.
        np.testing.assert_allclose(kl_mvn(mean_0, cov_0, mean_0, cov_0), np.zeros(8), atol=1e-4)

    def test_high_dimension_determinants_underflow_float32(self):
        # k = 64 with eigenvalues down to 1e-6: det S ~ 1e-192 is 0 in float32, so any det-based
        # formula gives inf/nan; the log-determinants from the Cholesky diagonals do not.
        rng = np.random.default_rng(25)
        cov_0, cov_1 = (_random_spd(rng, 64, 1e6).astype(np.float32) for _ in range(2))
        mean = np.zeros(64, np.float32)
        self.assertEqual(np.linalg.det(cov_0.astype(np.float64)).astype(np.float32), 0.0)
        kl = distributions.kl_mvn(mean, cov_0, mean, cov_1)
        ref = _kl_mvn_ref(mean[None], cov_0[None], mean[None], cov_1[None])[0]
        np.testing.assert_allclose(kl, ref, rtol=1e-2)

    @chex.variants(with_jit=True, without_jit=True)
    def test_tril(self):
        rng = np.random.default_rng(26)
        mean_0, mean_1 = rng.normal(size=(2, 2, 3))
        cov_0, cov_1 = (np.stack([_random_spd(rng, 3, 100.0) for _ in range(2)]) for _ in range(2))
        tril_0, tril_1 = np.linalg.cholesky(cov_0), np.linalg.cholesky(cov_1)
        # Flipping column signs keeps L L^T; junk above the diagonal must be ignored.
        tril_0 = tril_0 * np.array([1.0, -1.0, 1.0]) + np.triu(np.ones((3, 3)), 1)
        args = (a.astype(np.float32) for a in (mean_0, tril_0, mean_1, tril_1))
        kl_b = self.variant(distributions.kl_mvn_tril)(*args)
        np.testing.assert_allclose(kl_b, _kl_mvn_ref(mean_0, cov_0, mean_1, cov_1), rtol=1e-4)

    def test_shape_errors(self):
        with self.assertRaisesRegex(ValueError, r"cov_0.*\(3, 4\)"):
            distributions.kl_mvn(jnp.zeros(3), jnp.zeros((3, 4)), jnp.zeros(3), jnp.eye(3))
        with self.assertRaisesRegex(ValueError, r"mean_0: \(2,\).*scale_tril_0: \(3, 3\)"):
            distributions.kl_mvn(jnp.zeros(2), jnp.eye(3), jnp.zeros(3), jnp.eye(3))
        with self.assertRaisesRegex(ValueError, r"batch.*mean_0: \(2, 3\).*mean_1: \(5, 3\)"):
            distributions.kl_mvn(jnp.zeros((2, 3)), jnp.eye(3), jnp.zeros((5, 3)), jnp.eye(3))


class MonteCarloKLTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_is_sample_mean(self):
        rng = np.random.default_rng(30)
        log_q, log_p = rng.normal(size=(2, 7, 3)).astype(np.float32)
        kl_b = self.variant(distributions.kl_monte_carlo)(log_q, log_p)
        chex.assert_shape(kl_b, (3,))
        np.testing.assert_allclose(kl_b, (log_q.astype(np.float64) - log_p).mean(0), rtol=1e-5)

    def test_converges_to_closed_form(self):
        # The sampler and the log density under test, against the float64 closed form. K = 50k;
        # tolerance NUM_SE standard errors of the estimate.
        mean_bz = jnp.array([[0.5, -1.0], [2.0, 0.0]])
        logvar_bz = jnp.array([[0.0, -1.0], [0.5, 1.0]])
        z_kbz = distributions.reparameterize(
            jax.random.key(31), mean_bz, logvar_bz, num_samples=50_000)
        log_q_kb = distributions.gaussian_log_density(z_kbz, mean_bz, logvar_bz)
        log_p_kb = distributions.gaussian_log_density(z_kbz, 0.0, 0.0)
        kl_b = distributions.kl_monte_carlo(log_q_kb, log_p_kb)
        chex.assert_shape(kl_b, (2,))
        se_b = np.asarray(log_q_kb - log_p_kb, np.float64).std(0) / np.sqrt(50_000)
        ref_b = _kl_univariate_ref(mean_bz, logvar_bz, np.zeros(2), np.zeros(2))
        np.testing.assert_array_less(np.abs(np.asarray(kl_b) - ref_b), NUM_SE * se_b)

    def test_needs_sample_axis(self):
        with self.assertRaisesRegex(ValueError, r"log_q: \(\)"):
            distributions.kl_monte_carlo(jnp.zeros(()), jnp.zeros(()))


class GaussianLogDensityTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_scipy_and_broadcasts(self):
        rng = np.random.default_rng(40)
        z_kbz = rng.normal(size=(6, 3, 4)).astype(np.float32)
        mean_bz, logvar_bz = rng.normal(size=(2, 3, 4)).astype(np.float32)
        log_kb = self.variant(distributions.gaussian_log_density)(z_kbz, mean_bz, logvar_bz)
        chex.assert_shape(log_kb, (6, 3))
        std_bz = np.exp(0.5 * logvar_bz.astype(np.float64))
        ref = stats.norm.logpdf(z_kbz.astype(np.float64), mean_bz, std_bz)
        np.testing.assert_allclose(log_kb, ref.sum(-1), rtol=1e-5)

    def test_shape_error(self):
        with self.assertRaisesRegex(ValueError, r"z: \(2, 3\).*mean: \(4,\)"):
            distributions.gaussian_log_density(jnp.zeros((2, 3)), jnp.zeros(4), jnp.zeros(4))


# ---------------------------------------------------------------------------------------------
# Log-likelihoods


class BernoulliTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_reference(self):
        rng = np.random.default_rng(50)
        logits = rng.normal(scale=3.0, size=(4, 5, 5, 1)).astype(np.float32)
        x = rng.uniform(size=(4, 5, 5, 1)).astype(np.float32)  # fractional: cross-entropy
        x[0] = np.round(x[0])
        ll_b = self.variant(distributions.bernoulli_log_likelihood)(logits, x)
        chex.assert_shape(ll_b, (4,))
        logits64, x64 = logits.astype(np.float64), x.astype(np.float64)
        ref = x64 * np.log(special.expit(logits64)) + (1 - x64) * np.log(special.expit(-logits64))
        np.testing.assert_allclose(ll_b, ref.sum((1, 2, 3)), rtol=1e-5)

    def test_extreme_logits(self):
        logits = jnp.array([[50.0, -50.0, 50.0, -50.0]])
        x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
        ll, grad = jax.jit(jax.value_and_grad(
            lambda lg: distributions.bernoulli_log_likelihood(lg, x)[0]))(logits)
        chex.assert_tree_all_finite((ll, grad))
        np.testing.assert_allclose(ll, -100.0, rtol=1e-6)
        # d/dlogits = x - sigmoid(logits), in float64.
        np.testing.assert_allclose(grad, np.array(x) - special.expit(np.array(logits, np.float64)),
                                   atol=1e-6)

    def test_shape_errors(self):
        with self.assertRaisesRegex(AssertionError, r"\(2, 3\).*\(2, 4\)"):
            distributions.bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
        # Shapes are static, so the check also fires when the function is traced under jit.
        with self.assertRaisesRegex(AssertionError, r"\(2, 3\).*\(2, 4\)"):
            jax.jit(distributions.bernoulli_log_likelihood)(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
        with self.assertRaisesRegex(ValueError, "batch axis"):
            distributions.bernoulli_log_likelihood(jnp.zeros(()), jnp.zeros(()))


class GaussianLikelihoodTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(60)
        self.x = rng.uniform(size=(3, 4, 4, 2)).astype(np.float32)
        self.mean = rng.uniform(size=(3, 4, 4, 2)).astype(np.float32)
        self.logvar = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)

    def _ref(self, logvar):
        std = np.exp(0.5 * np.broadcast_to(np.asarray(logvar, np.float64), self.x.shape))
        return stats.norm.logpdf(self.x.astype(np.float64), self.mean, std).sum((1, 2, 3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_scipy(self):
        ll = self.variant(distributions.gaussian_log_likelihood)
        for logvar in (self.logvar, self.logvar[0], np.float32(-2.0), jnp.float32(0.5)):
            ll_b = ll(self.x, self.mean, logvar)
            chex.assert_shape(ll_b, (3,))
            np.testing.assert_allclose(ll_b, self._ref(logvar), rtol=1e-5)

    def test_fixed_variance_is_scaled_squared_error(self):
        sigma_sq, dim = 0.1, 4 * 4 * 2
        ll_b = distributions.gaussian_log_likelihood(self.x, self.mean, np.log(sigma_sq))
        sq_err = ((self.x.astype(np.float64) - self.mean) ** 2).sum((1, 2, 3))
        ref = -sq_err / (2 * sigma_sq) - 0.5 * dim * np.log(2 * np.pi * sigma_sq)
        np.testing.assert_allclose(ll_b, ref, rtol=1e-5)

    def test_shape_errors(self):
        with self.assertRaisesRegex(AssertionError, r"\(3, 4, 4, 1\), \(3, 4, 4, 2\)"):
            distributions.gaussian_log_likelihood(self.x, self.mean[..., :1], 0.0)
        with self.assertRaisesRegex(AssertionError, r"\(5,\) is not broadcastable.*\(3, 4, 4, 2\)"):
            distributions.gaussian_log_likelihood(self.x, self.mean, jnp.zeros(5))


def _cb_log_norm_ref(eta):
    """float64 log C(eta) by quadrature: 1/C = int_0^1 lambda^x (1 - lambda)^(1 - x) dx."""
    if abs(eta) > 5.0:  # closed form, no cancellation in float64 this far from 0
        return np.log(abs(eta) / np.tanh(abs(eta) / 2))
    inv_c, _ = integrate.quad(lambda x: np.exp(x * eta - np.logaddexp(0.0, eta)), 0.0, 1.0,
                              epsabs=0.0, epsrel=1e-13)
    return -np.log(inv_c)


class ContinuousBernoulliTest(chex.TestCase):

    # Around 0, on both sides of the Taylor band edge |eta| = 0.1, moderate, and very large.
    ETAS = (0.0, 1e-6, -1e-4, 0.05, 0.0999999, 0.1, -0.1000001, 0.5, -3.0, 20.0, -50.0, 1e4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_quadrature_reference(self):
        rng = np.random.default_rng(70)
        eta_b1 = np.array(self.ETAS, np.float32)[:, None]
        x_b1 = rng.uniform(size=eta_b1.shape).astype(np.float32)
        ll_b = self.variant(distributions.continuous_bernoulli_log_likelihood)(eta_b1, x_b1)
        chex.assert_shape(ll_b, (len(self.ETAS),))
        eta64, x64 = eta_b1[:, 0].astype(np.float64), x_b1[:, 0].astype(np.float64)
        ref = (x64 * eta64 - np.logaddexp(0.0, eta64)
               + np.array([_cb_log_norm_ref(e) for e in eta64]))
        np.testing.assert_allclose(ll_b, ref, rtol=1e-6, atol=2e-6)

    def test_density_integrates_to_one(self):
        # Simpson's rule on 4001 points; the peak at eta = +-50 has width 1/50 = 80 grid steps.
        x_n = np.linspace(0.0, 1.0, 4001)
        for eta in (0.0, 1e-3, -0.1, 0.1, 2.0, -7.0, 50.0, -50.0):
            x = jnp.asarray(x_n[:, None], jnp.float32)
            log_p = distributions.continuous_bernoulli_log_likelihood(jnp.full_like(x, eta), x)
            mass = integrate.simpson(np.exp(np.asarray(log_p, np.float64)), x=x_n)
            self.assertAlmostEqual(mass, 1.0, delta=1e-5, msg=f"eta={eta}")

    def test_gradients_finite_and_correct(self):
        eta = np.array(self.ETAS, np.float32)[:, None]
        x = np.full_like(eta, 0.3)
        grad_fn = jax.jit(jax.grad(
            lambda e: jnp.sum(distributions.continuous_bernoulli_log_likelihood(e, x))))
        grad = grad_fn(eta)
        chex.assert_tree_all_finite(grad)
        # d/deta = x - sigmoid(eta) + d log C / d eta, with d log C / d eta = 1/eta - 1/sinh(eta)
        # (-> 0 at eta = 0; float64 cancellation is < 1e-10 for |eta| >= 1e-6).
        eta64 = eta[:, 0].astype(np.float64)
        safe = np.where(eta64 == 0, 1.0, eta64)
        with np.errstate(over="ignore"):
            d_log_c = np.where(eta64 == 0, 0.0, 1 / safe - 1 / np.sinh(safe))
        ref = 0.3 - special.expit(eta64) + d_log_c
        np.testing.assert_allclose(grad[:, 0], ref, rtol=1e-5, atol=2e-6)

    def test_extreme_logits_finite(self):
        eta = jnp.array([[50.0, -50.0, 1e4, -1e4, 0.0]] * 3)
        x = jnp.array([[0.0] * 5, [0.5] * 5, [1.0] * 5])
        ll, grad = jax.jit(jax.value_and_grad(
            lambda e: jnp.sum(distributions.continuous_bernoulli_log_likelihood(e, x))))(eta)
        chex.assert_tree_all_finite((ll, grad))

    def test_shape_errors(self):
        with self.assertRaisesRegex(AssertionError, r"\(2, 3\).*\(2, 4\)"):
            distributions.continuous_bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def _discretized_logistic_ref(x, mean, log_scale, num_bins):
    """float64 log bin mass from scipy.stats.logistic, elementwise."""
    x, mean, scale = (np.asarray(a, np.float64) for a in (x, mean, np.exp(log_scale)))
    x, mean, scale = np.broadcast_arrays(x, mean, scale)
    half = 0.5 / (num_bins - 1)
    out = np.empty_like(x)
    for i in np.ndindex(x.shape):
        dist = stats.logistic(loc=mean[i], scale=scale[i])
        lo, hi = x[i] - half, x[i] + half
        if x[i] < half:
            out[i] = dist.logcdf(hi)
        elif x[i] > 1 - half:
            out[i] = dist.logsf(lo)
        elif x[i] <= mean[i]:  # left of the mode: the CDFs are small, subtract them in log space
            out[i] = dist.logcdf(hi) + np.log1p(-np.exp(dist.logcdf(lo) - dist.logcdf(hi)))
        else:  # right of the mode: use the survival functions
            out[i] = dist.logsf(lo) + np.log1p(-np.exp(dist.logsf(hi) - dist.logsf(lo)))
    return out


class DiscretizedLogisticTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_scipy(self):
        rng = np.random.default_rng(80)
        shape = (3, 4, 4, 1)
        x = (rng.integers(0, 256, size=shape) / 255).astype(np.float32)
        x[0, 0, :2, 0] = (0.0, 1.0)  # both edge bins
        mean = rng.uniform(size=shape).astype(np.float32)
        log_scale = rng.uniform(-5.0, -1.0, size=shape).astype(np.float32)
        ll_b = self.variant(distributions.discretized_logistic_log_likelihood)(x, mean, log_scale)
        chex.assert_shape(ll_b, (3,))
        ref = _discretized_logistic_ref(x, mean, log_scale, 256).sum((1, 2, 3))
        np.testing.assert_allclose(ll_b, ref, rtol=1e-5)

    def test_far_tails_do_not_underflow(self):
        # Bins 50-400 scales away from the mean: sigmoid(b) - sigmoid(a) is 0 or 1 - 1 = 0 in
        # float32, so a naive log would be -inf; the log-space identity is exact.
        x = np.array([[0.1, 0.9, 0.5, 0.52, 0.0, 1.0]], np.float32)
        mean = np.full_like(x, 0.5)
        log_scale = np.array([[-7.0, -7.0, -7.0, -8.0, -9.0, -9.0]], np.float32)
        ll = distributions.discretized_logistic_log_likelihood(x, mean, log_scale)
        ref = _discretized_logistic_ref(x, mean, log_scale, 256).sum()
        np.testing.assert_allclose(ll, [ref], rtol=1e-5)

    def test_bin_masses_sum_to_one(self):
        # Each row is one (mean, log_scale); every bin of a single pixel is one batch element.
        # Masses telescope only up to float32 rounding of the bin edges, an error ~1e-8 / scale
        # that is largest when a bin edge sits near the mode, so the tiny scale (e^-9) has its
        # mode mid-bin.
        mean_c = jnp.array([0.3, 0.51, 0.9, -0.2, 0.4, 1.5])
        log_scale_c = jnp.array([-3.0, -9.0, 2.0, -1.0, -2.0, -4.0])
        for num_bins in (256, 16, 2):
            x = jnp.arange(num_bins, dtype=jnp.float32)[:, None] / (num_bins - 1)

            @jax.jit
            @jax.vmap
            def total_log_mass(mean, log_scale, x=x, num_bins=num_bins):
                log_p = distributions.discretized_logistic_log_likelihood(
                    x, jnp.full_like(x, mean), log_scale, num_bins=num_bins)
                return jax.nn.logsumexp(log_p)

            np.testing.assert_allclose(total_log_mass(mean_c, log_scale_c), np.zeros(6), atol=1e-5,
                                       err_msg=f"num_bins={num_bins}")

    def test_gradients_finite(self):
        x = jnp.array([[0.0, 1.0, 0.5, 0.1, 0.9, 0.5]])
        mean = jnp.array([[0.9, 0.1, 0.5, 0.5, 0.5, -3.0]])
        log_scale = jnp.array([[-9.0, -9.0, -9.0, 5.0, -7.0, 0.0]])
        grads = jax.jit(jax.grad(
            lambda m, s: jnp.sum(distributions.discretized_logistic_log_likelihood(x, m, s)),
            argnums=(0, 1)))(mean, log_scale)
        chex.assert_tree_all_finite(grads)

    def test_errors(self):
        with self.assertRaisesRegex(AssertionError, r"\(2, 4\), \(2, 3\)"):
            distributions.discretized_logistic_log_likelihood(
                jnp.zeros((2, 3)), jnp.zeros((2, 4)), 0.0)
        with self.assertRaisesRegex(ValueError, "num_bins"):
            distributions.discretized_logistic_log_likelihood(
                jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.0, num_bins=1)


# ---------------------------------------------------------------------------------------------
# float64


class Float64Test(absltest.TestCase):
    """With x64 enabled the functions keep float64 and reach float64-level accuracy."""

    def test_kl_mvn_ill_conditioned(self):
        rng = np.random.default_rng(90)
        cov_0, cov_1 = (np.stack([_random_spd(rng, 6, 1e6) for _ in range(4)]) for _ in range(2))
        mean_0, mean_1 = rng.normal(scale=0.1, size=(2, 4, 6))
        with jax.enable_x64(True):
            kl_b = jax.jit(distributions.kl_mvn)(mean_0, cov_0, mean_1, cov_1)
            self.assertEqual(kl_b.dtype, jnp.float64)
        np.testing.assert_allclose(kl_b, _kl_mvn_ref(mean_0, cov_0, mean_1, cov_1), rtol=1e-8)

    def test_continuous_bernoulli_near_zero(self):
        eta = np.array([0.0, 1e-3, 0.0999, -0.1, 0.2])
        with jax.enable_x64(True):
            log_p = jax.jit(distributions.continuous_bernoulli_log_likelihood)(
                eta[:, None], np.zeros((5, 1)))
            self.assertEqual(log_p.dtype, jnp.float64)
        ref = -np.logaddexp(0.0, eta) + np.array([_cb_log_norm_ref(e) for e in eta])
        np.testing.assert_allclose(log_p, ref, rtol=0, atol=1e-12)


if __name__ == "__main__":
    absltest.main()


def test_kl_mvn_tril_against_standard_normal_equals_the_general_form():
    rng = np.random.default_rng(3)
    mean = rng.normal(size=(5, 4)).astype(np.float32)
    tril = np.tril(rng.normal(size=(5, 4, 4))).astype(np.float32)
    tril[:, np.arange(4), np.arange(4)] = np.exp(rng.normal(size=(5, 4)))
    identity = np.eye(4, dtype=np.float32)
    general = distributions.kl_mvn_tril(mean, tril, np.zeros_like(mean), identity)
    special = distributions.kl_mvn_tril_standard_normal(mean, tril)
    np.testing.assert_allclose(special, general, rtol=1e-5)
    cov = np.einsum("bij,bkj->bik", tril.astype(np.float64), tril.astype(np.float64))
    want = 0.5 * (np.trace(cov, axis1=1, axis2=2) + np.sum(mean.astype(np.float64) ** 2, -1)
                  - 4 - np.linalg.slogdet(cov)[1])
    np.testing.assert_allclose(special, want, rtol=1e-5)
