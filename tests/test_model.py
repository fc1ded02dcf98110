"""Tests of vae_jax.model: the one log-weight function and its reductions, against float64."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from vae_jax import likelihoods, models, posteriors, priors
from vae_jax import model as model_lib

IMAGE = (3, 3, 1)


def make_model(num_layers=1, latent=3, prior="standard_normal", posterior="diagonal"):
    post = posteriors.make_posterior(posterior)
    dims = (latent,) + tuple(2 for _ in range(num_layers - 1))
    prior_obj = (priors.make_prior(prior, num_components=4, posterior=post) if prior == "vamp"
                 else priors.make_prior(prior))
    return model_lib.VAE(
        encoder=models.MLPEncoder(dims[0], hidden=(5,), activation="tanh",
                                  extra_dim=post.extra_dim(dims[0])),
        decoder=models.MLPDecoder(IMAGE, hidden=(5,), activation="tanh"),
        likelihood=likelihoods.make_likelihood("bernoulli"),
        prior=prior_obj,
        posterior=post,
        latent_dims=dims,
        upper_encoders=tuple(models.MLPEncoder(d, hidden=(4,), activation="tanh")
                             for d in dims[1:]),
        upper_priors=tuple(models.MLPEncoder(d, hidden=(4,), activation="tanh")
                           for d in dims[:-1]),
    )


def data(batch=4, seed=0):
    return (np.random.default_rng(seed).uniform(size=(batch,) + IMAGE) > 0.5).astype(np.float32)


def reference_noise(key, example_ids, num_samples, layer, dim):
    """The documented scheme with jax.random (bit-identical to vae_jax.fastpath): [K, B, Z]."""
    out = np.zeros((num_samples, len(example_ids), dim))
    for b, i in enumerate(example_ids):
        key_b = jax.random.fold_in(key, i)
        for j in range(num_samples):
            key_l = jax.random.fold_in(jax.random.fold_in(key_b, j), layer)
            out[j, b] = np.asarray(jax.random.normal(key_l, (dim,)), np.float64)
    return out


def bernoulli_log_prob(logits, x):
    logits = np.asarray(logits, np.float64).reshape(len(x), -1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)


def test_log_weights_of_one_layer_match_a_float64_recomputation():
    vae = make_model()
    params = vae.init(jax.random.key(0), IMAGE)
    x = data()
    key = jax.random.key(7)
    draw = jax.jit(lambda p, x: vae.log_weights(p, x, key, num_samples=5))(params, x)
    chex.assert_shape([draw.weights.log_px_z, draw.weights.log_pz, draw.weights.log_qz], (5, 4))
    mean, logvar = (np.asarray(a, np.float64) for a in vae.encode(params, x)[:2])
    eps = reference_noise(key, range(4), 5, layer=0, dim=3)
    z = mean + np.exp(0.5 * logvar) * eps
    np.testing.assert_allclose(draw.z[0], z, rtol=1e-5, atol=1e-5)
    log_q = stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)
    log_p = stats.norm.logpdf(z).sum(-1)
    logits = vae.decode(params, jnp.asarray(z.reshape(20, 3), jnp.float32))
    log_px = bernoulli_log_prob(logits, np.broadcast_to(x, (5,) + x.shape).reshape(20, -1))
    np.testing.assert_allclose(draw.weights.log_qz, log_q, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(draw.weights.log_pz, log_p, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(draw.weights.log_px_z, log_px.reshape(5, 4), rtol=1e-5, atol=1e-4)


def test_log_weights_of_two_layers_match_a_float64_recomputation():
    vae = make_model(num_layers=2)
    params = vae.init(jax.random.key(1), IMAGE)
    x = data(batch=3)
    key = jax.random.key(3)
    draw = vae.log_weights(params, x, key, num_samples=2)
    mean1, logvar1 = (np.asarray(a, np.float64) for a in vae.encode(params, x)[:2])
    z1 = mean1 + np.exp(0.5 * logvar1) * reference_noise(key, range(3), 2, 0, 3)
    z1_32 = jnp.asarray(z1.reshape(6, 3), jnp.float32)
    mean2, logvar2 = (np.asarray(a, np.float64).reshape(2, 3, 2) for a in
                      vae.upper_encoders[0].apply(params["upper_encoders"][0], z1_32))
    z2 = mean2 + np.exp(0.5 * logvar2) * reference_noise(key, range(3), 2, 1, 2)
    pm, plv = (np.asarray(a, np.float64).reshape(2, 3, 3) for a in vae.upper_priors[0].apply(
        params["upper_priors"][0], jnp.asarray(z2.reshape(6, 2), jnp.float32)))
    log_q = (stats.norm.logpdf(z1, mean1, np.exp(0.5 * logvar1)).sum(-1)
             + stats.norm.logpdf(z2, mean2, np.exp(0.5 * logvar2)).sum(-1))
    log_p = stats.norm.logpdf(z2).sum(-1) + stats.norm.logpdf(z1, pm, np.exp(0.5 * plv)).sum(-1)
    np.testing.assert_allclose(draw.z[1], z2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(draw.weights.log_qz, log_q, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(draw.weights.log_pz, log_p, rtol=1e-4, atol=1e-3)


def test_noise_depends_on_the_example_id_not_the_batch_layout():
    vae = make_model()
    params = vae.init(jax.random.key(0), IMAGE)
    x = data(batch=6)
    key = jax.random.key(2)
    whole = vae.log_weights(params, x, key, num_samples=3).weights.log_w
    halves = [vae.log_weights(params, x[i:i + 3], key, num_samples=3,
                              example_ids=jnp.arange(i, i + 3)).weights.log_w for i in (0, 3)]
    np.testing.assert_allclose(whole, np.concatenate(halves, axis=1), rtol=1e-6)
    # The draws for K are the first K of those for a larger K.
    more = vae.log_weights(params, x, key, num_samples=7).weights.log_w
    np.testing.assert_allclose(whole, more[:3], rtol=1e-6)
    later = vae.log_weights(params, x, key, num_samples=4, first_sample=3).weights.log_w
    np.testing.assert_allclose(later, more[3:], rtol=1e-6)


@pytest.mark.parametrize("num_samples, chunk_size", [(7, 3), (1, 100), (6, 2), (5, 5)])
def test_log_likelihood_estimate_equals_one_pass_for_any_k(num_samples, chunk_size):
    vae = make_model(num_layers=2)
    params = vae.init(jax.random.key(0), IMAGE)
    x = data(batch=3)
    key = jax.random.key(4)
    estimate = jax.jit(lambda p, x: model_lib.log_likelihood_estimate(
        vae, p, x, key, num_samples=num_samples, chunk_size=chunk_size))(params, x)
    log_w = np.asarray(vae.log_weights(params, x, key, num_samples=num_samples).weights.log_w,
                       np.float64)
    np.testing.assert_allclose(estimate, logsumexp(log_w, axis=0) - np.log(num_samples),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="num_samples=0"):
        model_lib.log_likelihood_estimate(vae, params, x, key, num_samples=0)


def test_closed_form_kl_agrees_with_the_sampled_one():
    vae = make_model()
    params = vae.init(jax.random.key(5), IMAGE)
    x = data(batch=2)
    draw = vae.log_weights(params, x, jax.random.key(6), num_samples=20000)
    kl_b, kl_bz = vae.analytic_kl(params, draw.encoded)
    sampled = np.mean(np.asarray(draw.weights.log_qz - draw.weights.log_pz, np.float64), 0)
    np.testing.assert_allclose(kl_b, sampled, atol=0.05)
    np.testing.assert_allclose(np.sum(kl_bz, -1), kl_b, rtol=1e-6)
    assert make_model(num_layers=2).analytic_kl(params, draw.encoded) is None


def test_two_layer_prior_samples_are_ancestral():
    vae = make_model(num_layers=2)
    params = vae.init(jax.random.key(0), IMAGE)
    z1 = vae.sample_prior(params, jax.random.key(1), 20000)
    chex.assert_shape(z1, (20000, 3))
    # E[z1] = E_{z2 ~ N(0, I)} [mean(z2)], estimated independently from fresh z2 draws.
    z2 = jax.random.normal(jax.random.key(9), (20000, 2))
    mean, _ = vae.upper_priors[0].apply(params["upper_priors"][0], z2)
    np.testing.assert_allclose(np.mean(z1, 0), np.mean(mean, 0), atol=0.05)


def test_layer_counts_must_match():
    vae = make_model(num_layers=2)
    with pytest.raises(ValueError, match="2 latent layers need 1 upper encoders"):
        model_lib.VAE(encoder=vae.encoder, decoder=vae.decoder, likelihood=vae.likelihood,
                      prior=vae.prior, posterior=vae.posterior, latent_dims=(3, 2))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_a_full_covariance_posterior_starts_diagonal(num_layers):
    # The Cholesky off-diagonal head starts at zero (kernel and bias), so q starts as the
    # diagonal Gaussian of the same encoder; the IAF context head keeps its random start.
    from vae_jax import config_defaults

    def built(posterior):
        mc = config_defaults.default_config().model
        mc.update(posterior=posterior, num_layers=num_layers, latent_dim=4, hidden=(8,))
        vae = model_lib.build_model(mc, IMAGE)
        return vae, vae.init(jax.random.key(0), IMAGE)

    vae, params = built("full_covariance")
    heads = [params["encoder"]["params"]["extra"]] + [
        p["params"]["extra"] for p in params.get("upper_encoders", [])]
    assert len(heads) == num_layers
    for head in heads:
        assert not np.any(np.asarray(head["kernel"])) and not np.any(np.asarray(head["bias"]))
    scale_bzz = np.asarray(vae.posterior.scale_tril(vae.encode(params, data())))
    np.testing.assert_array_equal(scale_bzz, np.tril(np.triu(scale_bzz)))
    assert np.all(np.diagonal(scale_bzz, axis1=1, axis2=2) > 0)
    # Gradients reach the zero head: it is trained, not frozen.
    _, iaf_params = built("iaf")
    assert np.any(np.asarray(iaf_params["encoder"]["params"]["extra"]["kernel"]))
    grads = jax.grad(lambda p: jnp.sum(vae.log_weights(
        p, data(), jax.random.key(1), num_samples=2).weights.log_w))(params)
    assert np.any(np.asarray(grads["encoder"]["params"]["extra"]["kernel"]))


# --------------------------------------------------------------------------- top-down hierarchy


def make_top_down(prior="vamp", posterior="diagonal", z1=3, z2=2):
    """The VampPrior paper's two-level model, small: q(z_2 | x), q(z_1 | x, z_2), p(z_1 | z_2),
    p(x | z_1, z_2), a VampPrior of 4 pseudo-inputs on z_2."""
    post = posteriors.make_posterior(posterior)
    prior_obj = (priors.make_prior(prior, num_components=4, posterior=post) if prior == "vamp"
                 else priors.make_prior(prior))
    return model_lib.VAE(
        encoder=models.MLPEncoder(z2, hidden=(5,), gated=True, extra_dim=post.extra_dim(z2)),
        decoder=models.SkipDecoder(IMAGE, latent_splits=(z1, z2), branch_width=4, hidden=(5,)),
        likelihood=likelihoods.make_likelihood("bernoulli"),
        prior=prior_obj, posterior=post, latent_dims=(z1, z2),
        upper_encoders=(models.ConditionalEncoder(z1, hidden=(4,), x_hidden=(6,),
                                                  extra_dim=post.extra_dim(z1)),),
        upper_priors=(models.MLPEncoder(z1, hidden=(4,), gated=True),),
        hierarchy="vampprior")


def test_top_down_log_weights_match_a_float64_recomputation():
    """z_2 ~ q(z_2 | x) from noise layer 1, then z_1 ~ q(z_1 | x, z_2) from noise layer 0;
    log p = log VampPrior(z_2) + log N(z_1; p(z_1 | z_2)); the decoder reads [z_1, z_2]."""
    vae = make_top_down()
    params = vae.init(jax.random.key(1), IMAGE)
    x = data(batch=3)
    key = jax.random.key(3)
    draw = jax.jit(lambda p, x: vae.log_weights(p, x, key, num_samples=2))(params, x)
    f64 = functools.partial(np.asarray, dtype=np.float64)
    mean2, logvar2 = (f64(a) for a in vae.encode(params, x)[:2])
    z2 = mean2 + np.exp(0.5 * logvar2) * reference_noise(key, range(3), 2, 1, 2)  # [K, B, 2]
    z2_32 = jnp.asarray(z2, jnp.float32)
    mean1, logvar1 = (f64(a) for a in vae.upper_encoders[0].apply(
        params["upper_encoders"][0], x, z2_32))
    z1 = mean1 + np.exp(0.5 * logvar1) * reference_noise(key, range(3), 2, 0, 3)
    pm, plv = (f64(a).reshape(2, 3, 3) for a in vae.upper_priors[0].apply(
        params["upper_priors"][0], z2_32.reshape(6, 2)))
    # The VampPrior: a mixture of q(z_2 | u_c) over the pseudo-inputs u_c.
    u = params["prior"]["pseudo_inputs"]
    um, ulv = (f64(a) for a in vae.encode(params, jnp.clip(u, 0.0, 1.0))[:2])
    log_mix = logsumexp(stats.norm.logpdf(z2[:, :, None], um, np.exp(0.5 * ulv)).sum(-1),
                        axis=-1) - np.log(len(um))
    log_q = (stats.norm.logpdf(z2, mean2, np.exp(0.5 * logvar2)).sum(-1)
             + stats.norm.logpdf(z1, mean1, np.exp(0.5 * logvar1)).sum(-1))
    log_p = log_mix + stats.norm.logpdf(z1, pm, np.exp(0.5 * plv)).sum(-1)
    logits = vae.decode(params, jnp.asarray(np.concatenate([z1, z2], -1).reshape(6, 5),
                                            jnp.float32))
    log_px = bernoulli_log_prob(logits, np.broadcast_to(x, (2,) + x.shape).reshape(6, -1))
    np.testing.assert_allclose(draw.z[1], z2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(draw.z[0], z1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(draw.weights.log_qz, log_q, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(draw.weights.log_pz, log_p, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(draw.weights.log_px_z, log_px.reshape(2, 3), rtol=1e-5,
                               atol=1e-4)
    # Point summaries come in layer order [z_1, z_2]; z_2's is q(z_2 | x)'s mean.
    points = np.asarray(vae.points(params, draw))
    np.testing.assert_allclose(points[:, 3:], mean2, rtol=1e-6)
    np.testing.assert_allclose(points[:, :3], mean1.mean(0), rtol=1e-5, atol=1e-6)


def test_top_down_point_and_prior_samples_feed_the_decoder():
    vae = make_top_down(prior="standard_normal")
    params = vae.init(jax.random.key(0), IMAGE)
    x = data(batch=4)
    assert vae.decoder_input_dim == 5 and vae.encoded_layer == 1
    point = np.asarray(vae.point(params, x))
    chex.assert_shape(point, (4, 5))
    mean2 = np.asarray(vae.encode(params, x).mean)
    mean1 = vae.upper_encoders[0].apply(params["upper_encoders"][0], x, mean2)[0]
    np.testing.assert_allclose(point, np.concatenate([mean1, mean2], -1), rtol=1e-6)
    # Ancestral: z_2 ~ N(0, I), z_1 ~ p(z_1 | z_2); E[z_1] from fresh z_2 draws.
    z = np.asarray(vae.sample_prior(params, jax.random.key(1), 20000))
    chex.assert_shape(z, (20000, 5))
    np.testing.assert_allclose(z[:, 3:].mean(0), 0.0, atol=0.03)
    np.testing.assert_allclose(z[:, 3:].std(0), 1.0, atol=0.03)
    z2 = jax.random.normal(jax.random.key(9), (20000, 2))
    mean, _ = vae.upper_priors[0].apply(params["upper_priors"][0], z2)
    np.testing.assert_allclose(z[:, :3].mean(0), np.mean(mean, 0), atol=0.05)
    chex.assert_shape(vae.decode(params, jnp.asarray(z[:7])), (7,) + IMAGE)


@pytest.mark.parametrize("posterior", ["diagonal", "iaf"])
def test_top_down_nll_estimate_is_chunked_like_one_pass(posterior):
    vae = make_top_down(posterior=posterior)
    params = vae.init(jax.random.key(0), IMAGE)
    x = data(batch=3)
    key = jax.random.key(4)
    estimate = model_lib.log_likelihood_estimate(vae, params, x, key, num_samples=7,
                                                 chunk_size=3)
    log_w = np.asarray(vae.log_weights(params, x, key, num_samples=7).weights.log_w,
                       np.float64)
    np.testing.assert_allclose(estimate, logsumexp(log_w, axis=0) - np.log(7), rtol=1e-5)


def test_the_vampprior_hierarchy_is_built_by_name_and_burda_refuses_a_deep_vampprior():
    from vae_jax import config_defaults

    mc = config_defaults.default_config().model
    mc.update(num_layers=2, upper_latent_dims=(2,), latent_dim=3, hidden=(6, 5),
              encoder="gated_mlp", decoder="gated_mlp", prior="vamp", prior_components=3)
    with pytest.raises(ValueError, match="hierarchy='vampprior'"):
        model_lib.build_model(mc, IMAGE)
    mc.hierarchy = "vampprior"
    vae = model_lib.build_model(mc, IMAGE)
    assert vae.top_down and isinstance(vae.decoder, models.SkipDecoder)
    assert isinstance(vae.upper_encoders[0], models.ConditionalEncoder)
    assert vae.upper_priors[0].hidden == (6, 5) and vae.upper_priors[0].gated
    params = vae.init(jax.random.key(0), IMAGE)
    assert params["prior"]["pseudo_inputs"].shape == (3,) + IMAGE
    assert params["encoder"]["params"]["mean"]["kernel"].shape == (5, 2)  # q(z_2 | x)
    mc.hierarchy = "ladder"
    with pytest.raises(ValueError, match="unknown model.hierarchy 'ladder'"):
        model_lib.build_model(mc, IMAGE)
    mc.update(hierarchy="vampprior", decoder="conv")
    with pytest.raises(ValueError, match="p\\(x \\| z_1, ..., z_L\\)"):
        model_lib.build_model(mc, IMAGE)


def test_a_logvar_range_reaches_every_gaussian_network_and_a_bad_one_is_refused():
    from vae_jax import config_defaults

    mc = config_defaults.default_config().model
    mc.update(num_layers=2, upper_latent_dims=(2,), latent_dim=3, hidden=(6, 5),
              encoder="gated_mlp", decoder="gated_mlp", prior="vamp", prior_components=3,
              hierarchy="vampprior", logvar_range=(-6.0, 2.0))
    vae = model_lib.build_model(mc, IMAGE)
    # q(z_2 | x) (and through it the VampPrior's components), q(z_1 | x, z_2), p(z_1 | z_2).
    for network in (vae.encoder, *vae.upper_encoders, *vae.upper_priors):
        assert network.logvar_range == (-6.0, 2.0)
    for bad in ((2.0, -6.0), (-6.0,), (-6.0, 0.0, 2.0)):
        mc.logvar_range = bad
        with pytest.raises(ValueError, match="model.logvar_range"):
            model_lib.build_model(mc, IMAGE)
