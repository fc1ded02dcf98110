"""The functional loss utilities: the ELBO and the IWAE bound of your own encoder and decoder,
and KL-weight schedules.

`elbo` and `iwae_bound` take Flax modules and a likelihood name, for use in your own training
code; they are the "elbo" and "iwae" objectives (`vae_jax.objectives`) of the plain
`model.VAE` (N(0, I) prior, diagonal Gaussian posterior), so they compute exactly what
`python -m vae_jax.main` trains. Everything here is a pure function; the caller applies
`jax.jit` after binding the static configuration (modules, likelihood name, beta schedule)
with `functools.partial`. The likelihood functions live in `vae_jax.likelihoods` and are
re-exported here.

Reduction convention (used everywhere in vae_jax): per-example terms are summed over data
and latent dimensions, in nats per example; batch metrics are means over examples.

Parameters are a dict `{"encoder": encoder_params, "decoder": decoder_params}`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vae_jax import fastpath, model, objectives, posteriors, priors

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
    make_likelihood,
    support_violations,
)

Params = Any

def per_example_keys(key, example_ids):
    """[B] keys, one per example, from its global position in the batch.

    Noise drawn from these keys does not depend on how the batch is split across devices:
    example i gets `fold_in(key, i)` whether it lives on device 0 of 1 or device 5 of 8.
    """
    return jax.vmap(fastpath.fold_in, in_axes=(None, 0))(key, example_ids)


def _one_layer_vae(encoder, decoder, likelihood, gaussian_logvar, num_bins):
    """The plain VAE of an encoder/decoder pair: N(0, I) prior, diagonal posterior."""
    return model.VAE(
        encoder=encoder, decoder=decoder,
        likelihood=make_likelihood(likelihood, gaussian_logvar=gaussian_logvar, num_bins=num_bins),
        prior=priors.make_prior("standard_normal"),
        posterior=posteriors.make_posterior("diagonal"),
        latent_dims=(encoder.latent_dim,),
    )


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
    """The negative ELBO of a plain VAE as a loss, with its terms reported separately: the
    functional entry point for your own encoder and decoder modules.

    For each example x_b, with q(z|x) = N(mean, diag exp(logvar)) from the encoder and
    z_k = mean + exp(logvar / 2) * eps_k (Kingma & Welling 2014, eq. 10):

        recon_b = -1/K sum_k log p(x_b | z_k)                 (nats)
        kl_b    = KL(q(z|x_b) || N(0, I)), summed over Z      (nats, closed form)
        elbo_b  = -(recon_b + kl_b)                            (a lower bound on log p(x_b))
        loss    = mean_b recon_b + beta * mean_b kl_b

    With `free_bits` = lambda > 0 the KL part of the loss is sum_z max(lambda, mean_b kl_bz)
    (Kingma et al. 2016, eq. 15), the batch average taken over the global batch when
    `axis_name` is given. The reported `kl_nats` and `elbo_nats` never include free bits or
    beta. This is the "elbo" objective (`objectives.elbo_objective`) of the
    `model.VAE(encoder, decoder, likelihood, standard_normal prior, diagonal posterior)`: the
    same computation training runs.

    Args:
      params: `{"encoder": ..., "decoder": ...}`.
      x: [B, H, W, C] data in the likelihood's support (checked when concrete).
      key: PRNG key for the latent noise (see `model` for the noise scheme).
      encoder, decoder: Flax modules (static); the encoder returns (mean, logvar) [B, Z].
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
    vae = _one_layer_vae(encoder, decoder, likelihood, gaussian_logvar, num_bins)
    if not isinstance(x, jax.core.Tracer):
        vae.likelihood.check_support(x)
    settings = objectives.Settings(name="elbo", num_samples=num_samples, free_bits=free_bits)
    return objectives.make_loss_fn(settings, vae)(params, x, key, beta=beta,
                                                  example_ids=example_ids, axis_name=axis_name)


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
    """The importance-weighted bound (Burda et al. 2015, eq. 8) of a plain VAE as a loss.

        log w_bk = log p(x_b | z_k) + log N(z_k; 0, I) - log q(z_k | x_b),  z_k ~ q(z | x_b)
        L_K(x_b) = logsumexp_k(log w_bk) - log K

    computed with logsumexp, so it is stable for any K. L_1 is the ELBO (with the KL estimated
    by one sample); L_K grows with K and tends to log p(x_b). The loss is -mean_b L_K(x_b).
    The "iwae" objective of the same model as `elbo`.

    Returns:
      `(loss, metrics)`; metrics: `loss`, `iwae_nats` (mean bound), the draw's ELBO terms, and
      `per_example` {iwae, recon, kl, elbo, mean}.
    """
    vae = _one_layer_vae(encoder, decoder, likelihood, gaussian_logvar, num_bins)
    if not isinstance(x, jax.core.Tracer):
        vae.likelihood.check_support(x)
    settings = objectives.Settings(name="iwae", num_samples=num_samples)
    return objectives.make_loss_fn(settings, vae)(params, x, key, example_ids=example_ids)


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
