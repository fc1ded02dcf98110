"""Approximate posteriors q(z|x) for VAEs, selected by name: `diagonal`, `full_covariance`, `iaf`.

The encoder network emits an `Encoded` (mean [B, Z], logvar [B, Z], and an extra head [B, E]
whose width E = `posterior.extra_dim(Z)` the posterior asks for). A posterior turns that, its own
parameters (a pytree; {} when it has none) and GIVEN standard normal noise eps [K, B, Z] into
samples and their exact log densities. The noise is drawn by the caller, so every family shares
one noise scheme and z is a differentiable function of (params, enc, eps) (the
reparameterisation trick, Kingma & Welling 2014, "Auto-Encoding Variational Bayes", Sec. 2.4).

Every family starts from the same Gaussian draw z0 = mean + L eps and reads log q off eps,

    log q(z0|x) = log N(eps; 0, I) - log|det L| = -1/2 sum_j [ log(2 pi) + eps_j^2 ]
                                                  - 1/2 sum_j logvar_j,

because diag(L) = exp(logvar / 2) for both scale factors used here, and an invertible map
z = f(z0) with a triangular Jacobian changes it by - log|det df/dz0| (Rezende & Mohamed 2015,
"Variational Inference with Normalizing Flows", Eq. 6):

* `diagonal`: L = diag(exp(logvar / 2)), z = z0. E = 0.
* `full_covariance`: L = diag(exp(logvar / 2)) + strictly lower triangle filled from `extra`
  (E = Z(Z-1)/2 entries in the row-major order of `np.tril_indices(Z, -1)`: (1,0), (2,0), (2,1),
  (3,0), ...), so q = N(mean, L L^T), any covariance. z = z0.
* `iaf`: inverse autoregressive flow (Kingma et al. 2016, "Improved Variational Inference with
  Inverse Autoregressive Flow", Algorithm 1 and Eqs. 13-15). From the diagonal z0, T steps

      [m_t, s_t] = MADE_t(z_{t-1}, h),  sigma_t = sigmoid(s_t),
      z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t,
      log q(z_T|x) = log q(z0|x) - sum_t sum_j log sigma_{t,j},

  where MADE_t (Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation")
  makes (m_t, s_t)_j depend on z_{t-1} only through the coordinates before j in step t's order,
  so dz_t/dz_{t-1} is triangular with diagonal sigma_t, and the context h = `extra` [B, E] is
  unmasked. The order is reversed between steps (steps 0, 2, ... use 0, 1, ..., Z-1; steps
  1, 3, ... use Z-1, ..., 0).

Conventions (those of `vae_jax.distributions`): nats; per-example log densities and KLs summed
over the latent axis; shape letters K samples, B batch, Z latent, E extra head.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from vae_jax import distributions, fastpath

Params = Any  # a pytree of arrays; {} for a posterior without parameters

_LOG_2PI = math.log(2.0 * math.pi)
# z = mean + L eps at full float32 precision (no TF32 / bfloat16 passes on GPUs and TPUs), so
# log q read off eps stays the density at the returned z.
_HIGHEST = jax.lax.Precision.HIGHEST


class Encoded(NamedTuple):
    """What the encoder network emits for a batch of B examples with Z latent dimensions.

    Attributes:
      mean: [B, Z] mean of the posterior's Gaussian part.
      logvar: [B, Z] log of the diagonal of its covariance (log diag(L)^2 for full_covariance).
      extra: [B, E] extra head, E = `posterior.extra_dim(Z)`; None when E == 0.
    """

    mean: jax.Array
    logvar: jax.Array
    extra: jax.Array | None = None


def _check_encoded(enc: Encoded, extra_dim: int) -> None:
    """Raises a ValueError naming the shapes unless `enc` fits a posterior with `extra_dim`."""
    chex.assert_equal_shape([enc.mean, enc.logvar])
    if jnp.ndim(enc.mean) < 1:
        raise ValueError(f"Encoded.mean must be [B, Z]; got {jnp.shape(enc.mean)}.")
    if extra_dim == 0:
        if enc.extra is not None and jnp.shape(enc.extra)[-1:] != (0,):
            raise ValueError(
                f"This posterior takes no extra head; got Encoded.extra {jnp.shape(enc.extra)}."
            )
        return
    expected = (*enc.mean.shape[:-1], extra_dim)
    if enc.extra is None or jnp.shape(enc.extra) != expected:
        got = None if enc.extra is None else jnp.shape(enc.extra)
        raise ValueError(
            f"Encoded.extra must be {expected} for Z = {enc.mean.shape[-1]}; got {got}."
        )


def _check_noise(enc: Encoded, eps_kbz: jax.Array) -> None:
    b_z = enc.mean.shape
    if jnp.ndim(eps_kbz) <= len(b_z) or jnp.shape(eps_kbz)[-len(b_z):] != b_z:
        raise ValueError(
            f"Noise must be [K, B, Z] with [B, Z] = {b_z} (the encoder's mean); "
            f"got {jnp.shape(eps_kbz)}."
        )


def _standard_normal_log_density(eps: jax.Array) -> jax.Array:
    """log N(eps; 0, I) summed over the last axis: -1/2 sum_j (log(2 pi) + eps_j^2)."""
    return -0.5 * jnp.sum(_LOG_2PI + jnp.square(eps), axis=-1)


@dataclasses.dataclass(frozen=True)
class Posterior:
    """The interface every posterior family implements; one subclass per entry of POSTERIORS.

    Instances are frozen dataclasses (hashable), so a posterior can be a static argument of
    `jax.jit`. Its learned parameters are not attributes: `init` returns them and every method
    takes them explicitly. The defaults here are the diagonal Gaussian part
    N(mean, diag exp(logvar)), shared by `diagonal` and `iaf`.
    """

    name: ClassVar[str]
    # Whether the encoder's extra head starts at zero (`models.MLPEncoder.extra_zero_init`).
    extra_zero_init: ClassVar[bool] = False

    def extra_dim(self, latent_dim: int) -> int:
        """Width E of the encoder's extra head `Encoded.extra` for Z = `latent_dim`; 0 = none."""
        del latent_dim
        return 0

    def init(self, key: jax.Array, latent_dim: int) -> Params:
        """The posterior's own parameters (a pytree) for Z = `latent_dim`; {} when none."""
        del key, latent_dim
        return {}

    def sample(
        self, params: Params, enc: Encoded, eps_kbz: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Reparameterised samples z = f(params, enc, eps) and their exact log density.

        Args:
          params: from `init`.
          enc: the encoder's output for B examples.
          eps_kbz: [K, B, Z] standard normal noise, drawn by the caller (any number of leading
            sample axes works: [..., B, Z]).

        Returns:
          (z_kbz [K, B, Z], log_q_kb [K, B]): log q(z|x) in nats, summed over Z.
        """
        raise NotImplementedError

    def base_log_prob(self, enc: Encoded, z_kbz: jax.Array) -> jax.Array:
        """log density of the Gaussian part N(mean, diag exp(logvar)) at arbitrary z.

            log N(z; mean, diag exp(logvar)) = -1/2 sum_j [ log(2 pi) + logvar_j
                                                            + (z_j - mean_j)^2 exp(-logvar_j) ]

        For `diagonal` this is q itself; for `iaf` it is the flow's base distribution (the
        VampPrior's components use it: Tomczak & Welling 2018, "VAE with a VampPrior").

        Args:
          enc: [B, Z] mean and logvar.
          z_kbz: [..., Z], broadcast against [B, Z] (e.g. [K, B, Z], or [K, N, 1, Z] against
            B = C pseudo-inputs for a [K, N, C] table).

        Returns:
          [...] the broadcast shape without its last axis, nats summed over Z.
        """
        return distributions.gaussian_log_density(z_kbz, enc.mean, enc.logvar)

    def base_log_prob_table(self, enc: Encoded, z_nz: jax.Array) -> jax.Array:
        """[N, C]: `base_log_prob` of every z_n under each of C encoded inputs (enc [C, Z]),
        the component table of a mixture of them (the VampPrior's). The diagonal Gaussian
        part goes through `fastpath.gaussian_log_density_table` (two matmuls on the CPU)."""
        return fastpath.gaussian_log_density_table(z_nz, enc.mean, enc.logvar)

    def base_sample(self, enc: Encoded, eps_kbz: jax.Array) -> jax.Array:
        """A draw of the Gaussian part: z = mean + exp(logvar / 2) * eps, [K, B, Z]."""
        _check_noise(enc, eps_kbz)
        return enc.mean + jnp.exp(0.5 * enc.logvar) * eps_kbz

    def point(self, params: Params, enc: Encoded) -> jax.Array:
        """A single code per example [B, Z] (active units, traversals, disentanglement)."""
        raise NotImplementedError

    def kl_standard_normal(
        self, enc: Encoded
    ) -> tuple[jax.Array, jax.Array | None] | None:
        """Closed-form KL(q(z|x) || N(0, I)) as (kl_b [B], kl_per_dim_bz [B, Z] or None).

        None when there is no closed form (the caller then uses a Monte Carlo estimate,
        `distributions.kl_monte_carlo`). Per-dimension terms are given only where the KL is a
        sum over dimensions (independent coordinates).
        """
        del enc
        return None


@dataclasses.dataclass(frozen=True)
class Diagonal(Posterior):
    """q(z|x) = N(mean, diag exp(logvar)), the standard VAE posterior; no parameters, E = 0.

        z = mean + exp(logvar / 2) * eps,
        log q(z|x) = -1/2 sum_j [ log(2 pi) + logvar_j + eps_j^2 ]

    (Kingma & Welling 2014, Sec. 2.4 and Appendix B). log q is read off eps rather than
    recomputed from z - mean, which loses digits to cancellation when exp(logvar / 2) << |mean|;
    the two agree to rounding and have the same total derivative.
    """

    name: ClassVar[str] = "diagonal"

    def sample(
        self, params: Params, enc: Encoded, eps_kbz: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """See `Posterior.sample`: [K, B, Z] samples and log q [K, B] (formula in the class)."""
        del params
        _check_encoded(enc, 0)
        z_kbz = self.base_sample(enc, eps_kbz)
        log_q_kb = _standard_normal_log_density(eps_kbz) - 0.5 * jnp.sum(enc.logvar, axis=-1)
        return z_kbz, log_q_kb

    def point(self, params: Params, enc: Encoded) -> jax.Array:
        """E[z|x] = mean, [B, Z]."""
        del params
        _check_encoded(enc, 0)
        return enc.mean

    def kl_standard_normal(self, enc: Encoded) -> tuple[jax.Array, jax.Array]:
        """KL(N(mean, diag exp(logvar)) || N(0, I)) and its per-dimension terms.

            KL_j = -1/2 (1 + logvar_j - mean_j^2 - exp(logvar_j)),   KL = sum_j KL_j

        (Kingma & Welling 2014, Appendix B; `distributions.kl_standard_normal` per coordinate).

        Returns:
          (kl_b [B], kl_per_dim_bz [B, Z]) in nats; kl_b is the sum of kl_per_dim_bz over Z.
        """
        _check_encoded(enc, 0)
        kl_per_dim_bz = distributions.kl_standard_normal(enc.mean[..., None], enc.logvar[..., None])
        return jnp.sum(kl_per_dim_bz, axis=-1), kl_per_dim_bz


@dataclasses.dataclass(frozen=True)
class FullCovariance(Posterior):
    """q(z|x) = N(mean, L L^T) with a lower-triangular Cholesky factor L; no parameters.

        L = diag(exp(logvar / 2)) + strictly_lower(extra),   E = Z (Z - 1) / 2,
        z = mean + L eps,
        log q(z|x) = -1/2 sum_j [ log(2 pi) + eps_j^2 ] - sum_j log L_jj
                   = -1/2 sum_j [ log(2 pi) + logvar_j + eps_j^2 ],

    with the strictly lower entries of L taken from `extra` [B, E] in the row-major order of
    `np.tril_indices(Z, -1)`. A positive diagonal makes L a valid Cholesky factor for any
    encoder output, so every covariance is reachable. (The Cholesky-factor Gaussian of Kingma &
    Welling 2014, Sec. 2.4.)
    """

    name: ClassVar[str] = "full_covariance"
    # The off-diagonal head starts at zero, so training starts from a diagonal q: with the
    # head's default scale L L^T started far from any posterior (MNIST, Z = 32, 10 epochs:
    # 108.96 nats, 97.91 with the zero start; experiments/mnist_full_covariance.py).
    extra_zero_init: ClassVar[bool] = True

    def extra_dim(self, latent_dim: int) -> int:
        """Z (Z - 1) / 2, the strictly lower triangle of L."""
        return latent_dim * (latent_dim - 1) // 2

    def scale_tril(self, enc: Encoded) -> jax.Array:
        """The Cholesky factor L [B, Z, Z] of the covariance (formula in the class docstring)."""
        latent_dim = enc.mean.shape[-1]
        _check_encoded(enc, self.extra_dim(latent_dim))
        diag_bzz = jnp.exp(0.5 * enc.logvar)[..., None] * jnp.eye(latent_dim, dtype=enc.mean.dtype)
        if latent_dim == 1:
            return diag_bzz
        rows, cols = np.tril_indices(latent_dim, -1)
        return diag_bzz.at[..., rows, cols].set(enc.extra)

    def sample(
        self, params: Params, enc: Encoded, eps_kbz: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """See `Posterior.sample`: [K, B, Z] samples and log q [K, B] (formula in the class)."""
        del params
        z_kbz = self.base_sample(enc, eps_kbz)
        log_q_kb = _standard_normal_log_density(eps_kbz) - 0.5 * jnp.sum(enc.logvar, axis=-1)
        return z_kbz, log_q_kb

    def base_sample(self, enc: Encoded, eps_kbz: jax.Array) -> jax.Array:
        """z = mean + L eps, [K, B, Z]."""
        _check_noise(enc, eps_kbz)
        scale_bzz = self.scale_tril(enc)
        return enc.mean + jnp.einsum("...ij,...j->...i", scale_bzz, eps_kbz, precision=_HIGHEST)

    def base_log_prob(self, enc: Encoded, z_kbz: jax.Array) -> jax.Array:
        """log N(z; mean, L L^T) at arbitrary z (here the Gaussian part is all of q).

            log N = -1/2 ||L^-1 (z - mean)||^2 - sum_j log L_jj - Z/2 log(2 pi)

        L^-1 comes from one triangular solve per example, so z may carry any leading axes.

        Args:
          enc: [B, Z] mean and logvar, [B, E] extra.
          z_kbz: [..., Z], broadcast against [B, Z] as in `Posterior.base_log_prob`.

        Returns:
          [...] nats, summed over Z.
        """
        scale_bzz = self.scale_tril(enc)
        eye = jnp.broadcast_to(jnp.eye(scale_bzz.shape[-1], dtype=scale_bzz.dtype), scale_bzz.shape)
        inv_scale_bzz = solve_triangular(scale_bzz, eye, lower=True)
        diff = z_kbz - enc.mean
        whitened = jnp.matmul(inv_scale_bzz, diff[..., None], precision=_HIGHEST)[..., 0]
        return _standard_normal_log_density(whitened) - 0.5 * jnp.sum(enc.logvar, axis=-1)

    def base_log_prob_table(self, enc: Encoded, z_nz: jax.Array) -> jax.Array:
        """[N, C]: `base_log_prob` of every z_n under each of the C encoded inputs."""
        return self.base_log_prob(enc, z_nz[:, None, :])

    def point(self, params: Params, enc: Encoded) -> jax.Array:
        """E[z|x] = mean, [B, Z]."""
        del params
        _check_encoded(enc, self.extra_dim(enc.mean.shape[-1]))
        return enc.mean

    def kl_standard_normal(self, enc: Encoded) -> tuple[jax.Array, None]:
        """KL(N(mean, L L^T) || N(0, I)); no per-dimension terms (coordinates are correlated).

            KL = 1/2 [ tr(L L^T) + mean^T mean - Z - log det(L L^T) ]
               = 1/2 [ ||L||_F^2 + ||mean||^2 - Z - sum_j logvar_j ]

        `distributions.kl_mvn_tril_standard_normal`: `kl_mvn_tril` with N1 = N(0, I), whose
        L1 = I needs no triangular solve (Rasmussen & Williams 2006, "Gaussian Processes for
        Machine Learning", Appendix A.5).

        Returns:
          (kl_b [B] in nats, None).
        """
        kl_b = distributions.kl_mvn_tril_standard_normal(enc.mean, self.scale_tril(enc))
        return kl_b, None


# ---------------------------------------------------------------------------------------------
# Inverse autoregressive flow.


def _input_degrees(latent_dim: int, reverse: bool) -> np.ndarray:
    """MADE degrees 1..Z of the inputs in this step's order: the j-th coordinate in that order
    has degree j + 1 (Germain et al. 2015, Sec. 4)."""
    degrees = np.arange(1, latent_dim + 1)
    return degrees[::-1].copy() if reverse else degrees


class _MaskedDense(nn.Module):
    """y = x @ (kernel * mask) + bias, [..., N] -> [..., features]; `mask` [N, features]."""

    features: int
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, mask: np.ndarray) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        return jnp.matmul(x, kernel * mask.astype(kernel.dtype)) + bias


class _MADE(nn.Module):
    """One IAF step's autoregressive network: (z [..., B, Z], h [B, E] | None) -> (m, s).

    Hidden unit k of every layer has degree k mod Z in 0..Z-1 and sees the units of the layer
    below of degree <= its own (inputs have degrees 1..Z); outputs of degree d see hidden units
    of degree < d (Germain et al. 2015, Sec. 4), so (m, s)_j depends on z only through the
    coordinates of lower degree. Degree-0 units see only the context h, which enters the first
    hidden layer unmasked (Kingma et al. 2016, Algorithm 1). Both outputs' kernels start at 1/10
    of LeCun's standard deviation and s's bias at `forget_bias`, so sigma = sigmoid(s) starts
    near sigmoid(forget_bias) for every input.
    """

    hidden: tuple[int, ...]
    reverse: bool
    forget_bias: float

    @nn.compact
    def __call__(
        self, z: jax.Array, context: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        latent_dim = z.shape[-1]
        in_degrees = _input_degrees(latent_dim, self.reverse)
        degrees, h = in_degrees, z
        for layer, width in enumerate(self.hidden):
            hidden_degrees = np.arange(width) % latent_dim
            mask = hidden_degrees[None, :] >= degrees[:, None]
            h = _MaskedDense(width, name=f"hidden_{layer}")(h, mask)
            if layer == 0 and context is not None:
                h = h + nn.Dense(width, use_bias=False, name="context")(context)
            h = jax.nn.elu(h)
            degrees = hidden_degrees
        out_mask = in_degrees[None, :] > degrees[:, None]
        small_init = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")
        shift = _MaskedDense(latent_dim, kernel_init=small_init, name="shift")(h, out_mask)
        gate = _MaskedDense(
            latent_dim,
            kernel_init=small_init,
            bias_init=nn.initializers.constant(self.forget_bias),
            name="gate",
        )(h, out_mask)
        return shift, gate


@dataclasses.dataclass(frozen=True)
class IAF(Posterior):
    """Inverse autoregressive flow on a diagonal Gaussian (Kingma et al. 2016, Algorithm 1).

        z0 = mean + exp(logvar / 2) * eps,
        [m_t, s_t] = MADE_t(z_{t-1}, h),   sigma_t = sigmoid(s_t),   t = 1..T,
        z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t,
        log q(z_T|x) = -1/2 sum_j [ log(2 pi) + logvar_j + eps_j^2 ] - sum_t sum_j log sigma_t,j

    (Eqs. 13-15: the numerically stable, gated update). Step t's MADE is autoregressive in the
    natural order for even t and in the reversed order for odd t (the paper's "reverse the
    ordering of the variables after each step", done by reversing the mask degrees instead
    of the vector, so z_T stays in the coordinates of z0 and the flow is the identity when
    every sigma = 1). Each step's Jacobian dz_t/dz_{t-1} is triangular with diagonal sigma_t,
    hence the log-determinant sum_j log sigma_t,j. The context h = `Encoded.extra` [B, E].

    Attributes:
      num_steps: T >= 1 (paper: 2 on MNIST).
      hidden: MADE hidden layer widths; None = two layers of width max(2 Z, E), enough for every
        degree 0..Z-1 to have at least two units per layer.
      context_dim: E, width of the context h; None = 2 Z; 0 = no context (extra is None).
      forget_bias: initial bias of s, so sigma starts near sigmoid(2) = 0.88 and each step
        starts close to the identity (the paper initialises s "close to +1 or +2").

    Params: {"step_0": MADE params, ..., "step_{T-1}": ...}.
    """

    name: ClassVar[str] = "iaf"

    num_steps: int = 2
    hidden: tuple[int, ...] | None = None
    context_dim: int | None = None
    forget_bias: float = 2.0

    def __post_init__(self):
        if self.hidden is not None:
            object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
            if not self.hidden or min(self.hidden) < 1:
                raise ValueError(f"IAF needs >= 1 hidden layer of width >= 1; got {self.hidden}.")
        if self.num_steps < 1:
            raise ValueError(f"IAF needs num_steps >= 1; got {self.num_steps}.")
        if self.context_dim is not None and self.context_dim < 0:
            raise ValueError(f"IAF context_dim must be >= 0 or None; got {self.context_dim}.")

    def extra_dim(self, latent_dim: int) -> int:
        """E = `context_dim` (default 2 Z)."""
        return 2 * latent_dim if self.context_dim is None else self.context_dim

    def _made(self, latent_dim: int, step: int) -> _MADE:
        hidden = self.hidden or (max(2 * latent_dim, self.extra_dim(latent_dim)),) * 2
        return _MADE(hidden=hidden, reverse=step % 2 == 1, forget_bias=self.forget_bias)

    def init(self, key: jax.Array, latent_dim: int) -> Params:
        """MADE parameters of every step: {"step_t": pytree}, t = 0..T-1."""
        extra_dim = self.extra_dim(latent_dim)
        z_1z = jnp.zeros((1, latent_dim))
        context = jnp.zeros((1, extra_dim)) if extra_dim else None
        step_keys = jax.random.split(key, self.num_steps)
        return {
            f"step_{t}": self._made(latent_dim, t).init(step_keys[t], z_1z, context)["params"]
            for t in range(self.num_steps)
        }

    def step(
        self, params: Params, step: int, z: jax.Array, context: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """Flow step t = `step` (0-based): z [..., B, Z] -> (z_t, log sigma_t), each [..., B, Z].

            z_t = sigma_t * z + (1 - sigma_t) * m_t,   sigma_t = sigmoid(s_t),

        with 1 - sigma_t computed as sigmoid(-s_t) and log sigma_t as log_sigmoid(s_t), which
        keep their relative precision when sigma_t is close to 1.
        """
        made = self._made(z.shape[-1], step)
        shift, gate = made.apply({"params": params[f"step_{step}"]}, z, context)
        z_next = jax.nn.sigmoid(gate) * z + jax.nn.sigmoid(-gate) * shift
        return z_next, jax.nn.log_sigmoid(gate)

    def flow(
        self, params: Params, enc: Encoded, z0: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """All T steps from z0 [..., B, Z]: (z_T [..., B, Z], sum_t sum_j log sigma_t,j [..., B]).

        The second output is log|det dz_T/dz0|.
        """
        _check_encoded(enc, self.extra_dim(enc.mean.shape[-1]))
        context = enc.extra if self.extra_dim(enc.mean.shape[-1]) else None
        z, log_det = z0, jnp.zeros(z0.shape[:-1], z0.dtype)
        for t in range(self.num_steps):
            z, log_sigma = self.step(params, t, z, context)
            log_det = log_det + jnp.sum(log_sigma, axis=-1)
        return z, log_det

    def sample(
        self, params: Params, enc: Encoded, eps_kbz: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """See `Posterior.sample`: z_T [K, B, Z] and log q(z_T|x) [K, B] (formula in the class)."""
        z0_kbz = self.base_sample(enc, eps_kbz)
        z_kbz, log_det_kb = self.flow(params, enc, z0_kbz)
        log_base_kb = _standard_normal_log_density(eps_kbz) - 0.5 * jnp.sum(enc.logvar, axis=-1)
        return z_kbz, log_base_kb - log_det_kb

    def point(self, params: Params, enc: Encoded) -> jax.Array:
        """The flow applied to eps = 0, i.e. to z0 = mean: [B, Z].

        Not E[z|x] (the flow is nonlinear) but the image of the base distribution's mode; a
        deterministic code per example, as the Gaussians' mean is.
        """
        return self.flow(params, enc, enc.mean)[0]


POSTERIORS: dict[str, type[Posterior]] = {
    cls.name: cls for cls in (Diagonal, FullCovariance, IAF)
}


def make_posterior(name: str, **kwargs: Any) -> Posterior:
    """The posterior registered as `name`, built with `kwargs` (e.g. `iaf`: num_steps=2).

    Raises:
      ValueError: `name` is not in POSTERIORS; the message lists the valid names.
    """
    if name not in POSTERIORS:
        raise ValueError(f"Unknown posterior {name!r}; valid names: {', '.join(POSTERIORS)}.")
    return POSTERIORS[name](**kwargs)
