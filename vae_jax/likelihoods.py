"""Likelihoods p(x | z) by name: log-probability, mean, support and data-mean output bias.

A `Likelihood` is a small static value, chosen by name with `make_likelihood`, that carries
what the rest of the code needs of p(x | z) (issue 13: it replaces the (likelihood,
gaussian_logvar, num_bins) triple threaded through the losses and the evaluator):

    num_params            decoder outputs per data channel (1, or 2 for a location and a scale)
    log_prob(out, x)      log p(x | z) [B], summed over the data dimensions (nats)
    mean(out)             the mean of p(x | z) shaped like the data, for pictures
    check_support(x)      a ValueError for concrete data outside the support (host side)
    support_violations(x) the traced count of such values, cheap enough for every batch
    data_mean_bias(mean)  the decoder output bias that starts p(x | z) at the data's pixel means

The math is `vae_jax.distributions`; the module-level functions below are the same operations
by name, which `vae_jax.losses` re-exports.

Which to use: `bernoulli` is the exact likelihood of binary data (binarised MNIST);
`gaussian` (fixed variance: MSE up to a scale and a constant) and `gaussian_learned` model
continuous grey levels (Fashion-MNIST); `continuous_bernoulli` is the normalised density on
[0, 1] (Loaiza-Ganem & Cunningham 2019); `discretized_logistic` is a probability of 8-bit
levels (Salimans et al. 2017).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import distributions

# name -> number of decoder outputs per data channel.
LIKELIHOODS = {
    "bernoulli": 1,
    "gaussian": 1,
    "gaussian_learned": 2,
    "continuous_bernoulli": 1,
    "discretized_logistic": 2,
}

# Densities of continuous intensities rather than probabilities of pixel levels: log p(x) at the
# grid points is not a code length. Trained on dequantised data (config `data.dequantize`), they
# bound the log-probability of the levels (`dequantized_log_mass_bound`).
DENSITY_LIKELIHOODS = ("gaussian", "gaussian_learned", "continuous_bernoulli")

def _check_likelihood(name: str) -> None:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; valid names: {sorted(LIKELIHOODS)}")


def likelihood_num_params(likelihood: str) -> int:
    """Number of decoder output channels per data channel the likelihood needs (1 or 2)."""
    _check_likelihood(likelihood)
    return LIKELIHOODS[likelihood]


def check_data_support(x, likelihood: str, *, num_bins: int = 256) -> None:
    """Raises ValueError when concrete data lie outside the likelihood's support.

    Bernoulli and continuous Bernoulli need x in [0, 1]; the discretised logistic needs x on
    the grid k / (num_bins - 1) in [0, 1]; the Gaussians need finite x. Called at the public
    boundaries where values are concrete (data loading, eager calls of `elbo`); inside `jax.jit`
    the data are assumed to satisfy it.
    """
    _check_likelihood(likelihood)
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"data for the {likelihood!r} likelihood contain non-finite values")
    if likelihood == "gaussian" or likelihood == "gaussian_learned":
        return
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"the {likelihood!r} likelihood needs data in [0, 1]; got values in "
            f"[{lo:.4g}, {hi:.4g}] (scale pixels to [0, 1] first)"
        )
    if likelihood == "discretized_logistic":
        levels = x * (num_bins - 1)
        if not np.allclose(levels, np.round(levels), atol=1e-4):
            raise ValueError(
                f"the 'discretized_logistic' likelihood needs data on the grid k/{num_bins - 1};"
                " got values between grid points"
            )


def support_violations(x, likelihood: str, *, num_bins: int = 256):
    """The number of elements of `x` outside the likelihood's support, as an int32 scalar.

    The traced counterpart of `check_data_support`, cheap enough for every batch of a jitted
    step: a Bernoulli log-likelihood of x in [0, 2] is finite and differentiable, so data
    outside the support train silently to a meaningless loss instead of failing. Bernoulli
    types need x in [0, 1], the discretised logistic x on the grid k / (num_bins - 1), and the
    Gaussians finite x; non-finite x is outside every support.
    """
    _check_likelihood(likelihood)
    outside = ~jnp.isfinite(x)
    if likelihood not in ("gaussian", "gaussian_learned"):
        outside |= (x < 0.0) | (x > 1.0)
    if likelihood == "discretized_logistic":
        levels = x * (num_bins - 1)
        outside |= jnp.abs(levels - jnp.round(levels)) > 1e-4
    return jnp.sum(outside, dtype=jnp.int32)


def is_grey_level_bernoulli(likelihood: str, *, binarized: bool, num_levels: int) -> bool:
    """Whether a Bernoulli would be fitted to grey levels (pytorch/examples#460): a binary
    likelihood on data with more than two levels that are not binarised, which is a
    cross-entropy loss but not a likelihood."""
    return likelihood == "bernoulli" and not binarized and num_levels > 2


def dequantized_log_mass_bound(log_density, num_dims: int, num_levels: int = 256):
    """Lower bound on log P(k) of L-level data from a density's log p(y) at y = (k + u) / L.

        log P(k) >= E_u[log p((k + u) / L)] - D log L,   u ~ U[0, 1)^D

    (Theis et al. 2016, "A note on the evaluation of generative models", Sec. 3.1: bin k has
    volume L^-D; see `input_pipeline.uniform_dequantize`.) In bits per dimension,
    -bound / (D ln 2) = -E_u[log p(y)] / (D ln 2) + log2 L. A lower bound on log p(y) (an ELBO,
    an IWAE bound) gives a lower bound on log P(k) the same way.

    Args:
      log_density: estimates of log p(y) in nats (one draw of u each), any shape.
      num_dims: D, data dimensions per example (H * W * C).
      num_levels: L, levels per pixel.

    Returns:
      float64 numpy array (host side) of log_density's shape, in nats.
    """
    return np.asarray(log_density, dtype=np.float64) - num_dims * math.log(num_levels)


def log_likelihood(
    likelihood: str,
    decoder_out,
    x,
    *,
    gaussian_logvar: float = 0.0,
    num_bins: int = 256,
):
    """log p(x | z) per example, in nats, summed over all data dimensions.

    Args:
      likelihood: one of `LIKELIHOODS`.
      decoder_out: [B, H, W, C * P] decoder output, P = `likelihood_num_params(likelihood)`.
        For P = 2 the first C channels are the mean and the last C the log-variance (Gaussian)
        or log-scale (discretised logistic).
      x: [B, H, W, C] data.
      gaussian_logvar: the fixed log-variance of the `gaussian` likelihood.
      num_bins: number of intensity levels for `discretized_logistic`.

    Returns:
      [B] log-likelihoods.
    """
    p = likelihood_num_params(likelihood)
    chex.assert_shape(decoder_out, x.shape[:-1] + (x.shape[-1] * p,))
    # Everything is computed on [B, D] rows: XLA:CPU ran the elementwise log-likelihood and its
    # sum over [B, 28, 28, 1] up to 7x slower than over the same numbers as [B, 784].
    flat = functools.partial(jnp.reshape, shape=(x.shape[0], -1))
    x = flat(x)
    if likelihood == "bernoulli":
        return distributions.bernoulli_log_likelihood(flat(decoder_out), x)
    if likelihood == "continuous_bernoulli":
        return distributions.continuous_bernoulli_log_likelihood(flat(decoder_out), x)
    if likelihood == "gaussian":
        return distributions.gaussian_log_likelihood(
            x, flat(decoder_out), jnp.float32(gaussian_logvar))
    first, second = (flat(part) for part in jnp.split(decoder_out, 2, axis=-1))
    if likelihood == "gaussian_learned":
        return distributions.gaussian_log_likelihood(x, first, second)
    return distributions.discretized_logistic_log_likelihood(x, first, second, num_bins=num_bins)


OUTPUT_BIAS_INITS = ("zeros", "data_mean")
# Likelihoods with one decoder output per data value that is a function of the mean alone.
DATA_MEAN_BIAS_LIKELIHOODS = ("bernoulli", "gaussian")


def data_mean_output_bias(likelihood: str, pixel_mean, *, clip: float = 1e-3):
    """The decoder output that makes p(x | z) have the data's per-pixel mean, [F].

    With the decoder's output bias set to this (`models.set_output_bias`), a decoder whose last
    hidden layer is zero models every pixel at its marginal mean, so training starts from the
    best factorised model of the data instead of p = 1/2 everywhere:

        bernoulli:  bias_f = logit(m_f) = -log(1 / m_f - 1),  m_f = clip(mean_f, clip, 1 - clip)
        gaussian:   bias_f = mean_f   (the decoder outputs the mean; the variance is fixed)

    The Bernoulli form, with clip 0.001, is the initialisation of Burda et al.'s code for
    "Importance Weighted Autoencoders" (2015; `get_train_bias_np`). The clip keeps the logits of
    always-black border pixels finite (about -6.9).

    Args:
      likelihood: "bernoulli" or "gaussian" (the likelihoods with one output per data value
        whose mean is a function of it alone).
      pixel_mean: [...] mean of the training data in the likelihood's units (in [0, 1] for
        Bernoulli), any shape; flattened in C order.
      clip: Bernoulli only: means are clipped to [clip, 1 - clip].

    Returns:
      [F] float32 bias, F = pixel_mean.size.
    """
    _check_likelihood(likelihood)
    mean_f = np.asarray(pixel_mean, np.float64).reshape(-1)
    if not np.all(np.isfinite(mean_f)):
        raise ValueError("pixel means must be finite")
    if likelihood == "bernoulli":
        if mean_f.min() < 0.0 or mean_f.max() > 1.0:
            raise ValueError(
                f"Bernoulli pixel means must lie in [0, 1]; got [{mean_f.min()}, {mean_f.max()}]"
            )
        mean_f = np.clip(mean_f, clip, 1.0 - clip)
        return (-np.log(1.0 / mean_f - 1.0)).astype(np.float32)
    if likelihood == "gaussian":
        return mean_f.astype(np.float32)
    raise ValueError(
        f"a data-mean output bias is defined for {list(DATA_MEAN_BIAS_LIKELIHOODS)}; "
        f"{likelihood!r} has {likelihood_num_params(likelihood)} output(s) per data value "
        f"whose mean is not one of them"
    )


def likelihood_mean(likelihood: str, decoder_out):
    """The mean of p(x | z) shaped like the data [B, H, W, C], for pictures.

    Bernoulli: sigmoid(logits). Continuous Bernoulli: its mean
    lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)) = 1 / (1 - e^-eta) - 1 / eta in logits
    eta, which tends to 1/2 as eta -> 0.
    Gaussians and the discretised logistic: the location, clipped to [0, 1].
    """
    p = likelihood_num_params(likelihood)
    loc = decoder_out[..., : decoder_out.shape[-1] // p]
    if likelihood == "bernoulli":
        return jax.nn.sigmoid(loc)
    if likelihood == "continuous_bernoulli":
        # Computed from the logits: lambda = sigmoid(eta) rounds to 1 in float32 for eta > ~17,
        # which would cap the mean near 0.93 (and 0.07) however saturated the logits are.
        near_zero = jnp.abs(loc) < 0.5
        safe = jnp.where(near_zero, 1.0, loc)
        exact = -1.0 / jnp.expm1(-safe) - 1.0 / safe
        # Taylor series at 0 (from coth); the next term, eta^7 / 1209600, is < 1e-8 here.
        eta_sq = jnp.square(loc)
        taylor = 0.5 + loc * (1.0 / 12.0 + eta_sq * (-1.0 / 720.0 + eta_sq / 30240.0))
        return jnp.where(near_zero, taylor, exact)
    return jnp.clip(loc, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """p(x | z) of one family with its static settings; hashable, so it can be a static
    argument of a jitted function.

    Attributes:
      name: a key of `LIKELIHOODS`.
      gaussian_logvar: the fixed log-variance of `gaussian`.
      num_bins: the number of intensity levels of `discretized_logistic` (and of the grid
        its support check asks for).
    """

    name: str
    gaussian_logvar: float = 0.0
    num_bins: int = 256

    def __post_init__(self):
        _check_likelihood(self.name)

    @property
    def num_params(self) -> int:
        return LIKELIHOODS[self.name]

    @property
    def is_density(self) -> bool:
        """A density of continuous intensities (bounds bits/dim only on dequantised data)."""
        return self.name in DENSITY_LIKELIHOODS

    def log_prob(self, decoder_out, x):
        """log p(x | z) [B] (`log_likelihood`)."""
        return log_likelihood(self.name, decoder_out, x, gaussian_logvar=self.gaussian_logvar,
                              num_bins=self.num_bins)

    def mean(self, decoder_out):
        """The mean of p(x | z) [B, H, W, C] (`likelihood_mean`)."""
        return likelihood_mean(self.name, decoder_out)

    def check_support(self, x) -> None:
        """`check_data_support` of concrete data."""
        check_data_support(x, self.name, num_bins=self.num_bins)

    def support_violations(self, x):
        """`support_violations`: an int32 count, traceable."""
        return support_violations(x, self.name, num_bins=self.num_bins)

    def data_mean_bias(self, pixel_mean):
        """`data_mean_output_bias` [F]."""
        return data_mean_output_bias(self.name, pixel_mean)


def make_likelihood(name: str, *, gaussian_logvar: float = 0.0, num_bins: int = 256
                    ) -> Likelihood:
    """The likelihood `name` (a ValueError listing the valid names for an unknown one)."""
    return Likelihood(name, gaussian_logvar=float(gaussian_logvar), num_bins=int(num_bins))
