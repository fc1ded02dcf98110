"""VAE objectives: the ELBO, the importance-weighted bound, and KL-weight schedules.

This module combines the Flax modules (`vae_jax.models`) with the pure math of
`vae_jax.distributions`. Everything here is a pure function; the caller applies `jax.jit`
after binding the static configuration (modules, likelihood name, beta schedule) with
`functools.partial`.

Reduction convention (used everywhere in vae_jax): per-example terms are summed over data
and latent dimensions, in nats per example; batch metrics are means over examples.

Parameters are a dict `{"encoder": encoder_params, "decoder": decoder_params}`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vae_jax import distributions, threefry
# The likelihoods moved to `vae_jax.likelihoods`; their functions keep these names here.
from vae_jax.likelihoods import (  # noqa: F401
    DATA_MEAN_BIAS_LIKELIHOODS,
    DENSITY_LIKELIHOODS,
    LIKELIHOODS,
    OUTPUT_BIAS_INITS,
    _check_likelihood,
    check_data_support,
    data_mean_output_bias,
    dequantized_log_mass_bound,
    likelihood_mean,
    likelihood_num_params,
    log_likelihood,
    support_violations,
)

Params = Any

def per_example_keys(key, example_ids):
    """[B] keys, one per example, from its global position in the batch.

    Noise drawn from these keys does not depend on how the batch is split across devices:
    example i gets `fold_in(key, i)` whether it lives on device 0 of 1 or device 5 of 8.
    """
    return jax.vmap(threefry.fold_in, in_axes=(None, 0))(key, example_ids)


def _encode_sample(params, x, key, encoder, num_samples, example_ids):
    """Encodes x and draws K reparameterised latents per example: returns mean, logvar, z_kbz."""
    mean_bz, logvar_bz = encoder.apply(params["encoder"], x)
    if example_ids is None:
        example_ids = jnp.arange(x.shape[0])
    keys_b = per_example_keys(key, example_ids)
    z_bkz = jax.vmap(functools.partial(distributions.reparameterize, num_samples=num_samples))(
        keys_b, mean_bz, logvar_bz
    )
    return mean_bz, logvar_bz, jnp.swapaxes(z_bkz, 0, 1)


def _decode_log_likelihood(params, x, z_kbz, decoder, likelihood, gaussian_logvar, num_bins):
    """log p(x | z_k) for every sample: [K, B]."""
    k, b = z_kbz.shape[:2]
    out = decoder.apply(params["decoder"], z_kbz.reshape((k * b,) + z_kbz.shape[2:]))
    x_kb = jnp.broadcast_to(x[None], (k,) + x.shape).reshape((k * b,) + x.shape[1:])
    ll = log_likelihood(likelihood, out, x_kb, gaussian_logvar=gaussian_logvar, num_bins=num_bins)
    return ll.reshape(k, b)


def elbo(
    params: Params,
    x,
    key,
    *,
    encoder,
    decoder,
    likelihood: str = "bernoulli",
    beta=1.0,
    free_bits: float = 0.0,
    num_samples: int = 1,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
    example_ids=None,
    axis_name: str | None = None,
):
    """The negative ELBO as a loss, with its terms reported separately.

    For each example x_b, with q(z|x) = N(mean, diag exp(logvar)) from the encoder and
    z_k = mean + exp(logvar / 2) * eps_k (Kingma & Welling 2014, eq. 10):

        recon_b = -1/K sum_k log p(x_b | z_k)                 (nats)
        kl_b    = KL(q(z|x_b) || N(0, I)), summed over Z      (nats, closed form)
        elbo_b  = -(recon_b + kl_b)                            (a lower bound on log p(x_b))
        loss    = mean_b recon_b + beta * mean_b kl_b

    With `free_bits` = lambda > 0 the KL part of the loss is sum_z max(lambda, mean_b kl_bz)
    (Kingma et al. 2016, eq. 15): no gradient pushes a latent dimension's batch-averaged KL
    below lambda nats. When `axis_name` is given (inside `jax.shard_map`) the batch average is
    taken over the whole global batch with `lax.pmean`, so the loss does not depend on the
    number of devices. The reported `kl_nats` and `elbo_nats` never include free bits or beta.

    Args:
      params: `{"encoder": ..., "decoder": ...}`.
      x: [B, H, W, C] data in the likelihood's support (assumed inside jit; checked when
        concrete).
      key: PRNG key for the latent noise.
      encoder, decoder: Flax modules (static).
      likelihood: a name from `LIKELIHOODS`.
      beta: KL weight (a float or a traced scalar from a schedule).
      free_bits: nats per latent dimension; 0 disables.
      num_samples: K latent samples per example.
      gaussian_logvar: fixed log-variance for the `gaussian` likelihood.
      num_bins: intensity levels for `discretized_logistic`.
      example_ids: [B] global positions of the examples, for device-count-invariant noise;
        default arange(B).
      axis_name: the mapped device axis, when called per device.

    Returns:
      `(loss, metrics)`; metrics has scalars `loss`, `recon_nats`, `kl_nats`, `elbo_nats`,
      `kl_per_dim_nats` [Z] (batch mean), and `per_example` = {recon, kl, elbo} each [B],
      plus `kl_per_dim` and the posterior `mean`, each [B, Z], for latent diagnostics.
    """
    _check_likelihood(likelihood)
    if not isinstance(x, jax.core.Tracer):
        check_data_support(x, likelihood, num_bins=num_bins)
    mean_bz, logvar_bz, z_kbz = _encode_sample(params, x, key, encoder, num_samples, example_ids)
    ll_kb = _decode_log_likelihood(params, x, z_kbz, decoder, likelihood, gaussian_logvar, num_bins)
    recon_b = -jnp.mean(ll_kb, axis=0)
    kl_bz = distributions.kl_standard_normal(mean_bz[..., None], logvar_bz[..., None])  # [B, Z]
    kl_b = jnp.sum(kl_bz, axis=-1)
    kl_per_dim_z = jnp.mean(kl_bz, axis=0)
    if axis_name is not None:
        kl_per_dim_z = jax.lax.pmean(kl_per_dim_z, axis_name)
    if free_bits > 0.0:
        kl_term = jnp.sum(jnp.maximum(kl_per_dim_z, free_bits))
    else:
        kl_term = jnp.mean(kl_b)
    loss = jnp.mean(recon_b) + beta * kl_term
    elbo_b = -(recon_b + kl_b)
    metrics = {
        "loss": loss,
        "recon_nats": jnp.mean(recon_b),
        "kl_nats": jnp.mean(kl_b),
        "elbo_nats": jnp.mean(elbo_b),
        "kl_per_dim_nats": kl_per_dim_z,
        "per_example": {
            "recon": recon_b, "kl": kl_b, "elbo": elbo_b, "kl_per_dim": kl_bz, "mean": mean_bz
        },
    }
    return loss, metrics


def iwae_bound(
    params: Params,
    x,
    key,
    *,
    encoder,
    decoder,
    likelihood: str = "bernoulli",
    num_samples: int = 5,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
    example_ids=None,
):
    """The importance-weighted bound (Burda et al. 2015, eq. 8) as a loss.

        log w_bk = log p(x_b | z_k) + log N(z_k; 0, I) - log q(z_k | x_b),  z_k ~ q(z | x_b)
        L_K(x_b) = logsumexp_k(log w_bk) - log K

    computed with logsumexp, so it is stable for any K. L_1 is the ELBO (with the KL estimated
    by one sample); L_K grows with K and tends to log p(x_b). The loss is -mean_b L_K(x_b).

    Returns:
      `(loss, metrics)`; metrics: `loss`, `iwae_nats` (mean bound), `per_example` {iwae: [B]}.
    """
    _check_likelihood(likelihood)
    if not isinstance(x, jax.core.Tracer):
        check_data_support(x, likelihood, num_bins=num_bins)
    mean_bz, logvar_bz, z_kbz = _encode_sample(params, x, key, encoder, num_samples, example_ids)
    ll_kb = _decode_log_likelihood(params, x, z_kbz, decoder, likelihood, gaussian_logvar, num_bins)
    zeros = jnp.zeros_like(mean_bz)
    log_prior_kb = distributions.gaussian_log_density(z_kbz, zeros, zeros)
    log_q_kb = distributions.gaussian_log_density(z_kbz, mean_bz, logvar_bz)
    log_w_kb = ll_kb + log_prior_kb - log_q_kb
    bound_b = jax.nn.logsumexp(log_w_kb, axis=0) - jnp.log(num_samples)
    loss = -jnp.mean(bound_b)
    return loss, {"loss": loss, "iwae_nats": -loss, "per_example": {"iwae": bound_b}}


# KL-weight schedules: plain step -> value functions, in optax's schedule style.


def constant_schedule(value: float = 1.0) -> Callable:
    """beta(step) = value."""
    return optax.constant_schedule(value)


def linear_warmup(warmup_steps: int, init_value: float = 0.0, end_value: float = 1.0) -> Callable:
    """beta rises linearly from init_value to end_value over warmup_steps, then stays."""
    if warmup_steps <= 0:
        return optax.constant_schedule(end_value)
    return optax.linear_schedule(init_value, end_value, int(warmup_steps))


def cyclical_annealing(
    cycle_steps: int, ratio: float = 0.5, max_value: float = 1.0, num_cycles: int | None = None
) -> Callable:
    """Cyclical KL annealing (Fu et al. 2019, eq. 5).

    With tau = (step mod T) / T for cycle length T: beta = max_value * min(1, tau / ratio), so
    beta rises linearly over the first `ratio` of every cycle and holds at max_value for the
    rest. After `num_cycles` cycles (if given) beta stays at max_value.
    """
    if cycle_steps <= 0 or not 0.0 < ratio <= 1.0:
        raise ValueError(f"need cycle_steps > 0 and 0 < ratio <= 1; got {cycle_steps}, {ratio}")

    def schedule(step):
        tau = jnp.mod(step, cycle_steps) / cycle_steps
        beta = max_value * jnp.minimum(1.0, tau / ratio)
        if num_cycles is not None:
            beta = jnp.where(step >= num_cycles * cycle_steps, max_value, beta)
        return beta

    return schedule


KL_SCHEDULES = {
    "constant": constant_schedule,
    "linear": linear_warmup,
    "cyclical": cyclical_annealing,
}


def make_kl_schedule(name: str, **kwargs) -> Callable:
    """A KL-weight schedule by name (`KL_SCHEDULES`), with its keyword arguments."""
    if name not in KL_SCHEDULES:
        raise ValueError(f"unknown KL schedule {name!r}; valid names: {sorted(KL_SCHEDULES)}")
    return KL_SCHEDULES[name](**kwargs)


# Two stochastic layers (Burda et al. 2015): q(z1, z2 | x) = q(z1 | x) q(z2 | z1) and
# p(x, z1, z2) = p(x | z1) p(z1 | z2) N(z2; 0, I), with `models.HierarchicalEncoder` /
# `models.HierarchicalDecoder`.


def _hierarchical_terms(
    params, x, key, encoder, decoder, likelihood, num_samples, example_ids, first_sample,
    gaussian_logvar, num_bins,
):
    """Per-sample terms of the two-layer importance weights.

    Returns `(ll_kb, log_q_kbz, log_p_kbz, mean1_bz, mean2_kbz)`: log p(x | z1) [K, B]; the
    per-dimension log densities of q and of p over the concatenated latent [z1, z2],
    each [K, B, Z1 + Z2]; and the posterior means of both layers.
    """
    _check_likelihood(likelihood)
    if not isinstance(x, jax.core.Tracer):
        check_data_support(x, likelihood, num_bins=num_bins)
    if example_ids is None:
        example_ids = jnp.arange(x.shape[0])
    mean1_bz, logvar1_bz = encoder.apply(params["encoder"], x)
    keys_b = per_example_keys(key, example_ids)
    sample_ids_k = first_sample + jnp.arange(num_samples)

    def sample_keys(key_b, sample_id):
        return threefry.split(threefry.fold_in(key_b, sample_id))

    keys_kb2 = jax.vmap(jax.vmap(sample_keys, in_axes=(0, None)), in_axes=(None, 0))(
        keys_b, sample_ids_k
    )
    z1_keys_kb, z2_keys_kb = keys_kb2[..., 0], keys_kb2[..., 1]
    draw_kb = jax.vmap(jax.vmap(distributions.reparameterize, in_axes=(0, 0, 0)))

    k, b = num_samples, x.shape[0]
    mean1_kbz = jnp.broadcast_to(mean1_bz, (k,) + mean1_bz.shape)
    logvar1_kbz = jnp.broadcast_to(logvar1_bz, (k,) + logvar1_bz.shape)
    z1_kbz = draw_kb(z1_keys_kb, mean1_kbz, logvar1_kbz)
    z1_nz = z1_kbz.reshape((k * b, -1))
    mean2_nz, logvar2_nz = encoder.apply(params["encoder"], z1_nz, method="encode_z2")
    mean2_kbz = mean2_nz.reshape((k, b, -1))
    logvar2_kbz = logvar2_nz.reshape((k, b, -1))
    z2_kbz = draw_kb(z2_keys_kb, mean2_kbz, logvar2_kbz)
    prior_mean_nz, prior_logvar_nz = decoder.apply(
        params["decoder"], z2_kbz.reshape((k * b, -1)), method="prior_z1"
    )

    def log_density_per_dim(z, mean, logvar):
        return distributions.gaussian_log_density(z[..., None], mean[..., None], logvar[..., None])

    zeros_kbz = jnp.zeros_like(z2_kbz)
    log_q_kbz = jnp.concatenate([
        log_density_per_dim(z1_kbz, mean1_kbz, logvar1_kbz),
        log_density_per_dim(z2_kbz, mean2_kbz, logvar2_kbz),
    ], axis=-1)
    log_p_kbz = jnp.concatenate([
        log_density_per_dim(
            z1_kbz, prior_mean_nz.reshape(z1_kbz.shape), prior_logvar_nz.reshape(z1_kbz.shape)
        ),
        log_density_per_dim(z2_kbz, zeros_kbz, zeros_kbz),
    ], axis=-1)
    ll_kb = _decode_log_likelihood(params, x, z1_kbz, decoder, likelihood, gaussian_logvar,
                                   num_bins)
    return ll_kb, log_q_kbz, log_p_kbz, mean1_bz, mean2_kbz


def hierarchical_log_weights(
    params: Params,
    x,
    key,
    *,
    encoder,
    decoder,
    likelihood: str = "bernoulli",
    num_samples: int = 1,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
    example_ids=None,
    first_sample=0,
):
    """Log importance weights of the two-stochastic-layer VAE, [K, B].

    For example x_b and sample k (Burda et al. 2015, section 3 and appendix C; the stacked
    Gaussian layers of Rezende et al. 2014, section 2):

        z1_bk = mean1(x_b) + exp(logvar1(x_b) / 2) * eps1_bk        ~ q(z1 | x_b)
        z2_bk = mean2(z1_bk) + exp(logvar2(z1_bk) / 2) * eps2_bk    ~ q(z2 | z1_bk)
        log w_bk = log p(x_b | z1_bk) + log p(z1_bk | z2_bk) + log N(z2_bk; 0, I)
                   - log q(z1_bk | x_b) - log q(z2_bk | z1_bk)

    Every conditional is a diagonal Gaussian from the networks (`models.HierarchicalEncoder`,
    `models.HierarchicalDecoder`); both draws are reparameterised, so log w is differentiable in
    all parameters. E_q[log w] is the ELBO and logsumexp_k log w - log K the IWAE bound.

    Noise: with key_b = `per_example_keys(key, example_ids)[b]` and
    `(z1_key, z2_key) = jax.random.split(jax.random.fold_in(key_b, j))` for sample index
    j = first_sample + k, eps1_bk = `jax.random.normal(z1_key, (Z1,))` and
    eps2_bk = `jax.random.normal(z2_key, (Z2,))`. So a sample depends only on (example id, j):
    the values do not depend on how the batch is split across devices, the draws for K are the
    first K of those for any larger K, and K samples can be computed in chunks by stepping
    `first_sample` (e.g. inside a `lax.scan` for a K = 5000 likelihood estimate).

    Args:
      params: `{"encoder": ..., "decoder": ...}`.
      x: [B, H, W, C] data in the likelihood's support (checked when concrete).
      key: PRNG key for the latent noise.
      encoder, decoder: `HierarchicalEncoder` / `HierarchicalDecoder` (static).
      likelihood: a name from `LIKELIHOODS`.
      num_samples: K (static).
      gaussian_logvar, num_bins: as in `elbo`.
      example_ids: [B] global positions of the examples; default arange(B).
      first_sample: index of the first sample (an int or a traced int scalar).

    Returns:
      [K, B] log weights in nats (summed over data and latent dimensions).
    """
    ll_kb, log_q_kbz, log_p_kbz, _, _ = _hierarchical_terms(
        params, x, key, encoder, decoder, likelihood, num_samples, example_ids, first_sample,
        gaussian_logvar, num_bins,
    )
    return ll_kb + jnp.sum(log_p_kbz - log_q_kbz, axis=-1)


def hierarchical_elbo(
    params: Params,
    x,
    key,
    *,
    encoder,
    decoder,
    likelihood: str = "bernoulli",
    beta=1.0,
    num_samples: int = 1,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
    example_ids=None,
):
    """The negative ELBO of the two-stochastic-layer VAE as a loss, with its terms.

    With log w_bk from `hierarchical_log_weights` (same noise) and K samples per example:

        recon_b = -1/K sum_k log p(x_b | z1_bk)
        kl_b    =  1/K sum_k [ log q(z1_bk | x_b) + log q(z2_bk | z1_bk)
                               - log p(z1_bk | z2_bk) - log N(z2_bk; 0, I) ]
        elbo_b  = 1/K sum_k log w_bk = -(recon_b + kl_b)     (<= log p(x_b))
        loss    = mean_b recon_b + beta * mean_b kl_b

    kl_b is the Monte Carlo estimate of KL(q(z1, z2 | x_b) || p(z1, z2)) (Burda et al. 2015,
    eq. 3; Rezende et al. 2014, eq. 7, with the KL estimated by sampling because p(z1 | z2)
    depends on the sampled z2). Every conditional is a diagonal Gaussian, so kl_b splits
    exactly into per-dimension terms over the concatenated latent [z1, z2] (Z1 + Z2 entries,
    z1 first); those are reported as `kl_per_dim` for latent diagnostics.

    Returns:
      `(loss, metrics)`; metrics has scalars `loss`, `recon_nats`, `kl_nats`, `elbo_nats`,
      `kl_per_dim_nats` [Z1 + Z2] (batch mean), and `per_example` = {recon, kl, elbo} each
      [B], `kl_per_dim` [B, Z1 + Z2] and `mean` [B, Z1 + Z2]: mean1(x_b) followed by
      1/K sum_k mean2(z1_bk), a Monte Carlo estimate of E_q[z2 | x_b] (the statistic of
      Burda et al.'s active-unit count, section 5.2). Same layout as `elbo`'s metrics.
    """
    ll_kb, log_q_kbz, log_p_kbz, mean1_bz, mean2_kbz = _hierarchical_terms(
        params, x, key, encoder, decoder, likelihood, num_samples, example_ids, 0,
        gaussian_logvar, num_bins,
    )
    recon_b = -jnp.mean(ll_kb, axis=0)
    kl_per_dim_bz = jnp.mean(log_q_kbz - log_p_kbz, axis=0)
    kl_b = jnp.sum(kl_per_dim_bz, axis=-1)
    elbo_b = -(recon_b + kl_b)
    loss = jnp.mean(recon_b) + beta * jnp.mean(kl_b)
    mean_bz = jnp.concatenate([mean1_bz, jnp.mean(mean2_kbz, axis=0)], axis=-1)
    metrics = {
        "loss": loss,
        "recon_nats": jnp.mean(recon_b),
        "kl_nats": jnp.mean(kl_b),
        "elbo_nats": jnp.mean(elbo_b),
        "kl_per_dim_nats": jnp.mean(kl_per_dim_bz, axis=0),
        "per_example": {
            "recon": recon_b, "kl": kl_b, "elbo": elbo_b, "kl_per_dim": kl_per_dim_bz,
            "mean": mean_bz,
        },
    }
    return loss, metrics


def hierarchical_iwae_bound(
    params: Params,
    x,
    key,
    *,
    encoder,
    decoder,
    likelihood: str = "bernoulli",
    num_samples: int = 5,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
    example_ids=None,
):
    """The importance-weighted bound of the two-stochastic-layer VAE as a loss.

        L_K(x_b) = logsumexp_k(log w_bk) - log K      (Burda et al. 2015, eq. 8)

    with log w_bk from `hierarchical_log_weights` (z1, z2 ~ q(z1 | x) q(z2 | z1), same noise).
    L_1 equals the K = 1 ELBO on the same draw; L_K grows with K and tends to log p(x_b).
    The loss is -mean_b L_K(x_b).

    Returns:
      `(loss, metrics)`; metrics: `loss`, `iwae_nats` (mean bound), `per_example` {iwae: [B]}.
    """
    log_w_kb = hierarchical_log_weights(
        params, x, key, encoder=encoder, decoder=decoder, likelihood=likelihood,
        num_samples=num_samples, gaussian_logvar=gaussian_logvar, num_bins=num_bins,
        example_ids=example_ids,
    )
    bound_b = jax.nn.logsumexp(log_w_kb, axis=0) - jnp.log(num_samples)
    loss = -jnp.mean(bound_b)
    return loss, {"loss": loss, "iwae_nats": -loss, "per_example": {"iwae": bound_b}}
