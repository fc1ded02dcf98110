"""Tests for the two-stochastic-layer VAE: `models.HierarchicalEncoder` / `HierarchicalDecoder`
and `losses.hierarchical_log_weights` / `hierarchical_elbo` / `hierarchical_iwae_bound`.

The float64 reference redoes every forward pass in numpy from the parameters read out of the
Flax tree. The latent noise is reproduced by calling `jax.random` exactly as
`hierarchical_log_weights` documents it: example b with global id i and sample j gets
`z1_key, z2_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, i), j))`,
eps1 = normal(z1_key, (Z1,)), eps2 = normal(z2_key, (Z2,)). Everything downstream of the noise
(networks, reparameterisation, densities, reductions) is recomputed independently.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

from vae_jax import losses, models

TINY_SHAPE = (2, 3, 1)  # a 6-pixel "image"
TINY_DIMS = (3, 2)
TINY_HIDDEN = ((4,), (3,))
TINY_BATCH, TINY_K = 4, 3

# Jitted once per module: the modules are hashable static arguments, so tests that share
# shapes share the compiled program (compilation dominates the run time of this file).
_STATIC = ("encoder", "decoder", "likelihood", "num_samples")
log_weights_jit = jax.jit(losses.hierarchical_log_weights, static_argnames=_STATIC)
elbo_jit = jax.jit(losses.hierarchical_elbo, static_argnames=_STATIC)
iwae_jit = jax.jit(losses.hierarchical_iwae_bound, static_argnames=_STATIC)


def _tiny_models(image_shape=TINY_SHAPE, latent_dims=TINY_DIMS, hidden=TINY_HIDDEN):
    encoder = models.HierarchicalEncoder(latent_dims=latent_dims, hidden=hidden)
    decoder = models.HierarchicalDecoder(image_shape, latent_dims=latent_dims, hidden=hidden)
    return encoder, decoder


def _random_params(encoder, decoder, image_shape, seed=0, scale=0.5):
    """Random float32 parameters N(0, scale^2) in the Flax layout (larger than a default init,
    so that the second layer and p(z1 | z2) matter)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "encoder": jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1,) + image_shape)),
        "decoder": jax.eval_shape(
            decoder.init, jax.random.key(0), jnp.zeros((1, encoder.latent_dims[0]))
        ),
    }
    return jax.tree.map(
        lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape), jnp.float32), shapes
    )


def _binary_data(rng, n, image_shape):
    return (rng.random((n,) + image_shape) < 0.4).astype(np.float32)


# --------------------------------------------------------------------------- float64 reference


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _np_hidden(p, h):
    i = 0
    while f"hidden_{i}" in p:
        h = np.tanh(h @ p[f"hidden_{i}"]["kernel"] + p[f"hidden_{i}"]["bias"])
        i += 1
    return h


def _np_gaussian_head(p, h):
    h = _np_hidden(p, h)
    return (h @ p["mean"]["kernel"] + p["mean"]["bias"],
            h @ p["logvar"]["kernel"] + p["logvar"]["bias"])


def _np_log_normal(z, mean, logvar):
    return stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)


def _reference_log_weights(params, x, key, example_ids, num_samples, latent_dims):
    """log w [K, B] in float64 numpy, from the parameters and the documented noise."""
    enc, dec = _np(params["encoder"]["params"]), _np(params["decoder"]["params"])
    x_bd = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    out = np.zeros((num_samples, x.shape[0]))
    for b, example_id in enumerate(example_ids):
        key_b = jax.random.fold_in(key, int(example_id))
        mean1, logvar1 = _np_gaussian_head(enc["layer_1"], x_bd[b])
        for j in range(num_samples):
            z1_key, z2_key = jax.random.split(jax.random.fold_in(key_b, j))
            eps1 = np.asarray(jax.random.normal(z1_key, (latent_dims[0],)), np.float64)
            eps2 = np.asarray(jax.random.normal(z2_key, (latent_dims[1],)), np.float64)
            z1 = mean1 + np.exp(0.5 * logvar1) * eps1
            mean2, logvar2 = _np_gaussian_head(enc["layer_2"], z1)
            z2 = mean2 + np.exp(0.5 * logvar2) * eps2
            prior_mean1, prior_logvar1 = _np_gaussian_head(dec["layer_2"], z2)
            p1 = dec["layer_1"]
            logits = _np_hidden(p1, z1) @ p1["output"]["kernel"] + p1["output"]["bias"]
            log_px = np.sum(x_bd[b] * logits - np.logaddexp(0.0, logits))
            out[j, b] = (
                log_px
                + _np_log_normal(z1, prior_mean1, prior_logvar1)
                + _np_log_normal(z2, 0.0, 0.0)
                - _np_log_normal(z1, mean1, logvar1)
                - _np_log_normal(z2, mean2, logvar2)
            )
    return out


