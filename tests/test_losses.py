"""Tests for `vae_jax.losses` against independent float64 numpy / scipy references.

The encoder and decoder are tiny linear Flax modules defined here (not `vae_jax.models`), with
parameters drawn in numpy, so every forward pass can be redone by hand in float64.

The latent noise is reproduced by calling `jax.random` exactly as `vae_jax.model` documents it:
sample j of the example with global id i gets
eps = jax.random.normal(fold_in(fold_in(fold_in(key, i), j), 0), (Z,)) (layer 0).
Everything downstream of eps (encoder, reparameterisation, decoder, log-densities, KL,
reductions, logsumexp) is recomputed in float64 numpy / scipy.
"""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec
from scipy import integrate, special, stats

from vae_jax import losses

H, W, C = 3, 4, 2  # a tiny "image"
D = H * W * C
Z = 3
NUM_BINS = 256


class LinearEncoder(nn.Module):
    """x [B, H, W, C] -> (mean [B, Z], logvar [B, Z]), each an affine map of the flat pixels."""

    latent_dim: int

    @nn.compact
    def __call__(self, x):
        h = x.reshape((x.shape[0], -1))
        mean_bz = nn.Dense(self.latent_dim, name="mean")(h)
        logvar_bz = nn.Dense(self.latent_dim, name="logvar")(h)
        return mean_bz, logvar_bz


class LinearDecoder(nn.Module):
    """z [N, Z] -> [N, H, W, C * P], an affine map."""

    out_shape: tuple

    @nn.compact
    def __call__(self, z):
        out = nn.Dense(math.prod(self.out_shape), name="out")(z)
        return out.reshape((z.shape[0],) + tuple(self.out_shape))


ENCODER = LinearEncoder(latent_dim=Z)
DECODERS = {p: LinearDecoder(out_shape=(H, W, C * p)) for p in (1, 2)}


def decoder_for(likelihood):
    return DECODERS[losses.likelihood_num_params(likelihood)]


def make_params(likelihood, seed=0, enc_scale=0.3, logvar_bias=-0.5, dec_scale=0.5):
    """Random float32 parameters as numpy arrays, in the Flax param-tree layout."""
    rng = np.random.default_rng(seed)
    p = losses.likelihood_num_params(likelihood)

    def normal(scale, shape, loc=0.0):
        return (loc + scale * rng.standard_normal(shape)).astype(np.float32)

    dec_bias_hwc = normal(0.3, (H, W, C * p))
    if likelihood == "discretized_logistic":
        dec_bias_hwc[..., :C] += 0.5  # locations inside [0, 1]
        dec_bias_hwc[..., C:] -= 2.0  # scales ~ 0.14
    if likelihood == "gaussian_learned":
        dec_bias_hwc[..., C:] -= 1.0
    params = {
        "encoder": {"params": {
            "mean": {"kernel": normal(enc_scale, (D, Z)), "bias": normal(0.3, (Z,))},
            "logvar": {"kernel": normal(0.1, (D, Z)), "bias": normal(0.2, (Z,), logvar_bias)},
        }},
        "decoder": {"params": {
            "out": {"kernel": normal(dec_scale, (Z, D * p)), "bias": dec_bias_hwc.reshape(-1)},
        }},
    }
    # The hand-made tree must be exactly what Flax would build for these modules.
    init = {
        "encoder": ENCODER.init(jax.random.key(0), jnp.zeros((1, H, W, C))),
        "decoder": decoder_for(likelihood).init(jax.random.key(0), jnp.zeros((1, Z))),
    }
    chex.assert_trees_all_equal_shapes_and_dtypes(params, init)
    return params


def make_data(likelihood, batch, seed=1, fractional=False):
    rng = np.random.default_rng(seed)
    shape = (batch, H, W, C)
    if likelihood == "bernoulli" and not fractional:
        x = rng.integers(0, 2, shape)
    elif likelihood in ("bernoulli", "continuous_bernoulli"):
        x = rng.uniform(0.0, 1.0, shape)
    elif likelihood in ("gaussian", "gaussian_learned"):
        x = 0.5 + 0.3 * rng.standard_normal(shape)
    else:  # discretized_logistic: 8-bit grid, with both edge bins present.
        x = rng.integers(0, NUM_BINS, shape) / (NUM_BINS - 1)
        x.reshape(batch, -1)[:, :2] = [0.0, 1.0]
    return x.astype(np.float32)


