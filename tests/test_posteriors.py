"""Tests for vae_jax.posteriors against independent float64 numpy/scipy references.

The code under test runs in float32; every reference is computed here in numpy float64 from the
textbook formula (or scipy.stats), from the same noise eps. Monte Carlo checks draw eps with
numpy's generator and state their tolerance in standard errors (SE). The IAF is checked by the
change of variables with an autodiff Jacobian (its determinant taken in float64), by the exact
zeros its masks put in each step's Jacobian, and by its initial state. The full-covariance
posterior is checked on probabilistic PCA, whose exact posterior it can represent: there
log p(x|z) + log p(z) - log q(z|x) must equal log p(x) at every sample.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from scipy import stats

from vae_jax import distributions, posteriors

# Monte Carlo tolerances are this many standard errors: a correct implementation fails a given
# check with probability ~6e-7 (and the seeds are fixed, so the tests are deterministic).
NUM_SE = 5.0


def _encoded(rng, posterior, batch, latent_dim, extra_scale=0.5):
    """Random float32 encoder output for `posterior`: means ~N(0, 1), logvar in [-1.5, 0.5]."""
    extra_dim = posterior.extra_dim(latent_dim)
    return posteriors.Encoded(
        mean=rng.normal(size=(batch, latent_dim)).astype(np.float32),
        logvar=rng.uniform(-1.5, 0.5, size=(batch, latent_dim)).astype(np.float32),
        extra=(extra_scale * rng.normal(size=(batch, extra_dim))).astype(np.float32)
        if extra_dim else None,
    )


def _f64(x):
    return np.asarray(x, np.float64)


def _scale_tril_ref(logvar_bz, extra_be):
    """Float64 L = diag(exp(logvar / 2)) + strictly lower from extra in np.tril_indices order."""
    batch, latent_dim = logvar_bz.shape
    rows, cols = np.tril_indices(latent_dim, -1)
    scale = np.zeros((batch, latent_dim, latent_dim))
    for b in range(batch):
        scale[b][rows, cols] = _f64(extra_be[b])
        scale[b][np.diag_indices(latent_dim)] = np.exp(0.5 * _f64(logvar_bz[b]))
    return scale


def _kl_mvn_ref(mean_0, cov_0, mean_1, cov_1):
    """Textbook float64 KL(N0 || N1) with an explicit inverse and slogdet."""
    cov_1_inv = np.linalg.inv(cov_1)
    diff = mean_1 - mean_0
    return 0.5 * (np.trace(cov_1_inv @ cov_0) + diff @ cov_1_inv @ diff - len(mean_0)
                  + np.linalg.slogdet(cov_1)[1] - np.linalg.slogdet(cov_0)[1])


# ---------------------------------------------------------------------------------------------
# Registry and shared interface


class RegistryTest(chex.TestCase):

    def test_names_and_classes(self):
        self.assertEqual(list(posteriors.POSTERIORS), ["diagonal", "full_covariance", "iaf"])
        for name, cls in posteriors.POSTERIORS.items():
            self.assertEqual(cls.name, name)
            self.assertIsInstance(posteriors.make_posterior(name), posteriors.Posterior)

    def test_unknown_name_lists_valid_names(self):
        with self.assertRaisesRegex(ValueError, "'flow'.*diagonal, full_covariance, iaf"):
            posteriors.make_posterior("flow")

    def test_kwargs_reach_the_constructor(self):
        posterior = posteriors.make_posterior("iaf", num_steps=3, hidden=[8], context_dim=4)
        self.assertEqual(posterior.hidden, (8,))
        self.assertEqual(posterior.extra_dim(5), 4)
        self.assertEqual(sorted(posterior.init(jax.random.key(0), 5)), ["step_0", "step_1",
                                                                         "step_2"])
        with self.assertRaises(TypeError):
            posteriors.make_posterior("diagonal", num_steps=2)
        with self.assertRaisesRegex(ValueError, "num_steps >= 1"):
            posteriors.make_posterior("iaf", num_steps=0)

    def test_extra_dims(self):
        for latent_dim in (1, 2, 5):
            self.assertEqual(posteriors.make_posterior("diagonal").extra_dim(latent_dim), 0)
            self.assertEqual(posteriors.make_posterior("full_covariance").extra_dim(latent_dim),
                             latent_dim * (latent_dim - 1) // 2)
            self.assertEqual(posteriors.make_posterior("iaf").extra_dim(latent_dim),
                             2 * latent_dim)

    @parameterized.parameters("diagonal", "full_covariance", "iaf")
    def test_shapes_jit_and_static_instance(self, name):
        """[K, B, Z] noise -> z [K, B, Z], log q [K, B], point [B, Z]; the posterior instance
        is hashable, so it can be a static argument, and one jit traces once per shape."""
        posterior = posteriors.make_posterior(name)
        rng = np.random.default_rng(0)
        enc = _encoded(rng, posterior, batch=3, latent_dim=4)
        params = posterior.init(jax.random.key(1), 4)
        eps_kbz = rng.normal(size=(5, 3, 4)).astype(np.float32)
        chex.clear_trace_counter()  # the counter is keyed by `run`'s code, shared by parameters

        @jax.jit
        @chex.assert_max_traces(n=1)
        def run(params, enc, eps_kbz):
            return posterior.sample(params, enc, eps_kbz), posterior.point(params, enc)

        (z_kbz, log_q_kb), point_bz = run(params, enc, eps_kbz)
        run(params, enc, eps_kbz + 1.0)
        chex.assert_shape(z_kbz, (5, 3, 4))
        chex.assert_shape(log_q_kb, (5, 3))
        chex.assert_shape(point_bz, (3, 4))
        chex.assert_tree_all_finite((z_kbz, log_q_kb, point_bz))
        static = jax.jit(lambda p, *args: p.sample(*args), static_argnums=0)
        np.testing.assert_allclose(static(posterior, params, enc, eps_kbz)[1], log_q_kb,
                                   rtol=1e-6)

    @parameterized.parameters("diagonal", "full_covariance", "iaf")
    def test_shape_errors_name_the_shapes(self, name):
        posterior = posteriors.make_posterior(name)
        rng = np.random.default_rng(0)
        enc = _encoded(rng, posterior, batch=2, latent_dim=3)
        params = posterior.init(jax.random.key(0), 3)
        with self.assertRaisesRegex(ValueError, r"\[K, B, Z\].*\(2, 3\)"):
            posterior.sample(params, enc, np.zeros((4, 2, 2), np.float32))
        wrong_extra = enc._replace(extra=np.zeros((2, 7), np.float32))
        with self.assertRaisesRegex(ValueError, "extra"):
            posterior.sample(params, wrong_extra, np.zeros((4, 2, 3), np.float32))


# ---------------------------------------------------------------------------------------------
# diagonal


class DiagonalTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        self.posterior = posteriors.make_posterior("diagonal")
        self.rng = np.random.default_rng(0)
        self.enc = _encoded(self.rng, self.posterior, batch=4, latent_dim=3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sample_and_log_q_match_numpy(self):
        eps_kbz = self.rng.normal(size=(6, 4, 3)).astype(np.float32)
        z_kbz, log_q_kb = self.variant(self.posterior.sample)({}, self.enc, eps_kbz)
        std = np.exp(0.5 * _f64(self.enc.logvar))
        z_ref = _f64(self.enc.mean) + std * _f64(eps_kbz)
        log_q_ref = stats.norm.logpdf(z_ref, _f64(self.enc.mean), std).sum(-1)
        chex.assert_shape(z_kbz, (6, 4, 3))
        chex.assert_shape(log_q_kb, (6, 4))
        np.testing.assert_allclose(z_kbz, z_ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(log_q_kb, log_q_ref, rtol=1e-6, atol=1e-5)
        # At the samples, the density of the Gaussian part is q itself.
        np.testing.assert_allclose(self.posterior.base_log_prob(self.enc, z_kbz), log_q_ref,
                                   rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_matches_closed_form_and_sums_over_dims(self):
        kl_b, kl_per_dim_bz = self.variant(self.posterior.kl_standard_normal)(self.enc)
        chex.assert_shape(kl_b, (4,))
        chex.assert_shape(kl_per_dim_bz, (4, 3))
        mean, logvar = _f64(self.enc.mean), _f64(self.enc.logvar)
        per_dim_ref = 0.5 * (np.exp(logvar) + mean**2 - 1.0 - logvar)
        np.testing.assert_allclose(kl_per_dim_bz, per_dim_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kl_b, per_dim_ref.sum(-1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            kl_b, distributions.kl_standard_normal(self.enc.mean, self.enc.logvar), rtol=1e-6)
        np.testing.assert_allclose(np.sum(kl_per_dim_bz, -1), kl_b, rtol=1e-6)

    def test_kl_agrees_with_monte_carlo(self):
        """KL = E_q[log q(z) - log N(z; 0, I)] to NUM_SE standard errors of a 20k-sample mean."""
        num_samples = 20_000
        eps_kbz = self.rng.normal(size=(num_samples, 4, 3)).astype(np.float32)
        z_kbz, log_q_kb = self.posterior.sample({}, self.enc, eps_kbz)
        log_p_kb = stats.norm.logpdf(_f64(z_kbz)).sum(-1)
        terms_kb = _f64(log_q_kb) - log_p_kb
        kl_b, _ = self.posterior.kl_standard_normal(self.enc)
        se_b = terms_kb.std(0) / np.sqrt(num_samples)
        np.testing.assert_array_less(np.abs(terms_kb.mean(0) - kl_b), NUM_SE * se_b)

    def test_point_and_base_sample(self):
        np.testing.assert_array_equal(self.posterior.point({}, self.enc), self.enc.mean)
        eps_kbz = self.rng.normal(size=(2, 4, 3)).astype(np.float32)
        np.testing.assert_array_equal(self.posterior.base_sample(self.enc, eps_kbz),
                                      self.posterior.sample({}, self.enc, eps_kbz)[0])


# ---------------------------------------------------------------------------------------------
# full_covariance


def _ppca(rng, data_dim=5, latent_dim=3, noise_var=0.2, batch=3):
    """Probabilistic PCA (Tipping & Bishop 1999, JRSS B, Sec. 3.2) with correlated columns of W.

    x = W z + mu + noise, z ~ N(0, I), noise ~ N(0, noise_var I). Exact posterior
    p(z|x) = N(M^-1 W^T (x - mu), noise_var M^-1) with M = W^T W + noise_var I, and
    p(x) = N(mu, W W^T + noise_var I). All float64.
    """
    shared = rng.normal(size=(data_dim, 1))
    w = shared + 0.4 * rng.normal(size=(data_dim, latent_dim))  # near-parallel columns
    mu = rng.normal(size=data_dim)
    x = rng.normal(size=(batch, data_dim)) * 2.0 + mu
    m_inv = np.linalg.inv(w.T @ w + noise_var * np.eye(latent_dim))
    post_mean = (x - mu) @ w @ m_inv  # M^-1 symmetric: rows M^-1 W^T (x_b - mu)
    post_cov = noise_var * m_inv
    log_px = stats.multivariate_normal(mu, w @ w.T + noise_var * np.eye(data_dim)).logpdf(x)
    return dict(w=w, mu=mu, x=x, noise_var=noise_var, post_mean=post_mean, post_cov=post_cov,
                log_px=log_px)


def _log_joint(model, z_kbz):
    """Float64 log p(x|z) + log p(z) of the PPCA model for z [K, B, Z]."""
    z_kbz = _f64(z_kbz)
    x_mean = z_kbz @ model["w"].T + model["mu"]  # [K, B, D]
    log_px_z = stats.norm.logpdf(model["x"], x_mean, np.sqrt(model["noise_var"])).sum(-1)
    return log_px_z + stats.norm.logpdf(z_kbz).sum(-1)


class FullCovarianceTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        self.posterior = posteriors.make_posterior("full_covariance")
        self.rng = np.random.default_rng(0)
        self.enc = _encoded(self.rng, self.posterior, batch=3, latent_dim=4)
        self.scale_ref = _scale_tril_ref(self.enc.logvar, self.enc.extra)

    def test_scale_tril_layout(self):
        """extra fills the strict lower triangle in np.tril_indices(Z, -1) order."""
        np.testing.assert_allclose(self.posterior.scale_tril(self.enc), self.scale_ref,
                                   rtol=1e-6)
        enc_1 = posteriors.Encoded(self.enc.mean[:, :1], self.enc.logvar[:, :1], None)
        np.testing.assert_allclose(self.posterior.scale_tril(enc_1)[:, 0, 0],
                                   np.exp(0.5 * self.enc.logvar[:, 0]), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_log_q_matches_scipy(self):
        eps_kbz = self.rng.normal(size=(6, 3, 4)).astype(np.float32)
        z_kbz, log_q_kb = self.variant(self.posterior.sample)({}, self.enc, eps_kbz)
        chex.assert_shape(z_kbz, (6, 3, 4))
        chex.assert_shape(log_q_kb, (6, 3))
        z_ref = _f64(self.enc.mean) + np.einsum("bij,kbj->kbi", self.scale_ref, _f64(eps_kbz))
        np.testing.assert_allclose(z_kbz, z_ref, rtol=1e-5, atol=1e-5)
        for b in range(3):
            cov = self.scale_ref[b] @ self.scale_ref[b].T
            log_q_ref = stats.multivariate_normal(_f64(self.enc.mean[b]), cov).logpdf(
                _f64(z_kbz[:, b]))
            np.testing.assert_allclose(log_q_kb[:, b], log_q_ref, rtol=1e-5, atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_base_log_prob_at_any_z_broadcasts(self):
        """At arbitrary z [K, N, 1, Z] against B = 3 components: a [K, N, 3] table (VampPrior)."""
        z = self.rng.normal(size=(2, 5, 1, 4)).astype(np.float32) * 2.0
        log_prob = self.variant(self.posterior.base_log_prob)(self.enc, z)
        chex.assert_shape(log_prob, (2, 5, 3))
        for b in range(3):
            ref = stats.multivariate_normal(
                _f64(self.enc.mean[b]), self.scale_ref[b] @ self.scale_ref[b].T).logpdf(
                    _f64(z[:, :, 0]))
            np.testing.assert_allclose(log_prob[..., b], ref, rtol=1e-5, atol=1e-4)

    def test_sample_covariance_is_scale_scale_transposed(self):
        """Covariance of 20k samples = L L^T entrywise to NUM_SE standard errors, where
        se(S_ij) = sqrt((S_ii S_jj + S_ij^2) / K) for Gaussian samples."""
        num_samples = 20_000
        eps_kbz = self.rng.normal(size=(num_samples, 3, 4)).astype(np.float32)
        z_kbz, _ = self.posterior.sample({}, self.enc, eps_kbz)
        for b in range(3):
            cov_ref = self.scale_ref[b] @ self.scale_ref[b].T
            diff = _f64(z_kbz[:, b]) - _f64(self.enc.mean[b])  # the mean is known exactly
            cov_mc = diff.T @ diff / num_samples
            variances = np.diag(cov_ref)
            se = np.sqrt((np.outer(variances, variances) + cov_ref**2) / num_samples)
            np.testing.assert_array_less(np.abs(cov_mc - cov_ref), NUM_SE * se)

    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_matches_closed_form(self):
        """KL = 1/2 [tr S + m^T m - k - log det S]; no per-dimension terms."""
        kl_b, per_dim = self.variant(self.posterior.kl_standard_normal)(self.enc)
        self.assertIsNone(per_dim)
        chex.assert_shape(kl_b, (3,))
        for b in range(3):
            cov = self.scale_ref[b] @ self.scale_ref[b].T
            mean = _f64(self.enc.mean[b])
            ref = 0.5 * (np.trace(cov) + mean @ mean - 4 - np.linalg.slogdet(cov)[1])
            np.testing.assert_allclose(kl_b[b], ref, rtol=1e-5)

    def test_point_is_mean(self):
        np.testing.assert_array_equal(self.posterior.point({}, self.enc), self.enc.mean)

    def test_exact_ppca_posterior_makes_every_log_weight_log_evidence(self):
        """With q = the exact PPCA posterior, log p(x|z) + log p(z) - log q(z|x) = log p(x) at
        every sample (so the ELBO and the IWAE bound are tight)."""
        model = _ppca(self.rng)
        scale = np.linalg.cholesky(model["post_cov"])
        std = np.sqrt(np.diag(model["post_cov"]))
        correlation = model["post_cov"] / np.outer(std, std)
        self.assertGreater(np.max(np.abs(correlation - np.eye(3))), 0.5)  # a correlated target
        rows, cols = np.tril_indices(3, -1)
        enc = posteriors.Encoded(
            mean=model["post_mean"].astype(np.float32),
            logvar=np.broadcast_to(2.0 * np.log(np.diag(scale)), (3, 3)).astype(np.float32),
            extra=np.broadcast_to(scale[rows, cols], (3, 3)).astype(np.float32),
        )
        eps_kbz = self.rng.normal(size=(16, 3, 3)).astype(np.float32)
        z_kbz, log_q_kb = self.posterior.sample({}, enc, eps_kbz)
        log_w_kb = _log_joint(model, z_kbz) - _f64(log_q_kb)
        np.testing.assert_allclose(log_w_kb, np.broadcast_to(model["log_px"], (16, 3)),
                                   rtol=1e-6, atol=1e-4)

    def test_best_diagonal_posterior_falls_short_by_its_kl(self):
        """The optimal diagonal q for a Gaussian target N(m, S) has mean m and precisions
        diag(S^-1) (mean-field VI; Bishop 2006, PRML, Sec. 10.1.2). Its ELBO is
        log p(x) - KL(q || p(z|x)), with KL = 1/2 [sum_j log P_jj - log det P] > 0 for the
        precision P = S^-1 (Hadamard's inequality): checked by Monte Carlo, NUM_SE SE."""
        model = _ppca(self.rng)
        precision = np.linalg.inv(model["post_cov"])
        diag_var = 1.0 / np.diag(precision)
        gap_ref = 0.5 * (np.sum(np.log(np.diag(precision))) - np.linalg.slogdet(precision)[1])
        np.testing.assert_allclose(
            gap_ref,
            _kl_mvn_ref(np.zeros(3), np.diag(diag_var), np.zeros(3), model["post_cov"]),
            rtol=1e-10)
        self.assertGreater(gap_ref, 0.1)

        diagonal = posteriors.make_posterior("diagonal")
        enc = posteriors.Encoded(model["post_mean"].astype(np.float32),
                                 np.broadcast_to(np.log(diag_var), (3, 3)).astype(np.float32))
        num_samples = 20_000
        eps_kbz = self.rng.normal(size=(num_samples, 3, 3)).astype(np.float32)
        z_kbz, log_q_kb = diagonal.sample({}, enc, eps_kbz)
        log_w_kb = _log_joint(model, z_kbz) - _f64(log_q_kb)
        elbo_b = log_w_kb.mean(0)
        se_b = log_w_kb.std(0) / np.sqrt(num_samples)
        np.testing.assert_array_less(np.abs(elbo_b - (model["log_px"] - gap_ref)), NUM_SE * se_b)
        np.testing.assert_array_less(elbo_b + NUM_SE * se_b, model["log_px"])


# ---------------------------------------------------------------------------------------------
# iaf


def _perturbed(params, seed, scale=0.5):
    """MADE parameters moved far from their near-identity initialisation."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [
        leaf + scale * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


class IAFTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        self.posterior = posteriors.make_posterior("iaf", num_steps=3)
        self.rng = np.random.default_rng(0)
        self.latent_dim = 4
        self.enc = _encoded(self.rng, self.posterior, batch=3, latent_dim=self.latent_dim)
        self.params = _perturbed(self.posterior.init(jax.random.key(0), self.latent_dim), 1)

    def test_default_architecture(self):
        iaf = posteriors.make_posterior("iaf")
        self.assertEqual((iaf.num_steps, iaf.forget_bias), (2, 2.0))
        params = iaf.init(jax.random.key(0), 3)
        self.assertEqual(sorted(params), ["step_0", "step_1"])
        chex.assert_shape(params["step_0"]["hidden_0"]["kernel"], (3, 6))
        chex.assert_shape(params["step_0"]["hidden_1"]["kernel"], (6, 6))
        chex.assert_shape(params["step_0"]["context"]["kernel"], (6, 6))

    def test_log_q_is_change_of_variables(self):
        """log q(z|x) = log N(eps; 0, I) - log|det dz/deps| with the Jacobian by autodiff and
        the determinant and base density in float64."""
        eps_kbz = self.rng.normal(size=(2, 3, self.latent_dim)).astype(np.float32)
        _, log_q_kb = self.posterior.sample(self.params, self.enc, eps_kbz)
        for k in range(2):
            for b in range(3):
                enc_b = jax.tree.map(lambda a, b=b: a[b:b + 1], self.enc)

                def flow(eps_z, enc_b=enc_b):
                    return self.posterior.sample(self.params, enc_b, eps_z[None, None])[0][0, 0]

                jac = _f64(jax.jacfwd(flow)(eps_kbz[k, b]))
                log_q_ref = (stats.norm.logpdf(_f64(eps_kbz[k, b])).sum()
                             - np.linalg.slogdet(jac)[1])
                np.testing.assert_allclose(log_q_kb[k, b], log_q_ref, rtol=1e-5, atol=1e-4)

    def test_step_jacobians_are_triangular_in_alternating_order(self):
        """dz_t/dz_{t-1}: exactly zero above the diagonal for even t (order 0..Z-1), below it for
        odd t (order reversed); the diagonal is sigma_t. With one step the whole flow
        eps -> z is lower triangular; with the reversal, three steps are not triangular."""
        z = self.rng.normal(size=self.latent_dim).astype(np.float32)
        context = self.enc.extra[:1]
        for t in range(3):
            def step(z_z, t=t):
                return self.posterior.step(self.params, t, z_z[None], context)[0][0]

            jac = np.asarray(jax.jacfwd(step)(z))
            zero_part = np.triu(jac, 1) if t % 2 == 0 else np.tril(jac, -1)
            other_part = np.tril(jac, -1) if t % 2 == 0 else np.triu(jac, 1)
            np.testing.assert_array_equal(zero_part, 0.0)
            self.assertTrue(np.all(other_part[np.tril_indices(self.latent_dim, -1)
                                              if t % 2 == 0 else
                                              np.triu_indices(self.latent_dim, 1)] != 0.0))
            _, log_sigma = self.posterior.step(self.params, t, z[None], context)
            np.testing.assert_allclose(np.diag(jac), np.exp(log_sigma[0]), rtol=1e-6)

        def flow(posterior, params, eps_z):
            return posterior.sample(params, jax.tree.map(lambda a: a[:1], self.enc),
                                    eps_z[None, None])[0][0, 0]

        one_step = posteriors.make_posterior("iaf", num_steps=1)
        one_params = _perturbed(one_step.init(jax.random.key(2), self.latent_dim), 3)
        jac_1 = np.asarray(jax.jacfwd(lambda e: flow(one_step, one_params, e))(z))
        np.testing.assert_array_equal(np.triu(jac_1, 1), 0.0)
        jac_3 = np.asarray(jax.jacfwd(lambda e: flow(self.posterior, self.params, e))(z))
        self.assertTrue(np.any(np.triu(jac_3, 1) != 0.0) and np.any(np.tril(jac_3, -1) != 0.0))

    def test_starts_near_identity(self):
        """At init sigma_t = sigmoid(s_t) is within 0.05 of sigmoid(forget_bias) = 0.88 at every
        step, coordinate and input; a large forget_bias makes the flow the identity."""
        params = self.posterior.init(jax.random.key(0), self.latent_dim)
        z = self.rng.normal(size=(8, 3, self.latent_dim)).astype(np.float32) * 2.0
        for t in range(3):
            _, log_sigma = self.posterior.step(params, t, z, self.enc.extra)
            np.testing.assert_allclose(np.exp(log_sigma), 1.0 / (1.0 + np.exp(-2.0)), atol=0.05)

        identity_like = posteriors.make_posterior("iaf", forget_bias=12.0)
        params = identity_like.init(jax.random.key(0), self.latent_dim)
        eps_kbz = self.rng.normal(size=(4, 3, self.latent_dim)).astype(np.float32)
        z_kbz, log_q_kb = identity_like.sample(params, self.enc, eps_kbz)
        base_z_kbz = identity_like.base_sample(self.enc, eps_kbz)
        np.testing.assert_allclose(z_kbz, base_z_kbz, atol=1e-3)
        np.testing.assert_allclose(log_q_kb, identity_like.base_log_prob(self.enc, base_z_kbz),
                                   rtol=1e-4, atol=1e-3)

    def test_base_distribution_is_the_diagonal_gaussian(self):
        z = self.rng.normal(size=(2, 3, self.latent_dim)).astype(np.float32)
        std = np.exp(0.5 * _f64(self.enc.logvar))
        np.testing.assert_allclose(self.posterior.base_log_prob(self.enc, z),
                                   stats.norm.logpdf(_f64(z), _f64(self.enc.mean), std).sum(-1),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(self.posterior.base_sample(self.enc, z),
                                   _f64(self.enc.mean) + std * _f64(z), rtol=1e-5, atol=1e-6)
        self.assertIsNone(self.posterior.kl_standard_normal(self.enc))

    @chex.variants(with_jit=True, without_jit=True)
    def test_point_is_flow_of_the_mean(self):
        point_bz = self.variant(self.posterior.point)(self.params, self.enc)
        chex.assert_shape(point_bz, (3, self.latent_dim))
        zero_noise = np.zeros((1, 3, self.latent_dim), np.float32)
        z_at_zero, _ = self.posterior.sample(self.params, self.enc, zero_noise)
        np.testing.assert_allclose(point_bz, z_at_zero[0], rtol=1e-6, atol=1e-6)
        self.assertGreater(np.max(np.abs(point_bz - self.enc.mean)), 1e-2)  # not the mean

    def test_gradients_reach_made_params_and_encoder(self):
        """The Monte Carlo KL(q || N(0, I)) has finite, non-zero gradients for every MADE
        parameter array and every field of the encoder output."""
        eps_kbz = self.rng.normal(size=(4, 3, self.latent_dim)).astype(np.float32)
        params = self.posterior.init(jax.random.key(0), self.latent_dim)

        def kl_estimate(params, enc):
            z_kbz, log_q_kb = self.posterior.sample(params, enc, eps_kbz)
            log_p_kb = distributions.gaussian_log_density(z_kbz, 0.0, jnp.zeros_like(z_kbz))
            return jnp.mean(log_q_kb - log_p_kb)

        grads = jax.grad(kl_estimate, argnums=(0, 1))(params, self.enc)
        chex.assert_tree_all_finite(grads)
        for path, grad in jax.tree_util.tree_leaves_with_path(grads):
            self.assertGreater(np.max(np.abs(grad)), 0.0, msg=jax.tree_util.keystr(path))

    def test_without_context(self):
        posterior = posteriors.make_posterior("iaf", context_dim=0)
        self.assertEqual(posterior.extra_dim(3), 0)
        params = posterior.init(jax.random.key(0), 3)
        self.assertNotIn("context", params["step_0"])
        enc = _encoded(self.rng, posterior, batch=2, latent_dim=3)
        self.assertIsNone(enc.extra)
        z_kbz, log_q_kb = posterior.sample(params, enc, np.zeros((1, 2, 3), np.float32))
        chex.assert_shape((z_kbz, log_q_kb), [(1, 2, 3), (1, 2)])


if __name__ == "__main__":
    absltest.main()
