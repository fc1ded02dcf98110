"""Probability distributions for VAEs: reparameterised sampling, KL divergences, likelihoods.

Pure `jax.numpy`; no Flax, no state, no hidden randomness (every sampler takes a `key`). The
Gaussian noise, softplus and the per-example sums go through `vae_jax.fastpath` (their CPU fast
forms, or `jax.random`, `jax.nn.softplus` and `jnp.sum`).

Conventions used throughout the package:

* Units are nats. Log-likelihoods are exact, normalised log densities or log masses (`log p`,
  not a loss): negate them for a negative log-likelihood.
* One reduction convention: per-example terms are *summed* over data and latent dimensions.
  - Log-likelihoods take `x` of shape [B, ...] and return [B], summed over every non-batch axis.
  - KL divergences and `gaussian_log_density` sum over the last (latent) axis: [..., Z] -> [...].
  Averaging over examples is left to the caller (batch metrics are means over examples).
* Diagonal Gaussians are parameterised by `mean` and `logvar` = log sigma^2 (elementwise).
* Shapes are checked with chex when a function is traced, so a mismatch raises an error that
  names the shapes. Values cannot be checked inside `jax.jit`; each function documents the
  support it assumes (e.g. `x` in [0, 1]) and returns meaningless numbers outside it.
"""

import math

import chex
import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from vae_jax import fastpath

_LOG_2PI = math.log(2.0 * math.pi)

# |logits| below which log C(logits) of the continuous Bernoulli uses its Taylor series; see
# `_continuous_bernoulli_log_norm` for the error analysis behind the value.
_CB_TAYLOR_BAND = 0.1


def _assert_batched(x: jax.Array, name: str) -> None:
    if jnp.ndim(x) < 1:
        raise ValueError(f"`{name}` needs a leading batch axis [B, ...]; got {jnp.shape(x)}.")