def eps_like_the_loss(key, example_ids, num_samples):
    """[B, K, Z] float64 noise of the documented scheme (`vae_jax.model`)."""
    fold = jax.random.fold_in
    return np.stack([
        np.stack([np.asarray(jax.random.normal(fold(fold(fold(key, int(i)), j), 0), (Z,)),
                             np.float64) for j in range(num_samples)])
        for i in example_ids
    ])


def ref_log_likelihood(likelihood, out, x, gaussian_logvar=0.0):
    """float64 log p(x | decoder output) summed over pixels: out [..., H, W, C*P], x [H, W, C]."""
    x = x.astype(np.float64)
    if likelihood == "bernoulli":
        if np.all((x == 0) | (x == 1)):
            log_p = stats.bernoulli.logpmf(x, special.expit(out))
        else:  # negative binary cross-entropy
            log_p = x * special.log_expit(out) + (1 - x) * special.log_expit(-out)
    elif likelihood == "gaussian":
        log_p = stats.norm.logpdf(x, loc=out, scale=np.exp(gaussian_logvar / 2))
    elif likelihood == "gaussian_learned":
        log_p = stats.norm.logpdf(x, loc=out[..., :C], scale=np.exp(out[..., C:] / 2))
    elif likelihood == "continuous_bernoulli":
        # C(lambda) = 1 / int_0^1 lambda^t (1 - lambda)^(1 - t) dt = eta / (2 lambda - 1).
        lam = special.expit(out)
        small = np.abs(out) < 1e-8
        log_norm = np.where(small, np.log(2.0), np.log(np.where(small, 1.0, out / (2 * lam - 1))))
        log_p = log_norm + x * np.log(lam) + (1 - x) * np.log1p(-lam)
    elif likelihood == "discretized_logistic":
        loc, scale = out[..., :C], np.exp(out[..., C:])
        half = 0.5 / (NUM_BINS - 1)
        cdf_up, cdf_low = (stats.logistic.cdf(x + s * half, loc, scale) for s in (1, -1))
        sf_up, sf_low = (stats.logistic.sf(x + s * half, loc, scale) for s in (1, -1))
        # Differences of survival functions above the location: no cancellation near 1.
        interior = np.where(x > loc, sf_low - sf_up, cdf_up - cdf_low)
        mass = np.where(x < half, cdf_up, np.where(x > 1 - half, sf_low, interior))
        log_p = np.log(mass)
    else:
        raise AssertionError(likelihood)
    return np.sum(log_p, axis=(-3, -2, -1))


def ref_forward(params, x, key, likelihood, num_samples, example_ids=None, gaussian_logvar=0.0):
    """float64 hand computation of everything `elbo` / `iwae_bound` compute."""
    enc = {k: {n: np.asarray(v, np.float64) for n, v in d.items()}
           for k, d in params["encoder"]["params"].items()}
    dec = {n: np.asarray(v, np.float64) for n, v in params["decoder"]["params"]["out"].items()}
    b = x.shape[0]
    ids = np.arange(b) if example_ids is None else np.asarray(example_ids)
    h_bd = x.reshape(b, -1).astype(np.float64)
    mean_bz = h_bd @ enc["mean"]["kernel"] + enc["mean"]["bias"]
    logvar_bz = h_bd @ enc["logvar"]["kernel"] + enc["logvar"]["bias"]
    eps_bkz = eps_like_the_loss(key, ids, num_samples)
    z_bkz = mean_bz[:, None] + np.exp(logvar_bz / 2)[:, None] * eps_bkz
    out = (z_bkz @ dec["kernel"] + dec["bias"]).reshape(b, num_samples, H, W, -1)
    ll_bk = ref_log_likelihood(likelihood, out, x[:, None], gaussian_logvar)
    kl_bz = 0.5 * (np.exp(logvar_bz) + mean_bz**2 - 1.0 - logvar_bz)
    return dict(mean_bz=mean_bz, logvar_bz=logvar_bz, z_bkz=z_bkz, out=out, ll_bk=ll_bk,
                recon_b=-ll_bk.mean(axis=1), kl_bz=kl_bz, kl_b=kl_bz.sum(axis=1))


def run_elbo(params, x, key, likelihood, **kwargs):
    """Eager `elbo` (eager calls also check the data's support)."""
    return losses.elbo(params, jnp.asarray(x), key, encoder=ENCODER,
                       decoder=decoder_for(likelihood), likelihood=likelihood, **kwargs)