# --------------------------------------------------------------------------- models


def test_shapes_of_every_method_and_of_the_log_weights():
    batch, k = 3, 4
    encoder = models.HierarchicalEncoder()
    decoder = models.HierarchicalDecoder((28, 28, 1))
    x = jnp.zeros((batch, 28, 28, 1))
    enc_vars = jax.eval_shape(encoder.init, jax.random.key(0), x)
    dec_vars = jax.eval_shape(decoder.init, jax.random.key(1), jnp.zeros((batch, 100)))

    def every_method(enc_vars, dec_vars):
        mean1, logvar1 = encoder.apply(enc_vars, x)
        mean2, logvar2 = encoder.apply(enc_vars, mean1, method="encode_z2")
        prior_mean, prior_logvar = decoder.apply(dec_vars, mean2, method="prior_z1")
        logits = decoder.apply(dec_vars, mean1)
        params = {"encoder": enc_vars, "decoder": dec_vars}
        log_w = losses.hierarchical_log_weights(params, x, jax.random.key(2), encoder=encoder,
                                                decoder=decoder, num_samples=k)
        return mean1, logvar1, mean2, logvar2, prior_mean, prior_logvar, logits, log_w

    out = jax.eval_shape(every_method, enc_vars, dec_vars)
    assert [o.shape for o in out] == (
        [(batch, 100)] * 2 + [(batch, 50)] * 2 + [(batch, 100)] * 2
        + [(batch, 28, 28, 1), (k, batch)]
    )


def _dense(n_in, n_out):
    return n_in * n_out + n_out


def test_parameter_count_of_burda_two_layer_model():
    encoder = models.HierarchicalEncoder(latent_dims=(100, 50), hidden=((200, 200), (100, 100)))
    decoder = models.HierarchicalDecoder((28, 28, 1))
    enc_vars = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    dec_vars = jax.eval_shape(decoder.init, jax.random.key(0), jnp.zeros((1, 100)))
    count = lambda tree: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))  # noqa: E731
    # q(z1|x): 784-200-200 then mean and logvar heads to 100; q(z2|z1): 100-100-100 then 2 x 50.
    q_count = (_dense(784, 200) + _dense(200, 200) + 2 * _dense(200, 100)
               + _dense(100, 100) + _dense(100, 100) + 2 * _dense(100, 50))
    # p(z1|z2): 50-100-100 then 2 x 100; p(x|z1): 100-200-200-784.
    p_count = (_dense(50, 100) + _dense(100, 100) + 2 * _dense(100, 100)
               + _dense(100, 200) + _dense(200, 200) + _dense(200, 784))
    assert count(enc_vars) == q_count == 267_700
    assert count(dec_vars) == p_count == 253_384


def test_modules_are_hashable_and_reject_a_wrong_number_of_layers():
    encoder = models.HierarchicalEncoder(latent_dims=[4, 2], hidden=[[8], [4]])
    assert hash(encoder) == hash(models.HierarchicalEncoder(latent_dims=(4, 2),
                                                            hidden=((8,), (4,))))
    hash(models.HierarchicalDecoder([2, 2, 1], latent_dims=[4, 2], hidden=[[8], [4]]))
    with pytest.raises(ValueError, match="two stochastic layers"):
        models.HierarchicalEncoder(latent_dims=(4, 2, 1), hidden=((8,), (4,), (2,)))


# --------------------------------------------------------------------------- log weights


def test_log_weights_match_float64_reference():
    encoder, decoder = _tiny_models()
    params = _random_params(encoder, decoder, TINY_SHAPE)
    x = jnp.asarray(_binary_data(np.random.default_rng(1), TINY_BATCH, TINY_SHAPE))
    key, example_ids, k = jax.random.key(7), jnp.array([5, 0, 11, 2]), TINY_K
    log_w = log_weights_jit(params, x, key, encoder=encoder, decoder=decoder, num_samples=k,
                            example_ids=example_ids)
    expected = _reference_log_weights(params, x, key, example_ids, k, TINY_DIMS)
    np.testing.assert_allclose(log_w, expected, rtol=1e-5, atol=1e-4)

    _, elbo_metrics = elbo_jit(params, x, key, encoder=encoder, decoder=decoder, num_samples=k,
                               example_ids=example_ids)
    np.testing.assert_allclose(elbo_metrics["per_example"]["elbo"], expected.mean(0),
                               rtol=1e-5, atol=1e-4)
    _, iwae_metrics = iwae_jit(params, x, key, encoder=encoder, decoder=decoder, num_samples=k,
                               example_ids=example_ids)
    np.testing.assert_allclose(iwae_metrics["per_example"]["iwae"],
                               special.logsumexp(expected, axis=0) - np.log(k),
                               rtol=1e-5, atol=1e-4)