def _broadcast_shapes(**shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast of the named shapes; raises a ValueError naming every shape otherwise."""
    try:
        return jnp.broadcast_shapes(*shapes.values())
    except ValueError:
        described = ", ".join(f"{name}: {shape}" for name, shape in shapes.items())
        raise ValueError(f"Shapes are not broadcast-compatible: {described}.") from None


# ---------------------------------------------------------------------------------------------
# Sampling.


def reparameterize(
    key: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    num_samples: int | None = None,
) -> jax.Array:
    """Draws z ~ N(mean, diag exp(logvar)) with the reparameterisation trick.

        z = mean + exp(logvar / 2) * eps,    eps ~ N(0, I) drawn from `key`,

    so z is a deterministic, differentiable function of (mean, logvar) given `key`:
    dz/dmean = 1 and dz/dlogvar = exp(logvar / 2) * eps / 2 (Kingma & Welling 2014,
    "Auto-Encoding Variational Bayes", Sec. 2.4).

    Args:
      key: PRNG key; the same key gives the same sample.
      mean: [...], any shape (typically [B, Z]; [Z] when vmapped over per-example keys).
      logvar: same shape as `mean`.
      num_samples: None for one sample, or a static int K for K independent samples.

    Returns:
      z of shape mean.shape, or [K, *mean.shape] when `num_samples` = K.
    """
    chex.assert_equal_shape([mean, logvar])
    shape = mean.shape if num_samples is None else (num_samples, *mean.shape)
    eps = fastpath.normal(key, shape, jnp.result_type(mean, logvar))  # jax.random.normal
    return mean + jnp.exp(0.5 * logvar) * eps


# ---------------------------------------------------------------------------------------------
# KL divergences.


def kl_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, diag exp(logvar)) || N(0, I)), summed over the last (latent) axis.

        KL = -1/2 * sum_j (1 + logvar_j - mean_j^2 - exp(logvar_j))

    (Kingma & Welling 2014, "Auto-Encoding Variational Bayes", Appendix B.)

    Args:
      mean: [..., Z], typically [B, Z].
      logvar: same shape as `mean`.

    Returns:
      [...] KL in nats, summed (not averaged) over Z.
    """
    chex.assert_equal_shape([mean, logvar])
    return -0.5 * jnp.sum(1.0 + logvar - jnp.square(mean) - jnp.exp(logvar), axis=-1)


def kl_diagonal_normals(
    mean_q: jax.Array,
    logvar_q: jax.Array,
    mean_p: jax.Array,
    logvar_p: jax.Array,
) -> jax.Array:
    """KL(q || p) between diagonal Gaussians, summed over the last (latent) axis.

    With q = N(mean_q, diag exp(logvar_q)) and p = N(mean_p, diag exp(logvar_p)):

        KL = 1/2 * sum_j [ exp(logvar_q - logvar_p) + (mean_q - mean_p)^2 / exp(logvar_p)
                           - 1 - (logvar_q - logvar_p) ]

    The variance ratio is formed as exp(logvar_q - logvar_p), which cannot overflow when both
    variances are large or small. (The Gaussian KL of Rasmussen & Williams 2006, "Gaussian
    Processes for Machine Learning", Appendix A.5, with diagonal covariances; needed for learned
    priors as in Sønderby et al. 2016, "Ladder Variational Autoencoders".)

    Args:
      mean_q, logvar_q, mean_p, logvar_p: [..., Z], broadcast against each other (e.g. a [Z]
        prior against a [B, Z] posterior).

    Returns:
      [...] KL in nats (the broadcast shape without its last axis), summed over Z.
    """
    _broadcast_shapes(
        mean_q=jnp.shape(mean_q),
        logvar_q=jnp.shape(logvar_q),
        mean_p=jnp.shape(mean_p),
        logvar_p=jnp.shape(logvar_p),
    )
    var_ratio = jnp.exp(logvar_q - logvar_p)
    mahalanobis = jnp.square(mean_q - mean_p) * jnp.exp(-logvar_p)
    return 0.5 * jnp.sum(var_ratio + mahalanobis - 1.0 - (logvar_q - logvar_p), axis=-1)


def kl_mvn_tril(
    mean_0: jax.Array,
    scale_tril_0: jax.Array,
    mean_1: jax.Array,
    scale_tril_1: jax.Array,
) -> jax.Array:
    """KL(N0 || N1) between full-covariance Gaussians given lower-triangular scale factors.

    With N_i = N(m_i, S_i), S_i = L_i L_i^T (L_i lower triangular with nonzero diagonal), k the
    dimension:

        KL = 1/2 [ tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - k + ln det S1 - ln det S0 ]
           = 1/2 [ ||L1^-1 L0||_F^2 + ||L1^-1 (m1 - m0)||^2 - k
                   + 2 sum_j ln|L1_jj| - 2 sum_j ln|L0_jj| ]

    (Rasmussen & Williams 2006, "Gaussian Processes for Machine Learning", Appendix A.5.) Both
    quadratic terms go through triangular solves with L1 and the log-determinants are read off
    the diagonals, so no inverse or determinant of a covariance is formed and the error grows
    with cond(L1) = sqrt(cond(S1)) rather than with cond(S1).

    Args:
      mean_0, mean_1: [..., k].
      scale_tril_0, scale_tril_1: [..., k, k] lower-triangular factors (the strict upper
        triangle is ignored). Leading dimensions of all four arguments broadcast.

    Returns:
      [...] KL in nats.
    """
    shapes = (
        f"mean_0: {jnp.shape(mean_0)}, scale_tril_0: {jnp.shape(scale_tril_0)}, "
        f"mean_1: {jnp.shape(mean_1)}, scale_tril_1: {jnp.shape(scale_tril_1)}"
    )
    if jnp.ndim(mean_0) < 1 or jnp.ndim(mean_1) < 1:
        raise ValueError(f"Means must be [..., k]; got {shapes}.")
    k = mean_0.shape[-1]
    if (
        mean_1.shape[-1] != k
        or jnp.ndim(scale_tril_0) < 2
        or jnp.ndim(scale_tril_1) < 2
        or scale_tril_0.shape[-2:] != (k, k)
        or scale_tril_1.shape[-2:] != (k, k)
    ):
        raise ValueError(f"Need means [..., k] and scale factors [..., k, k]; got {shapes}.")
    try:
        batch_shape = jnp.broadcast_shapes(
            mean_0.shape[:-1], scale_tril_0.shape[:-2], mean_1.shape[:-1], scale_tril_1.shape[:-2]
        )
    except ValueError:
        raise ValueError(f"Leading (batch) dimensions do not broadcast; got {shapes}.") from None

    tril_0 = jnp.broadcast_to(jnp.tril(scale_tril_0), (*batch_shape, k, k))
    tril_1 = jnp.broadcast_to(jnp.tril(scale_tril_1), (*batch_shape, k, k))
    diff = jnp.broadcast_to(mean_1 - mean_0, (*batch_shape, k))

    whitened_scale = solve_triangular(tril_1, tril_0, lower=True)  # L1^-1 L0, [..., k, k]
    whitened_diff = solve_triangular(tril_1, diff[..., None], lower=True)[..., 0]  # [..., k]
    trace_term = jnp.sum(jnp.square(whitened_scale), axis=(-2, -1))
    mahalanobis = jnp.sum(jnp.square(whitened_diff), axis=-1)
    log_diag_1 = jnp.log(jnp.abs(jnp.diagonal(tril_1, axis1=-2, axis2=-1)))
    log_diag_0 = jnp.log(jnp.abs(jnp.diagonal(tril_0, axis1=-2, axis2=-1)))
    logdet_ratio = 2.0 * jnp.sum(log_diag_1 - log_diag_0, axis=-1)  # ln det S1 - ln det S0
    return 0.5 * (trace_term + mahalanobis - k + logdet_ratio)


def kl_mvn_tril_standard_normal(mean: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """KL(N(mean, L L^T) || N(0, I)): `kl_mvn_tril` with mean_1 = 0 and scale_tril_1 = I.

        KL = 1/2 [ tr(L L^T) + mean^T mean - k - ln det(L L^T) ]
           = 1/2 [ ||L||_F^2 + ||mean||^2 - k - 2 sum_j ln|L_jj| ]

    With L1 = I both triangular solves of `kl_mvn_tril` are the identity, so none is made.
    That is also why the full-covariance posterior uses this form: on XLA:CPU the LAPACK
    triangular solve inside the evaluation's per-example program hung (every thread idle,
    the result never ready) on MNIST batches of 256 with Z = 32, while this form ran.

    Args:
      mean: [..., k].
      scale_tril: [..., k, k] lower-triangular factor (the strict upper triangle is ignored).

    Returns:
      [...] KL in nats.
    """
    tril = jnp.tril(scale_tril)
    log_diag = jnp.log(jnp.abs(jnp.diagonal(tril, axis1=-2, axis2=-1)))
    return 0.5 * (jnp.sum(jnp.square(tril), axis=(-2, -1)) + jnp.sum(jnp.square(mean), axis=-1)
                  - mean.shape[-1] - 2.0 * jnp.sum(log_diag, axis=-1))


def kl_mvn(
    mean_0: jax.Array,
    cov_0: jax.Array,
    mean_1: jax.Array,
    cov_1: jax.Array,
) -> jax.Array:
    """KL(N(mean_0, cov_0) || N(mean_1, cov_1)) for full covariance matrices.

        KL = 1/2 [ tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - k + ln det S1 - ln det S0 ]

    Computed by `kl_mvn_tril` from the Cholesky factors (see there for the stable form and the
    reference). Covariances must be symmetric positive definite; otherwise the Cholesky
    factor, and so the result, is NaN. Accuracy: the KL itself moves by up to ~eps * cond(S1)
    relative when the covariances are perturbed by their float32 rounding, and the Cholesky
    route stays at that level: ~1e-2 relative in float32 at cond 1e6 (tested against float64),
    exactly 0 for identical inputs, and no det under/overflow in high dimension. Near
    cond ~ 1/eps ~ 1e7 the float32 factorisation itself breaks down.

    Args:
      mean_0, mean_1: [..., k].
      cov_0, cov_1: [..., k, k]. Leading dimensions broadcast.

    Returns:
      [...] KL in nats.
    """
    for name, cov in (("cov_0", cov_0), ("cov_1", cov_1)):
        if jnp.ndim(cov) < 2 or cov.shape[-1] != cov.shape[-2]:
            raise ValueError(f"`{name}` must be [..., k, k]; got {jnp.shape(cov)}.")
    return kl_mvn_tril(mean_0, jnp.linalg.cholesky(cov_0), mean_1, jnp.linalg.cholesky(cov_1))


def kl_monte_carlo(log_q: jax.Array, log_p: jax.Array) -> jax.Array:
    """Monte Carlo estimate of KL(q || p) from K samples z_k ~ q.

        KL(q || p) ~= 1/K sum_k [ log q(z_k) - log p(z_k) ]

    Unbiased for any q and p whose log densities can be evaluated, e.g. a mixture or VampPrior p
    with no closed-form KL (Kingma & Welling 2014, Sec. 2.3; Tomczak & Welling 2018, "VAE with
    a VampPrior"). Its standard error is std_k(log q - log p) / sqrt(K).

    Args:
      log_q: [K, ...] log q(z_k), each already summed over the latent axis.
      log_p: [K, ...] log p(z_k) at the same samples (broadcastable against `log_q`).

    Returns:
      [...] the mean over the sample axis 0, in nats.
    """
    shape = _broadcast_shapes(log_q=jnp.shape(log_q), log_p=jnp.shape(log_p))
    if not shape:
        raise ValueError(
            f"Need a leading sample axis [K, ...]; got log_q: {jnp.shape(log_q)}, "
            f"log_p: {jnp.shape(log_p)}."
        )
    return jnp.mean(log_q - log_p, axis=0)


# ---------------------------------------------------------------------------------------------
# Densities over latents.


def gaussian_log_density(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, diag exp(logvar)), summed over the last (latent) axis.

        log N = -1/2 * sum_j [ log(2 pi) + logvar_j + (z_j - mean_j)^2 / exp(logvar_j) ]

    Used for importance weights log p(z) - log q(z|x) (Burda et al. 2016, "Importance Weighted
    Autoencoders", Sec. 3).

    Args:
      z: [..., Z], e.g. [K, B, Z] importance samples.
      mean, logvar: [..., Z], broadcast against `z` (e.g. [B, Z] posterior parameters).

    Returns:
      [...] log density in nats (the broadcast shape without its last axis).
    """
    _broadcast_shapes(z=jnp.shape(z), mean=jnp.shape(mean), logvar=jnp.shape(logvar))
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


# ---------------------------------------------------------------------------------------------
# Log-likelihoods of data, [B, ...] -> [B].


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log Bernoulli(x; sigmoid(logits)), summed over all non-batch axes.

        log p(x) = sum_i [ x_i log p_i + (1 - x_i) log(1 - p_i) ],   p_i = sigmoid(logits_i)
                 = sum_i [ x_i * logits_i - softplus(logits_i) ]

    The second form never takes the log of a sigmoid, so it is accurate for any finite logits.
    For fractional x in [0, 1] (e.g. greyscale MNIST) it is the negative binary cross-entropy,
    which is not a normalised density on [0, 1]; `continuous_bernoulli_log_likelihood` is.
    (Kingma & Welling 2014, "Auto-Encoding Variational Bayes", Appendix C.1.)

    Args:
      logits: [B, ...] decoder outputs.
      x: same shape, assumed in [0, 1] (not checked: values are unknown inside jit).

    Returns:
      [B] log-likelihood in nats.
    """
    chex.assert_equal_shape([logits, x])
    _assert_batched(x, "x")
    return fastpath.sum_non_batch(x * logits - fastpath.softplus(logits))


def gaussian_log_likelihood(
    x: jax.Array,
    mean: jax.Array,
    logvar: jax.Array | float,
) -> jax.Array:
    """log N(x; mean, diag exp(logvar)), summed over all non-batch axes.

        log p(x) = -1/2 * sum_i [ (x_i - mean_i)^2 / sigma_i^2 + log sigma_i^2 + log(2 pi) ]

    With a fixed scalar logvar = log sigma^2 and D elements per example this is

        log p(x) = -||x - mean||^2 / (2 sigma^2) - D/2 * (log sigma^2 + log(2 pi)),

    the summed squared error scaled by -1/(2 sigma^2) minus a constant: an "MSE loss" is this
    likelihood up to scale and shift. With a learned logvar (per pixel, shaped like x or
    broadcastable to it, e.g. [H, W, C] shared across the batch) it is the Gaussian decoder of
    Kingma & Welling 2014, Appendix C.2.

    Args:
      x: [B, ...] data.
      mean: same shape as x.
      logvar: a scalar, or an array broadcastable to x's shape.

    Returns:
      [B] log-likelihood in nats.
    """
    chex.assert_equal_shape([mean, x])
    _assert_batched(x, "x")
    chex.assert_is_broadcastable(jnp.shape(logvar), x.shape)
    log_density = -0.5 * (jnp.square(x - mean) * jnp.exp(-logvar) + logvar + _LOG_2PI)
    return fastpath.sum_non_batch(jnp.broadcast_to(log_density, x.shape))


def _continuous_bernoulli_log_norm(logits: jax.Array) -> jax.Array:
    """log C of the continuous Bernoulli as a function of eta = logits, elementwise.

    With lambda = sigmoid(eta): 1 - 2 lambda = -tanh(eta / 2), artanh(1 - 2 lambda) = -eta / 2, so

        C     = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = eta / tanh(eta / 2),
        log C = log|eta| - log(1 - exp(-|eta|)) + log(1 + exp(-|eta|))          (exact form)
              = log 2 + eta^2/12 - 7 eta^4/1440 + 31 eta^6/90720 + O(eta^8)   (Taylor form).

    The exact form cannot overflow for any |eta| but is 0/0 at eta = 0, and its gradient
    1/eta - 1/sinh(eta) (~eta/6) loses ~eps/|eta| to cancellation, a relative error ~6 eps/eta^2.
    The Taylor form is used for |eta| < 0.1: its truncation error there is below 3e-13 (next
    term -127 eta^8/4838400), and at |eta| = 0.1 the exact gradient is still good to ~4e-5
    relative in float32 (a band of 1e-2 would leave it only ~4e-3 accurate at the switch). Each
    branch gets a harmless dummy input where it is not selected (the double-where trick), so
    values and gradients are finite everywhere.
    """
    is_small = jnp.abs(logits) < _CB_TAYLOR_BAND
    abs_large = jnp.abs(jnp.where(is_small, 1.0, logits))
    exact = (
        jnp.log(abs_large)
        - jnp.log(-jnp.expm1(-abs_large))
        + fastpath.log1p_of_unit(jnp.exp(-abs_large))
    )
    eta_sq = jnp.square(jnp.where(is_small, logits, 0.0))
    taylor = math.log(2.0) + eta_sq * (1 / 12 + eta_sq * (-7 / 1440 + eta_sq * 31 / 90720))
    return jnp.where(is_small, taylor, exact)


def continuous_bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log CB(x; lambda) of the continuous Bernoulli, summed over all non-batch axes.

    The continuous Bernoulli is the normalised density on [0, 1] (Loaiza-Ganem & Cunningham
    2019, "The continuous Bernoulli: fixing a pervasive error in variational autoencoders",
    Sec. 3):

        p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x),
        C(lambda)     = 2 artanh(1 - 2 lambda) / (1 - 2 lambda)   (C(1/2) = 2),

    written in logits eta (lambda = sigmoid(eta)) as

        log p(x) = sum_i [ x_i eta_i - softplus(eta_i) + log C(eta_i) ],  C = eta / tanh(eta / 2),

    which does not overflow for large |eta|, and with log C from its Taylor series for
    |eta| < 0.1 (see `_continuous_bernoulli_log_norm`), so values and gradients are finite
    everywhere, including eta = 0 where the closed form is 0/0. This is a density, so log p can
    be positive.

    Args:
      logits: [B, ...] decoder outputs eta.
      x: same shape, assumed in [0, 1] (not checked: values are unknown inside jit).

    Returns:
      [B] log-likelihood in nats.
    """
    chex.assert_equal_shape([logits, x])
    _assert_batched(x, "x")
    log_bernoulli = x * logits - fastpath.softplus(logits)
    return fastpath.sum_non_batch(log_bernoulli + _continuous_bernoulli_log_norm(logits))


def discretized_logistic_log_likelihood(
    x: jax.Array,
    mean: jax.Array,
    log_scale: jax.Array | float,
    num_bins: int = 256,
) -> jax.Array:
    """log P(x) of a logistic discretised into `num_bins` bins, summed over all non-batch axes.

    For 8-bit data rescaled to x = k / (num_bins - 1) in [0, 1], the bin of x has half-width
    h = 1 / (2 (num_bins - 1)). With F(t) = sigmoid((t - mean) / s) and s = exp(log_scale):

        P(x) = F(x + h) - F(x - h)   for 0 < k < num_bins - 1,
        P(0) = F(h),   P(1) = 1 - F(1 - h)   (the edge bins extend to -inf and +inf),

    as in PixelCNN++ (Salimans et al. 2017, Sec. 2.1, Eq. 2), so the masses of all bins sum to 1.
    The interior mass is evaluated, with a = (x - h - mean) / s < b = (x + h - mean) / s, as

        log(sigmoid(b) - sigmoid(a)) = log sigmoid(b) + log sigmoid(-a) + log(1 - exp(a - b)),

    which is exact in log space: no probabilities are subtracted, so it does not underflow to
    log 0 in the tails or for tiny scales. (It replaces PixelCNN++'s fallback to
    log pdf(x) + log(2h) when the difference of CDFs underflows; that fallback is an
    approximation this form does not need.)

    Args:
      x: [B, ...] in [0, 1] on the grid k / (num_bins - 1) (not checked inside jit).
      mean: same shape as x; the logistic location, in the units of x.
      log_scale: a scalar, or an array broadcastable to x's shape.
      num_bins: number of discrete levels (256 for 8-bit images); a static Python int >= 2.

    Returns:
      [B] log-likelihood (log probability mass) in nats.
    """
    chex.assert_equal_shape([mean, x])
    _assert_batched(x, "x")
    chex.assert_is_broadcastable(jnp.shape(log_scale), x.shape)
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2; got {num_bins}.")
    half_width = 0.5 / (num_bins - 1)
    inv_scale = jnp.exp(-log_scale)
    upper = (x - mean + half_width) * inv_scale  # b
    lower = (x - mean - half_width) * inv_scale  # a
    log_cdf_upper = jax.nn.log_sigmoid(upper)
    log_survival_lower = jax.nn.log_sigmoid(-lower)
    # b - a = 2h / s exactly, rather than the rounded difference upper - lower.
    log_interior = (
        log_cdf_upper + log_survival_lower + jnp.log(-jnp.expm1(-2.0 * half_width * inv_scale))
    )
    log_mass = jnp.where(
        x < half_width,
        log_cdf_upper,
        jnp.where(x > 1.0 - half_width, log_survival_lower, log_interior),
    )
    return fastpath.sum_non_batch(jnp.broadcast_to(log_mass, x.shape))