@functools.partial(jax.jit, static_argnames=("likelihood", "num_samples", "free_bits"))
def jit_elbo(params, x, key, example_ids=None, *, likelihood, num_samples=1, free_bits=0.0):
    return losses.elbo(params, x, key, encoder=ENCODER, decoder=decoder_for(likelihood),
                       likelihood=likelihood, num_samples=num_samples, free_bits=free_bits,
                       example_ids=example_ids)


def assert_close(actual, expected, rtol=2e-5, atol=2e-4):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


CASES = [  # (likelihood, fractional data, extra kwargs)
    ("bernoulli", False, {}),
    ("bernoulli", True, {}),
    ("gaussian", False, {"gaussian_logvar": -1.3}),
    ("gaussian_learned", False, {}),
    ("continuous_bernoulli", False, {}),
    ("discretized_logistic", False, {}),
]


# ------------------------------------------------------------------------------------------
# ELBO against the float64 hand computation.


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("likelihood,fractional,kwargs", CASES)
def test_elbo_matches_float64_reference(likelihood, fractional, kwargs, num_samples):
    params = make_params(likelihood)
    x = make_data(likelihood, batch=2, fractional=fractional)
    key = jax.random.key(42)
    beta = 0.3
    loss, metrics = run_elbo(params, x, key, likelihood, beta=beta, num_samples=num_samples,
                             **kwargs)
    ref = ref_forward(params, x, key, likelihood, num_samples, **kwargs)

    # The hand computation is meaningful: finite, and the K samples really differ.
    assert np.all(np.isfinite(ref["ll_bk"]))
    if num_samples > 1:
        assert np.ptp(ref["ll_bk"], axis=1).min() > 1e-3

    per_example = metrics["per_example"]
    chex.assert_shape([per_example["recon"], per_example["kl"], per_example["elbo"]], (2,))
    assert_close(per_example["recon"], ref["recon_b"])  # recon = -1/K sum_k log p(x|z_k)
    assert_close(per_example["kl"], ref["kl_b"])
    assert_close(per_example["elbo"], -(ref["recon_b"] + ref["kl_b"]))
    assert_close(metrics["recon_nats"], ref["recon_b"].mean())
    assert_close(metrics["kl_nats"], ref["kl_b"].mean())
    assert_close(metrics["elbo_nats"], -(ref["recon_b"] + ref["kl_b"]).mean())
    assert_close(metrics["kl_per_dim_nats"], ref["kl_bz"].mean(axis=0))
    expected_loss = ref["recon_b"].mean() + beta * ref["kl_b"].mean()
    assert_close(loss, expected_loss)
    assert_close(metrics["loss"], expected_loss)


def test_beta_scales_only_the_kl_part_of_the_loss():
    params, x, key = make_params("bernoulli"), make_data("bernoulli", 2), jax.random.key(3)
    ref = ref_forward(params, x, key, "bernoulli", 1)
    for beta in (0.0, 1.0, 4.0):
        loss, metrics = run_elbo(params, x, key, "bernoulli", beta=beta)
        assert_close(loss, ref["recon_b"].mean() + beta * ref["kl_b"].mean())
        # Reported terms never include beta.
        assert_close(metrics["elbo_nats"], -(ref["recon_b"] + ref["kl_b"]).mean())


def test_free_bits_is_sum_over_dims_of_max_lambda_and_batch_mean_kl():
    params, x, key = make_params("bernoulli"), make_data("bernoulli", 2), jax.random.key(4)
    ref = ref_forward(params, x, key, "bernoulli", 1)
    kl_per_dim = ref["kl_bz"].mean(axis=0)
    free_bits = float(np.sort(kl_per_dim)[:2].mean())  # dims on both sides, none at a tie
    assert np.any(kl_per_dim < free_bits) and np.any(kl_per_dim > free_bits)
    beta = 0.7
    loss, metrics = run_elbo(params, x, key, "bernoulli", beta=beta, free_bits=free_bits)
    assert_close(loss, ref["recon_b"].mean() + beta * np.maximum(free_bits, kl_per_dim).sum())
    # Differs from the plain KL, so the assertion above has power.
    assert abs(np.maximum(free_bits, kl_per_dim).sum() - ref["kl_b"].mean()) > 1e-2
    # Reported KL and ELBO are the true ones, without free bits.
    assert_close(metrics["kl_nats"], ref["kl_b"].mean())
    assert_close(metrics["elbo_nats"], -(ref["recon_b"] + ref["kl_b"]).mean())


