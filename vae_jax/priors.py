"""Priors p(z) over the latent code: the standard normal, a learned Gaussian mixture, the VampPrior.

A prior is a small frozen object with pure methods, selected by name (`PRIORS`, `make_prior`):

    init(key, latent_dim, image_shape) -> params          # a pytree; {} when there are none
    log_prob(params, z, *, encode=None) -> [...]          # z [..., Z], summed over Z, nats
    sample(params, key, num, *, encode=None, latent_dim=None) -> [num, Z]

`encode(x_nhwc) -> Encoded` is the encoder with its current parameters bound (only the
VampPrior uses it; the others ignore it). Code written against `log_prob` (the importance
log-weights log p(x|z) + log p(z) - log q(z|x)) does not change with the prior; where no
closed-form KL exists the KL term is the Monte Carlo `distributions.kl_monte_carlo`.

The three priors, with N(z; m, diag v) the diagonal Gaussian of `distributions.
gaussian_log_density`:

* `standard_normal`: p(z) = N(z; 0, I) (Kingma & Welling 2014, "Auto-Encoding Variational
  Bayes", Sec. 3).
* `mixture`: a learned mixture of C diagonal Gaussians,

      log p(z) = logsumexp_c [ log pi_c + log N(z; mu_c, diag exp(logvar_c)) ],
      pi = softmax(logits),

  as the "mixture of Gaussians" prior compared in Tomczak & Welling 2018 (Sec. 3.1) and used by
  Dilokthanakul et al. 2016 ("Deep Unsupervised Clustering with Gaussian Mixture VAEs").
* `vamp`: the VampPrior (Tomczak & Welling 2018, AISTATS, "VAE with a VampPrior", eq. 9), the
  mixture of the variational posterior's Gaussians at C learned pseudo-inputs u_c,

      p(z) = 1/C sum_c q0(z | u_c),   log p(z) = logsumexp_c log q0(z | u_c) - log C,

  where q0 is the posterior's Gaussian part (`posterior.base_log_prob` / `base_sample`: the
  exact q for the Gaussian posteriors, the base Gaussian of a flow). Pseudo-inputs are kept in
  the data range [0, 1] by hardtanh(0, 1) = clip in the forward pass, as in the authors' code
  (github.com/jmtomczak/vae_vampprior, models/Model.py, `add_pseudoinputs`).

Every mixture is evaluated as one logsumexp over the component axis, so it stays finite when
all C component densities underflow (z far from every component, or C = 500 components each
carrying log(1/C)). The [N, C] component log densities are one table
(`fastpath.gaussian_log_density_table`: two matmuls on the CPU).
"""

import dataclasses
import math
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from vae_jax import distributions, fastpath

Params = Any  # a pytree of arrays
Encode = Callable[[jax.Array], Any]  # x [N, H, W, Ch] -> posteriors.Encoded with [N, Z] fields


class Prior:
    """Base class of the priors: the interface, and `kl_closed_form_with` defaulting to False."""

    name: ClassVar[str]

    def init(self, key: jax.Array, latent_dim: int, image_shape: tuple[int, ...]) -> Params:
        """The prior's learnable parameters; {} when it has none."""
        raise NotImplementedError

    def log_prob(self, params: Params, z: jax.Array, *, encode: Encode | None = None) -> jax.Array:
        """log p(z) in nats, summed over the last (latent) axis: [..., Z] -> [...]."""
        raise NotImplementedError

    def sample(
        self,
        params: Params,
        key: jax.Array,
        num: int,
        *,
        encode: Encode | None = None,
        latent_dim: int | None = None,
    ) -> jax.Array:
        """`num` independent draws z ~ p(z): [num, Z]."""
        raise NotImplementedError

    def kl_closed_form_with(self, posterior_name: str) -> bool:
        """Whether KL(q || p) has a closed form for the named posterior family."""
        del posterior_name
        return False


