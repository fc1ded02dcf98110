"""Evaluation: importance-sampled log-likelihood (NLL) of a trained VAE, and its summary.

`importance_sampled_log_likelihood` is a pure function (the caller jits it after binding the
modules and likelihood with `functools.partial`); `make_nll_program` wraps it in the
data-parallel `jax.shard_map` pattern of `vae_jax.parallel`. Units are nats per example,
summed over data dimensions, as everywhere in vae_jax.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import distributions, losses, parallel


def _check_chunking(num_samples: int, chunk_size: int) -> int:
    """Returns the number of chunks; a clear error unless chunk_size divides num_samples."""
    if num_samples <= 0 or chunk_size <= 0 or num_samples % chunk_size:
        raise ValueError(
            f"num_samples={num_samples} must be a positive multiple of chunk_size={chunk_size}"
        )
    return num_samples // chunk_size


def importance_sampled_log_likelihood(
    params: losses.Params,
    x,
    key,
    *,
    encoder,
    decoder,
    likelihood: str,
    num_samples: int = 5000,
    chunk_size: int = 500,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
    example_ids=None,
):
    """Importance-sampled estimate of log p(x_b) for every example (Burda et al. 2016, eq. 8).

        z_bk ~ q(z | x_b) = N(mean_b, diag exp(logvar_b)),   k = 0 .. K-1
        log w_bk = log p(x_b | z_bk) + log N(z_bk; 0, I) - log q(z_bk | x_b)
        log p(x_b) ~= logsumexp_k(log w_bk) - log K

    The estimate is consistent (it tends to log p(x_b) as K grows) and, by Jensen's inequality,
    biased low on average for finite K; it is the IWAE bound L_K evaluated with large K
    (K = 5000 in Burda et al. 2016, Sec. 5.1).

    Memory is bounded for any K: the K samples are processed in K / chunk_size chunks by a
    `lax.scan` that carries a running logsumexp (accumulated with `logaddexp`), so at most
    [chunk_size * B] decoder evaluations are live at once.

    Noise: draw k of example b is eps_bk ~ N(0, I) from `fold_in(per_example_key_b, k)`, with
    `per_example_key_b = losses.per_example_keys(key, example_ids)[b]`. Every chunk size and
    every split of the batch across devices therefore uses exactly the same z_bk, and the
    estimate differs only by floating-point summation order.

    Args:
      params: `{"encoder": ..., "decoder": ...}`.
      x: [B, H, W, C] data in the likelihood's support (checked when concrete).
      key: PRNG key for the importance samples.
      encoder, decoder: Flax modules (static).
      likelihood: a name from `losses.LIKELIHOODS`.
      num_samples: K importance samples per example (static).
      chunk_size: samples per scan step (static); must divide `num_samples`.
      gaussian_logvar: fixed log-variance for the `gaussian` likelihood.
      num_bins: intensity levels for `discretized_logistic`.
      example_ids: [B] global positions of the examples; default arange(B).

    Returns:
      [B] estimates of log p(x_b) in nats.
    """
    num_chunks = _check_chunking(num_samples, chunk_size)
    losses.likelihood_num_params(likelihood)  # Validates the name.
    if not isinstance(x, jax.core.Tracer):
        losses.check_data_support(x, likelihood, num_bins=num_bins)
    batch = x.shape[0]
    if example_ids is None:
        example_ids = jnp.arange(batch)
    mean_bz, logvar_bz = encoder.apply(params["encoder"], x)
    keys_b = losses.per_example_keys(key, example_ids)
    std_bz = jnp.exp(0.5 * logvar_bz)
    zeros_bz = jnp.zeros_like(mean_bz)
    x_cb = jnp.broadcast_to(x[None], (chunk_size,) + x.shape).reshape(
        (chunk_size * batch,) + x.shape[1:]
    )

    def draw(key_b, sample_index):
        return jax.random.normal(
            jax.random.fold_in(key_b, sample_index), mean_bz.shape[1:], dtype=mean_bz.dtype
        )

    draw_bz = jax.vmap(draw, in_axes=(0, None))  # One draw for every example.
    draw_cbz = jax.vmap(draw_bz, in_axes=(None, 0))  # [C] sample indices -> [C, B, Z].

    def chunk_log_sum(log_sum_b, chunk_index):
        sample_indices = chunk_index * chunk_size + jnp.arange(chunk_size)
        z_cbz = mean_bz + std_bz * draw_cbz(keys_b, sample_indices)
        z_flat = z_cbz.reshape((chunk_size * batch,) + z_cbz.shape[2:])
        out = decoder.apply(params["decoder"], z_flat)
        ll_cb = losses.log_likelihood(
            likelihood, out, x_cb, gaussian_logvar=gaussian_logvar, num_bins=num_bins
        ).reshape(chunk_size, batch)
        log_prior_cb = distributions.gaussian_log_density(z_cbz, zeros_bz, zeros_bz)
        log_q_cb = distributions.gaussian_log_density(z_cbz, mean_bz, logvar_bz)
        log_w_cb = ll_cb + log_prior_cb - log_q_cb
        return jnp.logaddexp(log_sum_b, jax.nn.logsumexp(log_w_cb, axis=0)), None

    init_b = jnp.full((batch,), -jnp.inf, dtype=mean_bz.dtype)
    log_sum_b, _ = jax.lax.scan(chunk_log_sum, init_b, jnp.arange(num_chunks))
    return log_sum_b - math.log(num_samples)


def nll_summary(log_px_b, num_dims: int) -> dict:
    """Host-side summary of per-example log p(x) estimates (float64 numpy).

        nll_nats        = mean_b(-log p(x_b))
        nll_stderr_nats = std_b(-log p(x_b), ddof=1) / sqrt(N)   (NaN when N < 2)
        bits_per_dim    = nll_nats / (num_dims * ln 2)

    Args:
      log_px_b: [N] estimates of log p(x_b) in nats, e.g. from
        `importance_sampled_log_likelihood` concatenated over batches.
      num_dims: data dimensions per example (H * W * C).

    Returns:
      dict with `nll_nats`, `nll_stderr_nats`, `bits_per_dim` (floats) and `num_examples`.
    """
    nll_n = -np.asarray(log_px_b, dtype=np.float64).reshape(-1)
    n = nll_n.shape[0]
    if n == 0:
        raise ValueError("nll_summary needs at least one example")
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive; got {num_dims}")
    nll = float(np.mean(nll_n))
    stderr = float(np.std(nll_n, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "nll_nats": nll,
        "nll_stderr_nats": stderr,
        "bits_per_dim": nll / (num_dims * math.log(2.0)),
        "num_examples": n,
    }


def make_nll_program(
    mesh,
    *,
    encoder,
    decoder,
    likelihood: str,
    num_samples: int = 5000,
    chunk_size: int = 500,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
) -> Callable:
    """A jitted data-parallel `importance_sampled_log_likelihood` over a 1-D "batch" mesh.

    The program is `program(params, x, key, example_ids) -> log_px_b`:
      params: replicated; x: [B, H, W, C] split along "batch"; key: replicated;
      example_ids: [B] global positions of the rows of x, split along "batch" like x.
    It returns [B] estimates split along "batch". Because each example's noise comes from its
    global id, the values do not depend on the number of devices (up to float summation order).
    B must divide evenly across the mesh.
    """
    _check_chunking(num_samples, chunk_size)
    estimate = functools.partial(
        importance_sampled_log_likelihood,
        encoder=encoder,
        decoder=decoder,
        likelihood=likelihood,
        num_samples=num_samples,
        chunk_size=chunk_size,
        gaussian_logvar=gaussian_logvar,
        num_bins=num_bins,
    )

    def per_device(params, x, key, example_ids):
        return estimate(params, x, key, example_ids=example_ids)

    mapped = parallel.data_parallel(
        per_device,
        mesh,
        in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED, parallel.SHARDED),
        out_specs=parallel.SHARDED,
    )
    return jax.jit(mapped)