# ------------------------------------------------------------------------------------------
# The importance-weighted bound.


def run_iwae(params, x, key, likelihood, num_samples, **kwargs):
    return losses.iwae_bound(params, jnp.asarray(x), key, encoder=ENCODER,
                             decoder=decoder_for(likelihood), likelihood=likelihood,
                             num_samples=num_samples, **kwargs)


@pytest.mark.parametrize("likelihood,fractional,kwargs", [CASES[0], CASES[3], CASES[5]])
def test_iwae_matches_float64_logsumexp_on_the_same_draws(likelihood, fractional, kwargs):
    params = make_params(likelihood)
    x = make_data(likelihood, batch=2, fractional=fractional)
    key, k = jax.random.key(7), 3
    loss, metrics = run_iwae(params, x, key, likelihood, k, **kwargs)
    ref = ref_forward(params, x, key, likelihood, k, **kwargs)
    z, mean, logvar = ref["z_bkz"], ref["mean_bz"][:, None], ref["logvar_bz"][:, None]
    log_prior_bk = stats.norm.logpdf(z).sum(-1)
    log_q_bk = stats.norm.logpdf(z, loc=mean, scale=np.exp(logvar / 2)).sum(-1)
    bound_b = special.logsumexp(ref["ll_bk"] + log_prior_bk - log_q_bk, axis=1) - np.log(k)
    chex.assert_shape(metrics["per_example"]["iwae"], (2,))
    assert_close(metrics["per_example"]["iwae"], bound_b)
    assert_close(metrics["iwae_nats"], bound_b.mean())
    assert_close(loss, -bound_b.mean())


# The IWAE tests share compiled programs: bernoulli, a batch of IWAE_BATCH, and a poor encoder
# (posterior far from the true one), which leaves a large gap for IWAE to close.
IWAE_BATCH = 256


def poor_encoder_params():
    return make_params("bernoulli", seed=5, enc_scale=0.5, logvar_bias=-2.0, dec_scale=1.5)


@functools.partial(jax.jit, static_argnums=3)
def jit_iwae_per_example(params, x, key, num_samples):
    _, metrics = losses.iwae_bound(params, x, key, encoder=ENCODER, decoder=DECODERS[1],
                                   likelihood="bernoulli", num_samples=num_samples)
    return metrics["per_example"]["iwae"]


def jit_elbo_per_example(params, x, key):
    _, metrics = jit_elbo(params, x, key, likelihood="bernoulli", num_samples=16)
    return metrics["per_example"]["elbo"]


def test_iwae_is_above_the_elbo_and_grows_with_k():
    params = poor_encoder_params()
    x = jnp.asarray(make_data("bernoulli", batch=IWAE_BATCH, seed=6))
    key = jax.random.key(8)
    elbo_b = np.asarray(jit_elbo_per_example(params, x, key), np.float64)
    bounds = {k: np.asarray(jit_iwae_per_example(params, x, jax.random.fold_in(key, k), k),
                            np.float64) for k in (1, 5, 50)}
    # Paired over examples; each gap must exceed 4 standard errors of its mean.
    for lo, hi in ((elbo_b, bounds[5]), (bounds[1], bounds[5]), (bounds[5], bounds[50])):
        diff = hi - lo
        assert diff.mean() > 4 * diff.std() / np.sqrt(diff.size), (diff.mean(), diff.std())
    assert elbo_b.mean() < bounds[5].mean() < bounds[50].mean()


def test_iwae_with_one_sample_equals_the_elbo_in_expectation():
    params = poor_encoder_params()
    copies = IWAE_BATCH // 4
    # 4 examples, each repeated; distinct example ids give every copy independent noise.
    x = jnp.asarray(np.repeat(make_data("bernoulli", batch=4, seed=9), copies, axis=0))
    key = jax.random.key(10)
    iwae_rb = np.stack([jit_iwae_per_example(params, x, jax.random.fold_in(key, r), 1)
                        for r in range(48)])
    elbo_rb = np.stack([jit_elbo_per_example(params, x, jax.random.fold_in(key, 100 + r))
                        for r in range(8)])
    iwae_nb = iwae_rb.reshape(-1, 4, copies).transpose(0, 2, 1).reshape(-1, 4).astype(np.float64)
    elbo_nb = elbo_rb.reshape(-1, 4, copies).transpose(0, 2, 1).reshape(-1, 4).astype(np.float64)
    stderr_b = np.sqrt(iwae_nb.var(0) / len(iwae_nb) + elbo_nb.var(0) / len(elbo_nb))
    np.testing.assert_array_less(np.abs(iwae_nb.mean(0) - elbo_nb.mean(0)), 4 * stderr_b)
    # The tolerance is small next to the ~8 nats that K = 5 gains over K = 1 on this model.
    assert np.all(4 * stderr_b < 1.0), stderr_b