def test_elbo_terms_add_up_and_kl_per_dim_sums_to_kl():
    encoder, decoder = _tiny_models()
    params = _random_params(encoder, decoder, TINY_SHAPE)
    x = jnp.asarray(_binary_data(np.random.default_rng(2), TINY_BATCH, TINY_SHAPE))
    loss, metrics = elbo_jit(params, x, jax.random.key(0), encoder=encoder, decoder=decoder,
                             num_samples=TINY_K, beta=0.5, example_ids=jnp.arange(TINY_BATCH))
    per = metrics["per_example"]
    chex.assert_shape([per["kl_per_dim"], per["mean"]], (TINY_BATCH, sum(TINY_DIMS)))
    np.testing.assert_allclose(per["elbo"], -(per["recon"] + per["kl"]), rtol=1e-6)
    np.testing.assert_allclose(per["kl_per_dim"].sum(-1), per["kl"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, metrics["recon_nats"] + 0.5 * metrics["kl_nats"], rtol=1e-6)
    mean1, _ = encoder.apply(params["encoder"], x)
    np.testing.assert_allclose(per["mean"][:, : TINY_DIMS[0]], mean1, rtol=1e-6)


def test_noise_depends_only_on_example_id_and_sample_index():
    encoder, decoder = _tiny_models()
    params = _random_params(encoder, decoder, TINY_SHAPE)
    x = jnp.asarray(_binary_data(np.random.default_rng(3), 2 * TINY_BATCH, TINY_SHAPE))
    fn = functools.partial(log_weights_jit, params, key=jax.random.key(1), encoder=encoder,
                           decoder=decoder, num_samples=TINY_K)
    ids = jnp.arange(2 * TINY_BATCH)
    full = fn(x, example_ids=ids)
    halves = [fn(x[:TINY_BATCH], example_ids=ids[:TINY_BATCH]),
              fn(x[TINY_BATCH:], example_ids=ids[TINY_BATCH:])]
    np.testing.assert_allclose(jnp.concatenate(halves, axis=1), full, rtol=1e-6)
    # Sample j is the same whichever call draws it: starting at first_sample = 1 shifts by one.
    shifted = fn(x[:TINY_BATCH], example_ids=ids[:TINY_BATCH], first_sample=1)
    np.testing.assert_allclose(shifted[:-1], halves[0][1:], rtol=1e-6)


# --------------------------------------------------------------------------- bounds


def test_iwae_is_above_the_elbo_and_grows_with_k():
    image_shape = (4, 4, 1)
    encoder, decoder = _tiny_models(image_shape, latent_dims=(4, 2), hidden=((8,), (6,)))
    params = _random_params(encoder, decoder, image_shape, seed=3)
    x = jnp.asarray(_binary_data(np.random.default_rng(4), 64, image_shape))
    # The bounds are the reductions of the log weights checked against float64 above, and the
    # K draws of L_K are the first K of L_50's (tested above), so the ELBO, L_1, L_5 and L_50
    # come from one [50, B] array: common random numbers, and one compilation.
    log_w = np.asarray(log_weights_jit(params, x, jax.random.key(5), encoder=encoder,
                                       decoder=decoder, num_samples=50), np.float64)
    elbo = log_w.mean()
    bounds = [np.mean(special.logsumexp(log_w[:k], axis=0) - np.log(k)) for k in (1, 5, 50)]
    assert elbo < bounds[1] < bounds[2]
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] - bounds[0] > 0.5  # a clear gap, not float noise


def test_iwae_with_one_sample_equals_the_elbo():
    image_shape = (4, 4, 1)
    encoder, decoder = _tiny_models(image_shape, latent_dims=(4, 2), hidden=((8,), (6,)))
    params = _random_params(encoder, decoder, image_shape, seed=6)
    x = jnp.asarray(_binary_data(np.random.default_rng(7), 256, image_shape))
    common = dict(encoder=encoder, decoder=decoder, num_samples=1)
    # On the same draw L_1 is the one-sample ELBO exactly.
    _, elbo_same = elbo_jit(params, x, jax.random.key(0), **common)
    _, iwae_same = iwae_jit(params, x, jax.random.key(0), **common)
    np.testing.assert_allclose(iwae_same["per_example"]["iwae"],
                               elbo_same["per_example"]["elbo"], rtol=1e-6)
    # On independent draws they agree in expectation: Monte Carlo, 4 standard errors.
    _, elbo_other = elbo_jit(params, x, jax.random.key(1), **common)
    a = np.asarray(iwae_same["per_example"]["iwae"], np.float64)
    b = np.asarray(elbo_other["per_example"]["elbo"], np.float64)
    standard_error = np.std(a - b, ddof=1) / np.sqrt(a.size)
    assert abs(a.mean() - b.mean()) < 4 * standard_error


