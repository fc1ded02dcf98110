"""Tests for vae_jax.priors against independent float64 numpy/scipy references.

References are written out here in float64 (scipy.stats densities, scipy.special.logsumexp,
the closed-form marginal of a linear-Gaussian model); the code under test runs in float32.
Monte Carlo checks state their tolerance in standard errors (SE) and use fixed seeds, so they
are deterministic. The VampPrior is tested with the real `posteriors` classes and small
hand-written encoders (linear, or a one-hidden-layer tanh MLP) whose float64 twins are here.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from scipy import special, stats

from vae_jax import distributions, posteriors, priors

# A correct implementation fails a NUM_SE-standard-error check with probability ~6e-7.
NUM_SE = 5.0

DIAGONAL = posteriors.make_posterior("diagonal")


# ---------------------------------------------------------------------------------------------
# Float64 references and a linear / small nonlinear encoder for the VampPrior.


def _mixture_log_pdf_ref(z, log_weights_c, mean_cz, var_cz):
    """log sum_c w_c N(z; mean_c, diag var_c), float64, z [..., Z] -> [...]."""
    z = np.asarray(z, np.float64)[..., None, :]
    log_comp = stats.norm.logpdf(z, mean_cz, np.sqrt(var_cz)).sum(-1)  # [..., C]
    return special.logsumexp(log_comp + log_weights_c, axis=-1)


def _mixture_cdf_ref(t, weights_c, mean_c, var_c):
    """P(z <= t) of a 1-D Gaussian mixture, float64."""
    return np.sum(weights_c * stats.norm.cdf((t[:, None] - mean_c) / np.sqrt(var_c)), axis=-1)


def _linear_encode(enc_params, u_nhwc):
    """encode(u) = Encoded(mean = u_flat A + a, logvar = const): a Gaussian mixture VampPrior."""
    u_nd = u_nhwc.reshape(u_nhwc.shape[0], -1)
    mean_nz = u_nd @ enc_params["A"] + enc_params["a"]
    return posteriors.Encoded(mean_nz, jnp.broadcast_to(enc_params["logvar"], mean_nz.shape), None)


def _linear_components_ref(enc_params, pseudo_inputs):
    """(mean [C, Z], var [C, Z]) of the linear encoder at the clipped pseudo-inputs, float64."""
    p = {k: np.asarray(v, np.float64) for k, v in enc_params.items()}
    u_cd = np.clip(np.asarray(pseudo_inputs, np.float64), 0.0, 1.0).reshape(len(pseudo_inputs), -1)
    mean_cz = u_cd @ p["A"] + p["a"]
    return mean_cz, np.broadcast_to(np.exp(p["logvar"]), mean_cz.shape)


def _mlp_encode(enc_params, u_nhwc):
    """A small nonlinear encoder: h = tanh(u W1 + b1), mean = h W2 + b2, logvar = h W3 + b3."""
    h = jnp.tanh(u_nhwc.reshape(u_nhwc.shape[0], -1) @ enc_params["w1"] + enc_params["b1"])
    mean_nz = h @ enc_params["w2"] + enc_params["b2"]
    return posteriors.Encoded(mean_nz, h @ enc_params["w3"] + enc_params["b3"], None)


def _mlp_components_ref(enc_params, u_chwc):
    """(mean [C, Z], var [C, Z]) of `_mlp_encode` at u (not clipped here), float64."""
    p = {k: np.asarray(v, np.float64) for k, v in enc_params.items()}
    h = np.tanh(np.asarray(u_chwc, np.float64).reshape(len(u_chwc), -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"], np.exp(h @ p["w3"] + p["b3"])


def _mlp_params(rng, d, hidden, z):
    return {
        "w1": rng.normal(size=(d, hidden)) * 2.0, "b1": rng.normal(size=hidden),
        "w2": rng.normal(size=(hidden, z)), "b2": rng.normal(size=z),
        "w3": rng.normal(size=(hidden, z)) * 0.5, "b3": rng.normal(size=z) * 0.3,
    }


def _to_jax(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


# ---------------------------------------------------------------------------------------------
# Registry


class RegistryTest(absltest.TestCase):

    def test_make_prior_builds_each_registered_prior_with_its_arguments(self):
        self.assertEqual(sorted(priors.PRIORS), ["mixture", "standard_normal", "vamp"])
        self.assertIsInstance(priors.make_prior("standard_normal"), priors.StandardNormal)
        self.assertEqual(priors.make_prior("mixture").num_components, 10)
        self.assertEqual(priors.make_prior("mixture", num_components=3).num_components, 3)
        posterior = DIAGONAL
        vamp = priors.make_prior("vamp", posterior=posterior)
        self.assertIsInstance(vamp, priors.Vamp)
        self.assertEqual((vamp.num_components, vamp.init_mean, vamp.init_std), (500, 0.05, 0.01))
        self.assertIs(vamp.posterior, posterior)
        for name, cls in priors.PRIORS.items():
            self.assertEqual(cls.name, name)

    def test_unknown_name_lists_the_valid_names(self):
        with self.assertRaisesRegex(ValueError, r"'gmm'.*\['mixture', 'standard_normal', 'vamp'\]"):
            priors.make_prior("gmm")

    def test_kl_closed_form_only_for_standard_normal_with_gaussian_posteriors(self):
        standard = priors.make_prior("standard_normal")
        self.assertTrue(standard.kl_closed_form_with("diagonal"))
        self.assertTrue(standard.kl_closed_form_with("full_covariance"))
        self.assertFalse(standard.kl_closed_form_with("iaf"))
        self.assertFalse(priors.make_prior("mixture").kl_closed_form_with("diagonal"))
        vamp = priors.make_prior("vamp", posterior=DIAGONAL)
        self.assertFalse(vamp.kl_closed_form_with("diagonal"))


# ---------------------------------------------------------------------------------------------
# standard_normal


class StandardNormalTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_log_prob_matches_scipy(self):
        prior = priors.make_prior("standard_normal")
        self.assertEqual(prior.init(jax.random.key(0), 5, (2, 2, 1)), {})
        z_kbz = np.random.default_rng(0).normal(size=(3, 4, 5)) * 3.0
        got = self.variant(functools.partial(prior.log_prob, {}))(jnp.asarray(z_kbz, jnp.float32))
        chex.assert_shape(got, (3, 4))
        want = stats.norm.logpdf(z_kbz.astype(np.float32).astype(np.float64)).sum(-1)
        np.testing.assert_allclose(got, want, rtol=1e-6)

    def test_sample_moments(self):
        # num = 40_000: the mean has SE 1/sqrt(num), the variance SE sqrt(2/num).
        prior, num = priors.make_prior("standard_normal"), 40_000
        sample = jax.jit(prior.sample, static_argnums=2, static_argnames="latent_dim")
        z_nz = np.asarray(sample({}, jax.random.key(1), num, latent_dim=3), np.float64)
        chex.assert_shape(z_nz, (num, 3))
        np.testing.assert_array_less(np.abs(z_nz.mean(0)), NUM_SE / np.sqrt(num))
        np.testing.assert_array_less(np.abs(z_nz.var(0) - 1.0), NUM_SE * np.sqrt(2 / num))

    def test_sample_needs_latent_dim(self):
        with self.assertRaisesRegex(ValueError, "latent_dim"):
            priors.make_prior("standard_normal").sample({}, jax.random.key(0), 4)


# ---------------------------------------------------------------------------------------------
# mixture


class MixtureTest(chex.TestCase):

    def test_init(self):
        params = priors.make_prior("mixture", num_components=4).init(jax.random.key(0), 3, (2, 2))
        chex.assert_shape((params["logits"], params["mean"], params["logvar"]),
                          [(4,), (4, 3), (4, 3)])
        np.testing.assert_array_equal(params["logits"], 0.0)
        np.testing.assert_array_equal(params["logvar"], 0.0)
        self.assertGreater(float(jnp.std(params["mean"])), 0.3)  # spread, not all at 0

    @chex.variants(with_jit=True, without_jit=True)
    def test_log_prob_matches_float64_mixture(self):
        rng = np.random.default_rng(1)
        c, z = 4, 3
        params = {"logits": rng.normal(size=c), "mean": rng.normal(size=(c, z)) * 2,
                  "logvar": rng.normal(size=(c, z))}
        z_kbz = rng.normal(size=(2, 5, z)) * 3.0
        z_kbz[0, 0] = 40.0  # far from every component: each density underflows in float32
        params32, z32 = _to_jax(params), jnp.asarray(z_kbz, jnp.float32)
        log_prob = self.variant(priors.make_prior("mixture", num_components=c).log_prob)
        got = log_prob(params32, z32)
        chex.assert_shape(got, (2, 5))
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params32)
        want = _mixture_log_pdf_ref(z32, special.log_softmax(p64["logits"]), p64["mean"],
                                    np.exp(p64["logvar"]))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_log_prob_is_stable_for_500_components(self):
        # 500 components of weight ~1/500 and z ~20 standard deviations from all of them: every
        # term is ~exp(-6000) (0 in float32), so only a logsumexp gives the finite answer.
        rng = np.random.default_rng(2)
        c, z = 500, 40
        params = {"logits": rng.normal(size=c), "mean": rng.normal(size=(c, z)),
                  "logvar": np.full((c, z), -2.0)}
        z_nz = rng.normal(size=(6, z)) + 8.0
        params32, z32 = _to_jax(params), jnp.asarray(z_nz, jnp.float32)
        got = self.variant(priors.make_prior("mixture", num_components=c).log_prob)(params32, z32)
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params32)
        want = _mixture_log_pdf_ref(z32, special.log_softmax(p64["logits"]), p64["mean"],
                                    np.exp(p64["logvar"]))
        self.assertTrue(np.all(want < -5000))
        np.testing.assert_allclose(got, want, rtol=1e-6)

    def test_samples_follow_the_mixture(self):
        # 1-D, three unequal components. num = 40_000: the empirical CDF at each point has
        # binomial SE sqrt(F(1-F)/num) <= 0.0025; mean SE sqrt(var/num), variance SE
        # sqrt((m4 - var^2)/num) with the fourth central moment m4 estimated from the samples.
        num = 40_000
        weights = np.array([0.6, 0.3, 0.1])
        mean_c, var_c = np.array([-2.0, 0.5, 3.0]), np.array([0.25, 1.0, 0.5])
        params = _to_jax({"logits": np.log(weights), "mean": mean_c[:, None],
                          "logvar": np.log(var_c)[:, None]})
        sample = jax.jit(priors.make_prior("mixture", num_components=3).sample,
                         static_argnums=2)
        z_n1 = np.asarray(sample(params, jax.random.key(3), num), np.float64)
        chex.assert_shape(z_n1, (num, 1))
        z_n = z_n1[:, 0]

        t = np.linspace(-3.0, 4.0, 15)
        cdf = _mixture_cdf_ref(t, weights, mean_c, var_c)
        empirical = (z_n[None, :] <= t[:, None]).mean(1)
        np.testing.assert_array_less(np.abs(empirical - cdf),
                                     NUM_SE * np.sqrt(cdf * (1 - cdf) / num) + 1e-12)

        mean = np.sum(weights * mean_c)
        var = np.sum(weights * (var_c + mean_c**2)) - mean**2
        m4 = np.mean((z_n - z_n.mean()) ** 4)
        self.assertLess(abs(z_n.mean() - mean), NUM_SE * np.sqrt(var / num))
        self.assertLess(abs(z_n.var() - var), NUM_SE * np.sqrt((m4 - var**2) / num))

    def test_gradients_are_finite_and_reach_every_parameter(self):
        prior = priors.make_prior("mixture", num_components=3)
        params = prior.init(jax.random.key(4), 2, ())
        params["logits"] = jnp.array([0.5, -1.0, 0.0])
        z_kbz = jax.random.normal(jax.random.key(5), (2, 3, 2)) * 2

        def objective(p):
            return jnp.mean(prior.log_prob(p, z_kbz)) + jnp.mean(
                prior.sample(p, jax.random.key(6), 16) ** 2)

        grads = jax.jit(jax.grad(objective))(params)
        chex.assert_tree_all_finite(grads)
        for name, grad in grads.items():
            self.assertGreater(float(jnp.max(jnp.abs(grad))), 1e-4, name)

    def test_sample_checks_latent_dim(self):
        prior = priors.make_prior("mixture", num_components=2)
        params = prior.init(jax.random.key(0), 3, ())
        chex.assert_shape(prior.sample(params, jax.random.key(1), 5, latent_dim=3), (5, 3))
        with self.assertRaisesRegex(ValueError, "latent_dim"):
            prior.sample(params, jax.random.key(1), 5, latent_dim=4)


# ---------------------------------------------------------------------------------------------
# vamp


class VampTest(chex.TestCase):

    def _prior(self, c):
        return priors.make_prior("vamp", num_components=c, posterior=DIAGONAL)

    def test_init_follows_the_authors(self):
        # N(0.05, 0.01^2) i.i.d.: over 2000 entries the mean has SE 2.2e-4, the std ~1.6e-4.
        params = self._prior(500).init(jax.random.key(0), 7, (2, 2, 1))
        u = np.asarray(params["pseudo_inputs"], np.float64)
        chex.assert_shape(u, (500, 2, 2, 1))
        self.assertLess(abs(u.mean() - 0.05), NUM_SE * 0.01 / np.sqrt(u.size))
        self.assertLess(abs(u.std() - 0.01), NUM_SE * 0.01 / np.sqrt(2 * u.size))

    @chex.variants(with_jit=True, without_jit=True)
    def test_log_prob_is_the_mixture_of_posteriors_at_the_clipped_pseudo_inputs(self):
        rng = np.random.default_rng(7)
        c, z, image_shape = 6, 3, (2, 3, 1)
        enc_params = _to_jax(_mlp_params(rng, 6, 5, z))
        u = rng.uniform(-0.5, 1.5, size=(c, *image_shape))  # about half outside [0, 1]
        params = {"pseudo_inputs": jnp.asarray(u, jnp.float32)}
        z_kbz = rng.normal(size=(4, 2, z)) * 2.0
        z_kbz[0, 0] = 30.0
        encode = functools.partial(_mlp_encode, enc_params)
        log_prob = self.variant(functools.partial(self._prior(c).log_prob, encode=encode))
        got = log_prob(params, jnp.asarray(z_kbz, jnp.float32))
        chex.assert_shape(got, (4, 2))

        u32 = np.asarray(params["pseudo_inputs"], np.float64)
        z32 = np.asarray(jnp.asarray(z_kbz, jnp.float32), np.float64)
        mean_cz, var_cz = _mlp_components_ref(enc_params, np.clip(u32, 0.0, 1.0))
        want = _mixture_log_pdf_ref(z32, np.full(c, -np.log(c)), mean_cz, var_cz)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # The clip matters here: the unclipped pseudo-inputs give a different density.
        mean_cz, var_cz = _mlp_components_ref(enc_params, u32)
        unclipped = _mixture_log_pdf_ref(z32, np.full(c, -np.log(c)), mean_cz, var_cz)
        self.assertGreater(np.max(np.abs(unclipped - want)), 0.1)

    def test_pseudo_inputs_are_clipped_in_the_forward_pass(self):
        seen = []

        def recording_encode(u_nhwc):
            seen.append(np.asarray(u_nhwc))
            return _linear_encode(enc_params, u_nhwc)

        enc_params = _to_jax({"A": np.ones((4, 2)), "a": np.zeros(2), "logvar": np.zeros(2)})
        u = np.array([-0.3, 0.2, 1.4, 0.9, 2.0, -1.0, 0.5, 0.7]).reshape(2, 2, 2, 1)
        params = {"pseudo_inputs": jnp.asarray(u, jnp.float32)}
        prior = self._prior(2)
        prior.log_prob(params, jnp.zeros((3, 2)), encode=recording_encode)
        prior.sample(params, jax.random.key(0), 3, encode=recording_encode)
        for u_seen in seen:
            np.testing.assert_allclose(u_seen, np.clip(u, 0.0, 1.0), rtol=1e-7)
        # As hardtanh(0, 1): no gradient to the entries outside [0, 1], the full one inside.
        grad = jax.grad(lambda p: jnp.sum(prior.log_prob(
            p, jnp.ones((3, 2)), encode=functools.partial(_linear_encode, enc_params))))(params)
        inside = (u > 0) & (u < 1)
        np.testing.assert_array_equal(np.asarray(grad["pseudo_inputs"])[~inside], 0.0)
        self.assertTrue(np.all(np.asarray(grad["pseudo_inputs"])[inside] != 0.0))

    def test_samples_follow_the_mixture(self):
        # Linear encoder: component c is N(A u_c + a, diag exp(logvar)). num = 40_000; per
        # dimension the mean and variance to NUM_SE SEs, the CDF of z_0 at 9 points to NUM_SE
        # binomial SEs.
        num, c = 40_000, 3
        enc_params = _to_jax({"A": np.array([[3.0, 0.0], [0.0, 2.0], [1.0, -1.0], [0.0, 0.0]]),
                              "a": np.array([-1.0, 0.5]), "logvar": np.log([0.3, 0.6])})
        u = np.array([[0.0, 0.0, 0.0, 0.5], [1.0, 0.2, 0.5, 0.5], [0.5, 1.0, 1.0, 0.1]])
        params = {"pseudo_inputs": jnp.asarray(u.reshape(c, 2, 2, 1), jnp.float32)}
        encode = functools.partial(_linear_encode, enc_params)
        sample = jax.jit(functools.partial(self._prior(c).sample, encode=encode),
                         static_argnums=2)
        z_nz = np.asarray(sample(params, jax.random.key(8), num), np.float64)
        chex.assert_shape(z_nz, (num, 2))

        mean_cz, var_cz = _linear_components_ref(enc_params, params["pseudo_inputs"])
        mean = mean_cz.mean(0)
        var = (var_cz + mean_cz**2).mean(0) - mean**2
        m4 = np.mean((z_nz - z_nz.mean(0)) ** 4, axis=0)
        np.testing.assert_array_less(np.abs(z_nz.mean(0) - mean), NUM_SE * np.sqrt(var / num))
        np.testing.assert_array_less(np.abs(z_nz.var(0) - var),
                                     NUM_SE * np.sqrt((m4 - var**2) / num))
        t = np.linspace(-2.5, 3.0, 9)
        cdf = _mixture_cdf_ref(t, np.full(c, 1 / c), mean_cz[:, 0], var_cz[:, 0])
        empirical = (z_nz[None, :, 0] <= t[:, None]).mean(1)
        np.testing.assert_array_less(np.abs(empirical - cdf),
                                     NUM_SE * np.sqrt(cdf * (1 - cdf) / num) + 1e-12)

    def test_gradients_reach_pseudo_inputs_and_encoder_parameters(self):
        rng = np.random.default_rng(9)
        c, z = 4, 2
        prior = self._prior(c)
        params = {"pseudo_inputs": jnp.asarray(rng.uniform(0.1, 0.9, (c, 2, 2, 1)), jnp.float32)}
        enc_params = _to_jax(_mlp_params(rng, 4, 3, z))
        z_kbz = jnp.asarray(rng.normal(size=(2, 3, z)), jnp.float32)

        def objective(p, e):
            encode = functools.partial(_mlp_encode, e)
            return jnp.mean(prior.log_prob(p, z_kbz, encode=encode)) + jnp.mean(
                prior.sample(p, jax.random.key(10), 8, encode=encode) ** 2)

        grads = jax.jit(jax.grad(objective, argnums=(0, 1)))(params, enc_params)
        chex.assert_tree_all_finite(grads)
        for path, grad in jax.tree_util.tree_leaves_with_path(grads):
            self.assertGreater(float(jnp.max(jnp.abs(grad))), 1e-5, jax.tree_util.keystr(path))

    def test_log_prob_with_a_full_covariance_posterior(self):
        # Z = 2, C = 3: component c is N(A^T u_c, L_c L_c^T) with L_c = [[s_0, 0], [g . u_c, s_1]],
        # the off-diagonal from the encoder's extra head (E = 1).
        c = 3
        rng = np.random.default_rng(11)
        u_cd = rng.uniform(0.0, 1.0, size=(c, 4)).astype(np.float32).astype(np.float64)
        a_dz, g_d, std_z = rng.normal(size=(4, 2)), rng.normal(size=4), np.array([0.7, 0.9])
        a32, g32, logvar32 = _to_jax((a_dz, g_d, 2 * np.log(std_z)))

        def encode(u_nhwc):
            u_nd = u_nhwc.reshape(u_nhwc.shape[0], -1)
            mean_nz = u_nd @ a32
            return posteriors.Encoded(mean_nz, jnp.broadcast_to(logvar32, mean_nz.shape),
                                      (u_nd @ g32)[:, None])

        prior = priors.make_prior("vamp", num_components=c,
                                  posterior=posteriors.make_posterior("full_covariance"))
        params = {"pseudo_inputs": jnp.asarray(u_cd.reshape(c, 2, 2, 1), jnp.float32)}
        z_nz = rng.normal(size=(5, 2)).astype(np.float32) * 2.0
        got = jax.jit(functools.partial(prior.log_prob, encode=encode))(params, z_nz)
        chex.assert_shape(got, (5,))
        chex.assert_shape(prior.sample(params, jax.random.key(0), 7, encode=encode), (7, 2))

        log_comp_nc = []
        for u_d in u_cd:
            scale = np.array([[std_z[0], 0.0], [u_d @ g_d, std_z[1]]])
            log_comp_nc.append(stats.multivariate_normal.logpdf(z_nz, u_d @ a_dz, scale @ scale.T))
        want = special.logsumexp(np.stack(log_comp_nc, -1), axis=-1) - np.log(c)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def test_needs_encode(self):
        prior = self._prior(2)
        params = prior.init(jax.random.key(0), 2, (1, 1, 1))
        with self.assertRaisesRegex(ValueError, "encode"):
            prior.log_prob(params, jnp.zeros((3, 2)))
        with self.assertRaisesRegex(ValueError, "encode"):
            prior.sample(params, jax.random.key(0), 3)


# ---------------------------------------------------------------------------------------------
# Importance-sampled log p(x) of a linear-Gaussian decoder against its closed form.
#
# With p(z) = sum_c pi_c N(z; mu_c, S_c) and p(x|z) = N(x; W z + b, s2 I), the marginal is the
# Gaussian mixture p(x) = sum_c pi_c N(x; W mu_c + b, W S_c W^T + s2 I), and the posterior the
# mixture of the per-component Gaussian posteriors. The proposal q(z|x) is a diagonal Gaussian
# with the posterior's mean and 1.5x its marginal standard deviations.

_W = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.8]])  # [D, Z]
_B = np.array([0.2, -0.1, 0.3])
_S2 = 0.3
_X = np.array([[0.5, 1.0, -0.5], [-2.0, 1.5, 1.0], [2.0, -1.0, 0.0]])  # [B, D]


def linear_gaussian_ref(weights_c, mean_cz, var_cz, *, w=_W, b=_B, s2=_S2, x=_X):
    """log p(x) [B] and the proposal's (mean [B, Z], logvar [B, Z]), float64, for the mixture
    prior (weights_c, mean_cz, var_cz) and p(x|z) = N(x; w z + b, s2 I); x [B, D]."""
    log_px_bc, post_mean_bcz, post_cov_czz = [], [], []
    for pi, mu, var in zip(weights_c, mean_cz, var_cz):
        cov_x = w @ np.diag(var) @ w.T + s2 * np.eye(len(b))
        log_px_bc.append(np.log(pi) + stats.multivariate_normal.logpdf(x, w @ mu + b, cov_x))
        post_cov = np.linalg.inv(np.diag(1 / var) + w.T @ w / s2)
        post_cov_czz.append(post_cov)
        post_mean_bcz.append((post_cov @ (mu / var + (x - b) @ w / s2).T).T)
    log_px_bc = np.stack(log_px_bc, -1)
    log_px_b = special.logsumexp(log_px_bc, axis=-1)
    resp_bc = np.exp(log_px_bc - log_px_b[:, None])
    post_mean_bcz = np.stack(post_mean_bcz, 1)
    mean_bz = np.einsum("bc,bcz->bz", resp_bc, post_mean_bcz)
    second_bz = np.einsum("bc,bcz->bz", resp_bc,
                          np.stack([np.diag(s) for s in post_cov_czz])[None] + post_mean_bcz**2)
    return log_px_b, mean_bz, np.log(2.25 * (second_bz - mean_bz**2))


def _importance_sampled_log_px(prior, params, encode, q_mean_bz, q_logvar_bz, key, k):
    """log 1/K sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q, in float32: [B]."""
    w, b, x = (jnp.asarray(a, jnp.float32) for a in (_W, _B, _X))
    z_kbz = distributions.reparameterize(key, q_mean_bz, q_logvar_bz, num_samples=k)
    log_q_kb = distributions.gaussian_log_density(z_kbz, q_mean_bz, q_logvar_bz)
    log_lik_kb = distributions.gaussian_log_density(x, z_kbz @ w.T + b, jnp.log(_S2))
    log_prior_kb = prior.log_prob(params, z_kbz, encode=encode)
    chex.assert_shape(log_prior_kb, (k, len(_X)))
    return jax.nn.logsumexp(log_lik_kb + log_prior_kb - log_q_kb, axis=0) - jnp.log(k)


def _mixture_case():
    weights = np.array([0.5, 0.3, 0.2])
    mean_cz = np.array([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]])
    var_cz = np.array([[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]])
    prior = priors.make_prior("mixture", num_components=3)
    params = {"logits": np.log(weights), "mean": mean_cz, "logvar": np.log(var_cz)}
    return prior, _to_jax(params), None, (weights, mean_cz, var_cz)


def _vamp_case():
    # The linear encoder makes the VampPrior a uniform mixture of N(A u_c + a, diag exp(logvar))
    # at the clipped pseudo-inputs (two of them have entries outside [0, 1]).
    enc_params = _to_jax({"A": np.array([[2.0, 0.0], [0.0, 1.5], [-1.0, 1.0], [0.5, -2.0]]),
                          "a": np.array([-1.0, 0.3]), "logvar": np.log([0.4, 0.3])})
    u = np.array([[0.0, 0.2, 0.4, 0.3], [1.3, 0.5, 0.0, 0.2], [0.5, -0.4, 0.9, 1.0]])
    params = {"pseudo_inputs": jnp.asarray(u.reshape(3, 2, 1, 2), jnp.float32)}
    prior = priors.make_prior("vamp", num_components=3, posterior=DIAGONAL)
    mean_cz, var_cz = _linear_components_ref(enc_params, params["pseudo_inputs"])
    encode = functools.partial(_linear_encode, enc_params)
    return prior, params, encode, (np.full(3, 1 / 3), mean_cz, var_cz)


class LinearGaussianMarginalTest(chex.TestCase):

    @parameterized.named_parameters(("mixture", _mixture_case), ("vamp", _vamp_case))
    def test_importance_sampling_converges_to_the_closed_form_from_below(self, make_case):
        prior, params, encode, components = make_case()
        log_px_b, q_mean_bz, q_logvar_bz = linear_gaussian_ref(*components)
        q_mean_bz, q_logvar_bz = _to_jax((q_mean_bz, q_logvar_bz))

        @functools.partial(jax.jit, static_argnums=(1, 2))
        def repeated_estimates(key, k, repeats):  # [R, B]
            estimate = functools.partial(_importance_sampled_log_px, prior, params, encode,
                                         q_mean_bz, q_logvar_bz, k=k)
            return jax.vmap(estimate)(jax.random.split(key, repeats))

        # Mean absolute error over repeats and examples shrinks with K (roughly as 1/sqrt(K)).
        errors = {k: np.asarray(repeated_estimates(jax.random.key(k), k, r), np.float64) - log_px_b
                  for k, r in ((10, 10_000), (100, 200), (10_000, 10))}
        mean_abs = [np.mean(np.abs(e)) for e in errors.values()]
        self.assertGreater(mean_abs[0], 2.0 * mean_abs[1])
        self.assertGreater(mean_abs[1], 4.0 * mean_abs[2])
        # K = 10_000: one estimate has SE ~0.007 nats here (measured spread); every one is within
        # 0.05 nats of the closed form, and their mean over 10 repeats within NUM_SE SEs of it
        # (the remaining Jensen bias, ~Var(w)/(2K) ~ 3e-5, and float32 rounding are far below).
        final = errors[10_000]
        np.testing.assert_array_less(np.abs(final), 0.05)
        np.testing.assert_array_less(np.abs(final.mean(0)),
                                     NUM_SE * final.std(0) / np.sqrt(len(final)))
        # Jensen: E[log of the mean weight] < log E[weight] = log p(x), so at K = 10 the average
        # estimate over 10_000 repeats is below the truth for every x, by more than NUM_SE SEs.
        bias_b = errors[10].mean(0)
        se_b = errors[10].std(0) / np.sqrt(len(errors[10]))
        np.testing.assert_array_less(bias_b, -NUM_SE * se_b)


if __name__ == "__main__":
    absltest.main()