# ------------------------------------------------------------------------------------------
# jit, tracing, gradients.


def test_jit_and_eager_agree():
    params, key = make_params("bernoulli"), jax.random.key(12)
    x = jnp.asarray(make_data("bernoulli", 2))
    fn = functools.partial(losses.elbo, encoder=ENCODER, decoder=DECODERS[1],
                           likelihood="bernoulli", num_samples=3, free_bits=0.1)
    chex.assert_trees_all_close(jax.jit(fn)(params, x, key, beta=0.5), fn(params, x, key, beta=0.5),
                                rtol=1e-5, atol=1e-5)
    iwae = functools.partial(losses.iwae_bound, encoder=ENCODER, decoder=DECODERS[1],
                             likelihood="bernoulli", num_samples=3)
    chex.assert_trees_all_close(jax.jit(iwae)(params, x, key), iwae(params, x, key),
                                rtol=1e-5, atol=1e-5)


def test_jitted_loss_traces_once_across_calls():
    chex.clear_trace_counter()
    counted_elbo = chex.assert_max_traces(losses.elbo, n=1)
    loss_fn = jax.jit(functools.partial(counted_elbo, encoder=ENCODER, decoder=DECODERS[1],
                                        likelihood="bernoulli", num_samples=2))
    params = make_params("bernoulli")
    for step in range(3):
        x = jnp.asarray(make_data("bernoulli", batch=2, seed=step))
        beta = optax.linear_schedule(0.0, 1.0, 10)(step)  # a traced beta does not retrace
        loss, _ = loss_fn(params, x, jax.random.key(step), beta=beta)
        assert np.isfinite(loss)
    # The counter is live: a new batch shape is a second trace, and it is caught.
    with pytest.raises(AssertionError, match="traced > 1"):
        loss_fn(params, jnp.asarray(make_data("bernoulli", batch=3)), jax.random.key(0), beta=1.0)


def test_value_and_grad_matches_the_closed_form_gradient():
    params, x, key = make_params("bernoulli"), make_data("bernoulli", 2), jax.random.key(13)
    beta, k = 0.6, 2
    loss_fn = functools.partial(losses.elbo, encoder=ENCODER, decoder=DECODERS[1],
                                likelihood="bernoulli", beta=beta, num_samples=k)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, jnp.asarray(x), key)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_equal_shapes(grads, params)
    ref = ref_forward(params, x, key, "bernoulli", k)
    assert_close(loss, ref["recon_b"].mean() + beta * ref["kl_b"].mean())
    # d(-log Bern(x; sigmoid(l)))/dl = sigmoid(l) - x; loss averages over B and K.
    g_out_bkd = (special.expit(ref["out"]) - x[:, None]).reshape(2, k, D) / (2 * k)
    assert_close(grads["decoder"]["params"]["out"]["bias"], g_out_bkd.sum((0, 1)), atol=1e-5)
    # Through z = mean + sigma * eps (dz/dmean = 1) plus beta * dKL/dmean = beta * mean / B.
    w_zd = np.asarray(params["decoder"]["params"]["out"]["kernel"], np.float64)
    g_mean_bz = (g_out_bkd @ w_zd.T).sum(1) + beta * ref["mean_bz"] / 2
    assert_close(grads["encoder"]["params"]["mean"]["bias"], g_mean_bz.sum(0), atol=1e-5)


# ------------------------------------------------------------------------------------------
# Per-example noise and device-count invariance.