def _check_latent_dim(latent_dim: int | None, actual: int, name: str) -> None:
    if latent_dim is not None and latent_dim != actual:
        raise ValueError(
            f"{name} prior has latent_dim {actual}; sample got latent_dim={latent_dim}."
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class StandardNormal(Prior):
    """p(z) = N(z; 0, I): log p(z) = -1/2 sum_j (z_j^2 + log 2 pi). No parameters.

    `sample` needs `latent_dim` (the parameters are {}, so nothing else says Z). KL(q || p) is in
    closed form for the Gaussian posteriors (`kl_closed_form_with`).
    """

    name: ClassVar[str] = "standard_normal"

    def init(self, key: jax.Array, latent_dim: int, image_shape: tuple[int, ...]) -> Params:
        """{}: no parameters."""
        del key, latent_dim, image_shape
        return {}

    def log_prob(self, params: Params, z: jax.Array, *, encode: Encode | None = None) -> jax.Array:
        """log N(z; 0, I) summed over the last axis: z [..., Z] -> [...] nats."""
        del params, encode
        zero = jnp.zeros((), z.dtype)
        return distributions.gaussian_log_density(z, zero, zero)

    def sample(
        self,
        params: Params,
        key: jax.Array,
        num: int,
        *,
        encode: Encode | None = None,
        latent_dim: int | None = None,
    ) -> jax.Array:
        """[num, latent_dim] draws of N(0, I); `latent_dim` is required."""
        del params, encode
        if latent_dim is None:
            raise ValueError("standard_normal prior: sample needs latent_dim (it has no params).")
        return jax.random.normal(key, (num, latent_dim))

    def kl_closed_form_with(self, posterior_name: str) -> bool:
        """True for the Gaussian posteriors ("diagonal", "full_covariance")."""
        return posterior_name in ("diagonal", "full_covariance")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mixture(Prior):
    """A learned mixture of C diagonal Gaussians.

        p(z)     = sum_c pi_c N(z; mu_c, diag exp(logvar_c)),   pi = softmax(logits),
        log p(z) = logsumexp_c [ log_softmax(logits)_c + log N(z; mu_c, diag exp(logvar_c)) ].

    Params: {"logits": [C], "mean": [C, Z], "logvar": [C, Z]}. Initialised with logits 0 (equal
    weights), means drawn from N(0, I) so the components start apart, logvar 0 (unit
    variances). Sampling picks c ~ Categorical(pi), then z = mu_c + exp(logvar_c / 2) * eps:
    differentiable in mean and logvar (reparameterised), not in logits (a discrete choice).
    (Tomczak & Welling 2018, "VAE with a VampPrior", Sec. 3.1; Dilokthanakul et al. 2016.)

    Attributes:
      num_components: C.
    """

    name: ClassVar[str] = "mixture"
    num_components: int = 10

    def init(self, key: jax.Array, latent_dim: int, image_shape: tuple[int, ...]) -> Params:
        """{"logits": zeros [C], "mean": N(0, I) draws [C, Z], "logvar": zeros [C, Z]}."""
        del image_shape
        shape_cz = (self.num_components, latent_dim)
        return {
            "logits": jnp.zeros((self.num_components,)),
            "mean": jax.random.normal(key, shape_cz),
            "logvar": jnp.zeros(shape_cz),
        }

    def log_prob(self, params: Params, z: jax.Array, *, encode: Encode | None = None) -> jax.Array:
        """log p(z) = logsumexp_c [log pi_c + log N(z; mu_c, var_c)]: z [..., Z] -> [...] nats."""
        del encode
        z_nz = z.reshape(-1, z.shape[-1])
        log_weighted_nc = fastpath.gaussian_log_density_table(
            z_nz, params["mean"], params["logvar"],
            log_weights_c=jax.nn.log_softmax(params["logits"]))
        return jax.nn.logsumexp(log_weighted_nc, axis=-1).reshape(z.shape[:-1])

    def sample(
        self,
        params: Params,
        key: jax.Array,
        num: int,
        *,
        encode: Encode | None = None,
        latent_dim: int | None = None,
    ) -> jax.Array:
        """[num, Z]: c ~ Categorical(softmax(logits)), z = mu_c + exp(logvar_c / 2) * eps."""
        del encode
        mean_cz, logvar_cz = params["mean"], params["logvar"]
        _check_latent_dim(latent_dim, mean_cz.shape[-1], self.name)
        component_key, eps_key = jax.random.split(key)
        c_n = jax.random.categorical(component_key, params["logits"], shape=(num,))
        eps_nz = jax.random.normal(eps_key, (num, mean_cz.shape[-1]), mean_cz.dtype)
        return mean_cz[c_n] + jnp.exp(0.5 * logvar_cz[c_n]) * eps_nz


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vamp(Prior):
    """The VampPrior: the posterior's Gaussian part averaged over C learned pseudo-inputs.

        p(z)     = 1/C sum_c q0(z | u_c),   u_c = clip(pseudo_inputs_c, 0, 1),
        log p(z) = logsumexp_c log q0(z | u_c) - log C

    (Tomczak & Welling 2018, AISTATS, "VAE with a VampPrior", eq. 9). q0(z | u) is
    `posterior.base_log_prob(encode(u), z)`; the gradient of log p(z) reaches both the
    pseudo-inputs and the encoder's parameters (bound into `encode`).

    As in the authors' code (github.com/jmtomczak/vae_vampprior: models/Model.py
    `add_pseudoinputs`, utils/nn.py `normal_init`), the pseudo-inputs are free parameters
    initialised i.i.d. N(init_mean, init_std^2) and passed through hardtanh(0, 1), i.e. clipped
    to the data range [0, 1], in every forward pass; like hardtanh, the clip passes no gradient to
    an entry outside [0, 1]. The default init_mean is +0.05 (the contract; the authors' argparse
    default is -0.05, which with hardtanh(0, 1) starts every pseudo-input at the black image with
    zero gradient, so their pseudo-inputs could never move unless initialised from data).

    Sampling (Tomczak & Welling 2018, Sec. 3.2; the authors' `generate_x`): c ~ Uniform{1..C},
    then z = posterior.base_sample(encode(u_c), eps).

    Params: {"pseudo_inputs": [C, H, W, Ch]}.

    Attributes:
      posterior: the posterior object (`posteriors.make_posterior(name)`), which provides
        `base_log_prob(enc, z_kbz) -> [K, B]` and `base_sample(enc, eps_kbz) -> [K, B, Z]`.
      num_components: C, the number of pseudo-inputs (500 in the paper).
      init_mean, init_std: the normal initialisation of the pseudo-inputs.
    """

    name: ClassVar[str] = "vamp"
    posterior: Any
    num_components: int = 500
    init_mean: float = 0.05
    init_std: float = 0.01

    def init(self, key: jax.Array, latent_dim: int, image_shape: tuple[int, ...]) -> Params:
        """{"pseudo_inputs": N(init_mean, init_std^2) draws [C, H, W, Ch]}; Z is the encoder's."""
        del latent_dim
        shape = (self.num_components, *image_shape)
        return {"pseudo_inputs": self.init_mean + self.init_std * jax.random.normal(key, shape)}

    def _encode_pseudo_inputs(self, params: Params, encode: Encode | None) -> Any:
        """encode(clip(u, 0, 1)): the Encoded statistics of the C components, fields [C, ...]."""
        if encode is None:
            raise ValueError("vamp prior needs `encode` (the encoder with its parameters bound).")
        return encode(jnp.clip(params["pseudo_inputs"], 0.0, 1.0))

    def log_prob(self, params: Params, z: jax.Array, *, encode: Encode | None = None) -> jax.Array:
        """log p(z) = logsumexp_c log q0(z | u_c) - log C: z [..., Z] -> [...] nats.

        z is flattened to [N, Z]; `posterior.base_log_prob_table` gives the [N, C] table.
        """
        enc = self._encode_pseudo_inputs(params, encode)
        num_components, latent_dim = enc.mean.shape
        z_nz = z.reshape(-1, latent_dim)
        log_components_nc = self.posterior.base_log_prob_table(enc, z_nz)
        log_p_n = jax.nn.logsumexp(log_components_nc, axis=-1) - math.log(num_components)
        return log_p_n.reshape(z.shape[:-1])

    def sample(
        self,
        params: Params,
        key: jax.Array,
        num: int,
        *,
        encode: Encode | None = None,
        latent_dim: int | None = None,
    ) -> jax.Array:
        """[num, Z]: c ~ Uniform{1..C}, z = posterior.base_sample(encode(u_c), eps), eps ~ N(0, I).

        The C pseudo-inputs are encoded once and the statistics of the drawn components gathered.
        """
        enc = self._encode_pseudo_inputs(params, encode)
        num_components, z_dim = enc.mean.shape
        _check_latent_dim(latent_dim, z_dim, self.name)
        component_key, eps_key = jax.random.split(key)
        c_n = jax.random.randint(component_key, (num,), 0, num_components)
        enc_n = jax.tree.map(lambda stat_c: stat_c[c_n], enc)
        eps_1nz = jax.random.normal(eps_key, (1, num, z_dim), enc.mean.dtype)
        return self.posterior.base_sample(enc_n, eps_1nz)[0]


PRIORS: dict[str, type[Prior]] = {
    StandardNormal.name: StandardNormal,
    Mixture.name: Mixture,
    Vamp.name: Vamp,
}


def make_prior(name: str, **kwargs) -> Prior:
    """A prior by name (`PRIORS`), built with its keyword arguments.

    E.g. `make_prior("mixture", num_components=10)` or
    `make_prior("vamp", num_components=500, posterior=posteriors.make_posterior("diagonal"))`.
    """
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; valid names: {sorted(PRIORS)}")
    return PRIORS[name](**kwargs)