def test_jit_and_eager_agree():
    encoder, decoder = _tiny_models()
    params = _random_params(encoder, decoder, TINY_SHAPE)
    x = jnp.asarray(_binary_data(np.random.default_rng(8), TINY_BATCH, TINY_SHAPE))
    key = jax.random.key(3)
    common = dict(encoder=encoder, decoder=decoder, num_samples=TINY_K,
                  example_ids=jnp.arange(TINY_BATCH))
    chex.assert_trees_all_close(elbo_jit(params, x, key, **common),
                                losses.hierarchical_elbo(params, x, key, **common),
                                rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(iwae_jit(params, x, key, **common),
                                losses.hierarchical_iwae_bound(params, x, key, **common),
                                rtol=1e-5, atol=1e-5)


def test_jitted_bound_traces_once_across_calls():
    chex.clear_trace_counter()
    encoder, decoder = _tiny_models()
    params = _random_params(encoder, decoder, TINY_SHAPE)
    counted = chex.assert_max_traces(losses.hierarchical_iwae_bound, n=1)
    fn = jax.jit(functools.partial(counted, encoder=encoder, decoder=decoder, num_samples=TINY_K))
    rng = np.random.default_rng(9)
    for step in range(3):
        fn(params, jnp.asarray(_binary_data(rng, TINY_BATCH, TINY_SHAPE)), jax.random.key(step))


@pytest.mark.parametrize("loss_name", ["hierarchical_elbo", "hierarchical_iwae_bound"])
def test_value_and_grad_is_finite_and_reaches_every_parameter(loss_name):
    encoder, decoder = _tiny_models()
    params = _random_params(encoder, decoder, TINY_SHAPE)
    x = jnp.asarray(_binary_data(np.random.default_rng(10), TINY_BATCH, TINY_SHAPE))
    loss_fn = functools.partial(getattr(losses, loss_name), encoder=encoder, decoder=decoder,
                                num_samples=TINY_K)
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, _), grads = value_and_grad(params, x, jax.random.key(0))
    chex.assert_tree_all_finite((loss, grads))
    chex.assert_trees_all_equal_shapes(grads, params)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.any(np.asarray(grad) != 0.0), jax.tree_util.keystr(path)


# --------------------------------------------------------------------------- training sanity


def test_training_improves_the_bound_on_bernoulli_data():
    """100 Adam steps on noisy copies of 4 binary 6x6 prototypes raise the held-out L_10."""
    image_shape = (6, 6, 1)
    rng = np.random.default_rng(11)
    prototypes = (rng.random((4,) + image_shape) < 0.5).astype(np.float32)

    def sample(n):
        clean = prototypes[rng.integers(0, 4, n)]
        flips = rng.random(clean.shape) < 0.05
        return jnp.asarray(np.where(flips, 1.0 - clean, clean))

    train_x, test_x = sample(256), sample(128)
    encoder, decoder = _tiny_models(image_shape, latent_dims=(4, 2), hidden=((32,), (16,)))
    init_key, train_key, eval_key = jax.random.split(jax.random.key(12), 3)
    enc_key, dec_key = jax.random.split(init_key)
    params = {"encoder": jax.jit(encoder.init)(enc_key, train_x[:1]),
              "decoder": jax.jit(decoder.init)(dec_key, jnp.zeros((1, 4)))}
    optimizer = optax.adam(1e-2)
    loss_fn = functools.partial(losses.hierarchical_elbo, encoder=encoder, decoder=decoder)
    bound = jax.jit(functools.partial(losses.hierarchical_iwae_bound, encoder=encoder,
                                      decoder=decoder, num_samples=10))

    def train_step(carry, step):
        params, opt_state = carry
        grads, _ = jax.grad(loss_fn, has_aux=True)(params, train_x,
                                                   jax.random.fold_in(train_key, step))
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    before = float(bound(params, test_x, eval_key)[1]["iwae_nats"])
    train = jax.jit(lambda carry: jax.lax.scan(train_step, carry, jnp.arange(100))[0])
    params, _ = train((params, optimizer.init(params)))
    after = float(bound(params, test_x, eval_key)[1]["iwae_nats"])
    assert np.isfinite(after)
    assert after > before + 5.0, (before, after)