def test_noise_depends_only_on_the_example_id():
    params = make_params("gaussian_learned")
    x = jnp.asarray(make_data("gaussian_learned", batch=5))
    key = jax.random.key(14)
    ids = np.array([10, 3, 7, 0, 21])
    run = functools.partial(jit_elbo, likelihood="gaussian_learned")
    per_example = run(params, x, key, jnp.asarray(ids))[1]["per_example"]
    ref = ref_forward(params, np.asarray(x), key, "gaussian_learned", 1, example_ids=ids)
    assert_close(per_example["recon"], ref["recon_b"])

    perm = np.array([3, 0, 4, 1, 2])
    permuted = run(params, x[perm], key, jnp.asarray(ids[perm]))[1]["per_example"]
    for name, value in permuted.items():
        np.testing.assert_allclose(value, per_example[name][perm], rtol=1e-6, atol=1e-6)
    # Other ids give other noise, so the check above has power.
    shifted = run(params, x, key, jnp.asarray(ids + 1))[1]["per_example"]
    assert np.all(np.abs(shifted["recon"] - per_example["recon"]) > 1e-3)
    # Examples taken out of the batch get the same noise as in the full batch.
    pair = np.array([4, 2])
    _, alone = run_elbo(params, x[pair], key, "gaussian_learned",
                        example_ids=jnp.asarray(ids[pair]))
    np.testing.assert_allclose(alone["per_example"]["recon"], per_example["recon"][pair],
                               rtol=1e-6, atol=1e-6)
    # Default ids are the batch positions.
    chex.assert_trees_all_close(run_elbo(params, x[:2], key, "gaussian_learned"),
                                run_elbo(params, x[:2], key, "gaussian_learned",
                                         example_ids=jnp.arange(2)))


def test_shard_map_with_free_bits_matches_single_device_on_the_global_batch():
    num_devices = 8
    assert jax.device_count() >= num_devices, "tests/conftest.py should provide 8 CPU devices"
    mesh = jax.make_mesh((num_devices,), ("batch",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:num_devices])
    params = make_params("bernoulli")
    x = make_data("bernoulli", batch=2 * num_devices, seed=15)
    ids = np.arange(x.shape[0])
    key = jax.random.key(16)
    beta = 0.8
    ref = ref_forward(params, x, key, "bernoulli", 2)
    kl_per_dim = ref["kl_bz"].mean(0)
    free_bits = float(np.sort(kl_per_dim)[:2].mean())  # dims on both sides, none at a tie
    expected_loss = ref["recon_b"].mean() + beta * np.maximum(free_bits, kl_per_dim).sum()

    loss_fn = functools.partial(losses.elbo, encoder=ENCODER, decoder=DECODERS[1], beta=beta,
                                free_bits=free_bits, num_samples=2)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def per_device(params, x, ids, key):
        (loss, metrics), grads = grad_fn(params, x, key, example_ids=ids, axis_name="batch")
        return (jax.lax.pmean(loss, "batch"), jax.lax.pmean(grads, "batch"), loss[None],
                metrics["recon_nats"][None], metrics["per_example"],
                metrics["kl_per_dim_nats"][None])

    spec = PartitionSpec("batch")
    sharded = jax.jit(jax.shard_map(
        per_device, mesh=mesh, in_specs=(PartitionSpec(), spec, spec, PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec(), spec, spec, spec, spec), check_vma=False))
    mean_loss, mean_grads, loss_d, recon_d, per_example, kl_per_dim_d = sharded(
        params, jnp.asarray(x), jnp.asarray(ids), key)
    (single_loss, single), single_grads = jax.jit(grad_fn)(params, jnp.asarray(x), key)
    assert_close(single_loss, expected_loss)
    assert_close(mean_loss, expected_loss)
    assert_close(per_example["recon"], ref["recon_b"])
    chex.assert_trees_all_close(per_example, single["per_example"], rtol=1e-5, atol=1e-5)
    # Averaging per-device gradients gives the single-device gradient, free bits included.
    # (With check_vma=False each device's gradient is its own; the pmean above averages them.)
    chex.assert_trees_all_close(mean_grads, single_grads, rtol=1e-5, atol=1e-5)
    # Every device sees the global per-dimension KL, so its free-bits term is the global one.
    for d in range(num_devices):
        assert_close(kl_per_dim_d[d], kl_per_dim)
        assert_close(loss_d[d] - recon_d[d], beta * np.maximum(free_bits, kl_per_dim).sum())
    # Each device's own 2 examples give other per-dimension KLs, so the checks above have power.
    local_kl_per_dim_dz = ref["kl_bz"].reshape(num_devices, 2, Z).mean(1)
    assert np.abs(local_kl_per_dim_dz - kl_per_dim).max() > 1e-2


# ------------------------------------------------------------------------------------------
# KL-weight schedules.


def test_constant_schedule():
    schedule = losses.constant_schedule(0.7)
    for step in (0, 5, 10_000):
        np.testing.assert_allclose(schedule(step), 0.7, rtol=1e-6)


def test_linear_warmup():
    schedule = losses.linear_warmup(10)
    for step, expected in ((0, 0.0), (3, 0.3), (10, 1.0), (25, 1.0)):
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, atol=1e-7)
    schedule = losses.linear_warmup(4, init_value=0.2, end_value=1.0)
    for step, expected in ((0, 0.2), (1, 0.4), (2, 0.6), (4, 1.0), (9, 1.0)):
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-6)
    # No warm-up means the end value from the first step on.
    schedule = losses.linear_warmup(0, init_value=0.0, end_value=1.0)
    for step in (0, 1, 5):
        np.testing.assert_allclose(schedule(step), 1.0)


def fu_et_al_beta(t, total_steps, num_cycles, ratio):
    """Fu et al. 2019, eq. 5, 1-based iteration t: f(tau), tau = mod(t-1, ceil(T/M)) / (T/M)."""
    period = total_steps / num_cycles
    tau = ((t - 1) % math.ceil(period)) / period
    return tau / ratio if tau <= ratio else 1.0


def test_cyclical_annealing_follows_fu_et_al():
    cycle, ratio, cycles = 10, 0.5, 3
    schedule = losses.cyclical_annealing(cycle, ratio=ratio)
    schedule_jit = jax.jit(schedule)
    for step in range(cycle * cycles):  # 0-based step = t - 1
        expected = fu_et_al_beta(step + 1, cycle * cycles, cycles, ratio)
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(schedule_jit(jnp.int32(step)), expected, rtol=1e-6, atol=1e-7)
    # Hand-written values: rises over the first half of each cycle, then holds.
    scaled = losses.cyclical_annealing(8, ratio=0.25, max_value=2.0, num_cycles=2)
    for step, expected in ((0, 0.0), (1, 1.0), (2, 2.0), (7, 2.0), (8, 0.0), (9, 1.0),
                           (15, 2.0), (16, 2.0), (17, 2.0), (100, 2.0)):
        np.testing.assert_allclose(scaled(step), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="ratio"):
        losses.cyclical_annealing(10, ratio=0.0)
    with pytest.raises(ValueError, match="cycle_steps"):
        losses.cyclical_annealing(0)


def test_make_kl_schedule():
    np.testing.assert_allclose(losses.make_kl_schedule("constant", value=0.25)(3), 0.25)
    np.testing.assert_allclose(losses.make_kl_schedule("linear", warmup_steps=4)(2), 0.5)
    np.testing.assert_allclose(losses.make_kl_schedule("cyclical", cycle_steps=4)(1), 0.5)
    with pytest.raises(ValueError, match=r"'cosine'.*\['constant', 'cyclical', 'linear'\]"):
        losses.make_kl_schedule("cosine")


# ------------------------------------------------------------------------------------------
# Bad input.


def test_unknown_likelihood_lists_valid_names():
    params, x, key = make_params("bernoulli"), make_data("bernoulli", 2), jax.random.key(0)
    names = r"\['bernoulli', 'continuous_bernoulli', 'discretized_logistic', 'gaussian', "
    names += r"'gaussian_learned'\]"
    for fn in (losses.elbo, losses.iwae_bound):
        with pytest.raises(ValueError, match=r"'poisson'.*" + names):
            fn(params, jnp.asarray(x), key, encoder=ENCODER, decoder=DECODERS[1],
               likelihood="poisson")
    with pytest.raises(ValueError, match=names):
        losses.likelihood_num_params("poisson")


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("bad_value", [1.5, -0.25])
def test_eager_elbo_rejects_data_outside_unit_interval(likelihood, bad_value):
    params = make_params(likelihood)
    x = make_data(likelihood, 2, fractional=True)
    x[1, 0, 0, 0] = bad_value
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_elbo(params, x, jax.random.key(0), likelihood)


def test_discretized_logistic_rejects_off_grid_data():
    params = make_params("discretized_logistic")
    x = make_data("discretized_logistic", 2)
    x[0, 1, 1, 1] = (100 + 0.5) / (NUM_BINS - 1)
    with pytest.raises(ValueError, match="grid"):
        run_elbo(params, x, jax.random.key(0), "discretized_logistic")
    # The same data on a coarser grid are accepted when num_bins says so.
    coarse = np.round(make_data("continuous_bernoulli", 2) * 15) / 15
    run_elbo(params, coarse.astype(np.float32), jax.random.key(0), "discretized_logistic",
             num_bins=16)


def test_gaussian_rejects_non_finite_data():
    params, x = make_params("gaussian"), make_data("gaussian", 2)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        run_elbo(params, x, jax.random.key(0), "gaussian")


def test_decoder_output_shape_mismatch_names_the_shapes():
    # gaussian_learned needs 2C decoder channels; this decoder gives C.
    params = make_params("bernoulli")
    x = make_data("gaussian_learned", 2)
    with pytest.raises(AssertionError, match=r"\(2, 3, 4, 2\).*\(2, 3, 4, 4\)"):
        losses.elbo(params, jnp.asarray(x), jax.random.key(0), encoder=ENCODER,
                    decoder=DECODERS[1], likelihood="gaussian_learned")


# ------------------------------------------------------------------------------------------
# likelihood_mean.


def test_likelihood_mean_bernoulli_is_sigmoid():
    logits = np.linspace(-12, 12, 2 * H * W * C).reshape(2, H, W, C).astype(np.float32)
    mean = losses.likelihood_mean("bernoulli", jnp.asarray(logits))
    chex.assert_shape(mean, (2, H, W, C))
    np.testing.assert_allclose(mean, special.expit(logits.astype(np.float64)), rtol=1e-6, atol=1e-7)


def test_likelihood_mean_continuous_bernoulli_matches_numerical_integral():
    logits = np.array([0.0, 1e-4, -2e-3, 0.004, -0.05, 0.3, -0.7, 1.0, 2.5, -4.0, 10.0, -15.0,
                       20.0, -40.0, 0.49, -0.51, 100.0, -100.0], np.float32)
    mean = np.asarray(losses.likelihood_mean("continuous_bernoulli", jnp.asarray(logits)[None]))[0]

    def integral_mean(eta):
        # p(t) is proportional to lambda^t (1 - lambda)^(1 - t), i.e. to exp(eta t), on [0, 1].
        density = lambda t: np.exp(eta * t - max(eta, 0.0))  # noqa: E731
        return integrate.quad(lambda t: t * density(t), 0, 1)[0] / integrate.quad(density, 0, 1)[0]

    expected = np.array([integral_mean(float(eta)) for eta in logits])
    np.testing.assert_allclose(mean, expected, rtol=0, atol=2e-6)
    assert mean[0] == 0.5


def test_likelihood_mean_location_likelihoods_use_the_first_channels_clipped():
    out = np.random.default_rng(17).normal(0.5, 0.8, (2, H, W, 2 * C)).astype(np.float32)
    for likelihood in ("gaussian_learned", "discretized_logistic"):
        mean = losses.likelihood_mean(likelihood, jnp.asarray(out))
        np.testing.assert_array_equal(mean, np.clip(out[..., :C], 0.0, 1.0))
    mean = losses.likelihood_mean("gaussian", jnp.asarray(out[..., :C]))
    np.testing.assert_array_equal(mean, np.clip(out[..., :C], 0.0, 1.0))


# ---------------------------------------------------------------------------- output bias


def test_data_mean_output_bias_is_the_logit_of_the_clipped_mean():
    mean_hw = np.array([[0.0, 1e-4, 0.2], [0.5, 0.93, 1.0]])
    bias_f = losses.data_mean_output_bias("bernoulli", mean_hw)
    chex.assert_shape(bias_f, (6,))
    assert bias_f.dtype == np.float32
    clipped = np.clip(mean_hw.ravel(), 1e-3, 1 - 1e-3)
    np.testing.assert_allclose(bias_f, np.log(clipped) - np.log1p(-clipped), rtol=1e-6)
    # The Bernoulli with these logits has the (clipped) data mean.
    np.testing.assert_allclose(special.expit(bias_f.astype(np.float64)), clipped, rtol=1e-6)
    np.testing.assert_allclose(losses.data_mean_output_bias("gaussian", mean_hw),
                               mean_hw.ravel(), rtol=1e-7)


def test_data_mean_output_bias_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        losses.data_mean_output_bias("bernoulli", np.array([0.2, 1.5]))
    with pytest.raises(ValueError, match="finite"):
        losses.data_mean_output_bias("gaussian", np.array([0.2, np.nan]))
    with pytest.raises(ValueError, match="'discretized_logistic' has 2 output"):
        losses.data_mean_output_bias("discretized_logistic", np.array([0.2]))
    with pytest.raises(ValueError, match="unknown likelihood"):
        losses.data_mean_output_bias("poisson", np.array([0.2]))
