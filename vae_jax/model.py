"""One VAE composed of named parts: networks, likelihood, prior, posterior family, L layers.

The model of L stochastic layers of the Burda et al. (2015) type (L = 1 is the plain VAE):

    p(x, z_1..z_L)  = p(x | z_1) [prod_{l<L} p(z_l | z_{l+1})] p(z_L)
    q(z_1..z_L | x) = q(z_1 | x) prod_{l>1} q(z_l | z_{l-1})

with p(z_L) a registered prior (`vae_jax.priors`: N(0, I), a learned mixture, a VampPrior),
Gaussian conditionals p(z_l | z_{l+1}) from networks, every q from the same registered
posterior family (`vae_jax.posteriors`: diagonal, full covariance, IAF), and p(x | z_1) a
registered likelihood (`vae_jax.likelihoods`). `VAE.log_weights` computes, for K samples of
every example,

    log w = log p(x | z_1) + log p(z_1..z_L) - log q(z_1..z_L | x)     each term [K, B]

and everything else is a reduction of it: the ELBO E_q[log w] (with a closed-form KL where the
posterior and the prior have one), the IWAE bound logsumexp_k log w - log K, and the
importance-sampled log-likelihood (`log_likelihood_estimate`, chunked over K with memory flat
in K). No other code computes an importance weight.

Noise (one scheme for every model): with key_b = fold_in(key, example_id_b) (the example's
position in the global batch) and key_bj = fold_in(key_b, j) for sample index j =
first_sample + k, layer l draws eps = normal(fold_in(key_bj, l), (Z_l,)). A sample thus
depends only on (example id, j, layer): not on the device layout, and the draws of K samples
are the first K of those of any larger K, so K can be split into chunks.

The VampPrior paper's hierarchy (Tomczak & Welling 2018, section 3.3; `hierarchy="vampprior"`)
infers top-down and decodes from every layer:

    p(x, z_1..z_L)  = p(x | z_1, ..., z_L) [prod_{l<L} p(z_l | z_{l+1})] p(z_L)
    q(z_1..z_L | x) = q(z_L | x) prod_{l<L} q(z_l | x, z_{l+1})

Its `encoder` is the network of q(z_L | x), so a VampPrior on z_L is the mixture of q(z_L | u_k)
at the pseudo-inputs; `upper_encoders[l]` is that of q(z_l | x, z_{l+1}) (a
`models.ConditionalEncoder`), `upper_priors[l]` that of p(z_l | z_{l+1}) as above, and the
decoder reads the concatenation [z_1, ..., z_L] (a `models.SkipDecoder`). The same noise
scheme, log-weights and reductions serve both.

Parameters: {"encoder", "decoder"} (the networks of q(z_1 | x) and p(x | z_1)), plus
"upper_encoders" / "upper_priors" (lists, for L > 1), "posterior" (a list, one entry per layer,
when the family has parameters) and "prior" (when the prior has parameters).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from vae_jax import distributions, fastpath
from vae_jax.likelihoods import Likelihood
from vae_jax.posteriors import Encoded

Params = Any


HIERARCHIES = ("burda", "vampprior")


class LogWeights(NamedTuple):
    """The three terms of the log importance weights, each [K, B] in nats."""

    log_px_z: jax.Array
    log_pz: jax.Array
    log_qz: jax.Array

    @property
    def log_w(self) -> jax.Array:
        """log p(x | z) + log p(z) - log q(z | x), [K, B]."""
        return self.log_px_z + self.log_pz - self.log_qz


class Draw(NamedTuple):
    """What one pass of `VAE.log_weights` computed: the weights and, for the objectives and
    diagnostics, the parameters of q(z_1 | x) [B], those of every upper layer's
    q(z_l | z_{l-1}) [K * B], and the samples of every layer [K, B, Z_l]."""

    weights: LogWeights
    encoded: Encoded
    z: tuple
    upper_encoded: tuple = ()


def _as_encoded(out) -> Encoded:
    return Encoded(*out) if len(out) == 3 else Encoded(out[0], out[1], None)


@dataclasses.dataclass(frozen=True)
class VAE:
    """The composed model (static: bind it with `functools.partial` before `jax.jit`).

    Attributes:
      encoder: x [B, H, W, C] -> (mean, logvar[, extra]) of q(z_1 | x) (`models` encoders
        with `extra_dim = posterior.extra_dim(Z_1)`).
      decoder: z_1 [N, Z_1] -> the likelihood's parameters [N, H, W, C * P].
      likelihood: p(x | z_1).
      prior: p(z_L) (`priors.make_prior`).
      posterior: the family of every q (`posteriors.make_posterior`).
      latent_dims: (Z_1, ..., Z_L).
      upper_encoders: L - 1 networks z_l [N, Z_l] -> (mean, logvar[, extra]) of q(z_{l+1} | z_l).
      upper_priors: L - 1 networks z_{l+1} [N, Z_{l+1}] -> (mean, logvar) of p(z_l | z_{l+1}).
    """

    encoder: Any
    decoder: Any
    likelihood: Likelihood
    prior: Any
    posterior: Any
    latent_dims: tuple[int, ...]
    upper_encoders: tuple = ()
    upper_priors: tuple = ()
    hierarchy: str = "burda"

    def __post_init__(self):
        object.__setattr__(self, "latent_dims", tuple(int(z) for z in self.latent_dims))
        n = len(self.latent_dims) - 1
        if n < 0 or len(self.upper_encoders) != n or len(self.upper_priors) != n:
            raise ValueError(
                f"{len(self.latent_dims)} latent layers need {n} upper encoders and {n} upper "
                f"priors; got {len(self.upper_encoders)} and {len(self.upper_priors)}")
        if self.hierarchy not in HIERARCHIES:
            raise ValueError(f"unknown hierarchy {self.hierarchy!r}; valid: {list(HIERARCHIES)}")

    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def top_down(self) -> bool:
        """Whether inference runs top-down (`hierarchy="vampprior"`): `encode` then gives
        q(z_L | x) and the decoder reads every layer."""
        return self.hierarchy == "vampprior"

    @property
    def encoded_layer(self) -> int:
        """The layer whose q(z | x) `encode` returns (0 for z_1, L - 1 for z_L)."""
        return self.num_layers - 1 if self.top_down else 0

    @property
    def decoder_input_dim(self) -> int:
        """Units of the decoder's input: Z_1, or Z_1 + ... + Z_L for the top-down hierarchy."""
        return sum(self.latent_dims) if self.top_down else self.latent_dims[0]

    @property
    def convolutional(self) -> bool:
        """Whether the encoder or the decoder has convolutions (they change the compiler
        options of the model's programs, `parallel.compiler_options`)."""
        from vae_jax import models

        return (isinstance(self.encoder, models.ConvEncoder)
                or isinstance(self.decoder, models.ConvDecoder)
                or (isinstance(self.decoder, models.SkipDecoder) and bool(self.decoder.features)))

    # ------------------------------------------------------------------ parameters

    def init(self, key, image_shape) -> Params:
        """Initial parameters of every part (see the module docstring for the layout)."""
        keys = iter(jax.random.split(key, 3 + 3 * self.num_layers))
        x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
        params = {"encoder": self.encoder.init(next(keys), x),
                  "decoder": self.decoder.init(next(keys),
                                               jnp.zeros((1, self.decoder_input_dim)))}
        if self.num_layers > 1:
            dims = self.latent_dims
            params["upper_encoders"] = [
                m.init(next(keys), x, jnp.zeros((1, dims[i + 1]))) if self.top_down
                else m.init(next(keys), jnp.zeros((1, dims[i])))
                for i, m in enumerate(self.upper_encoders)]
            params["upper_priors"] = [
                m.init(next(keys), jnp.zeros((1, dims[i + 1])))
                for i, m in enumerate(self.upper_priors)]
        posterior = [self.posterior.init(next(keys), z) for z in self.latent_dims]
        if any(jax.tree.leaves(p) for p in posterior):
            params["posterior"] = posterior
        prior = self.prior.init(next(keys), self.latent_dims[-1], tuple(image_shape))
        if jax.tree.leaves(prior):
            params["prior"] = prior
        return params

    def _posterior_params(self, params, layer: int):
        return params["posterior"][layer] if "posterior" in params else {}

    def _prior_params(self, params):
        return params.get("prior", {})

    # ------------------------------------------------------------------ the networks

    def encode(self, params, x) -> Encoded:
        """The parameters of q(z_1 | x) [B] (of q(z_L | x) for the top-down hierarchy)."""
        return _as_encoded(self.encoder.apply(params["encoder"], x))

    def decode(self, params, z_nz):
        """The likelihood's parameters for the decoder's input z [N, `decoder_input_dim`]
        (z_1, or [z_1, ..., z_L] for the top-down hierarchy): [N, H, W, C * P]."""
        return self.decoder.apply(params["decoder"], z_nz)

    def _encode_fn(self, params) -> Callable:
        return lambda x: self.encode(params, x)

    def _encode_given_above(self, params, layer: int, x, z_above) -> Encoded:
        """q(z_layer | x, z_{layer+1}) of the top-down hierarchy, [...] like z_above."""
        return _as_encoded(self.upper_encoders[layer].apply(
            params["upper_encoders"][layer], x, z_above))

    def point(self, params, x):
        """A point summary of the decoder's input [B, `decoder_input_dim`]
        (`Posterior.point`: the mean of a Gaussian): q(z_1 | x)'s; for the top-down hierarchy
        that of q(z_L | x), then of each q(z_l | x, z_{l+1}) at the point above, concatenated
        [z_1, ..., z_L]. What reconstructions, traversals and disentanglement metrics read."""
        point = self.posterior.point(self._posterior_params(params, self.encoded_layer),
                                     self.encode(params, x))
        if not self.top_down:
            return point
        points = [point]
        for layer in reversed(range(self.num_layers - 1)):
            enc = self._encode_given_above(params, layer, x, points[0])
            points.insert(0, self.posterior.point(self._posterior_params(params, layer), enc))
        return jnp.concatenate(points, axis=-1)

    # ------------------------------------------------------------------ the weights

    def log_weights(self, params, x, key, *, num_samples: int, example_ids=None,
                    first_sample=0) -> Draw:
        """The log importance weights of K = `num_samples` draws z ~ q(z | x) per example.

        Args:
          params: the model's parameters.
          x: [B, H, W, C] data in the likelihood's support.
          key: the noise key (see the module docstring for the scheme).
          num_samples: K (static).
          example_ids: [B] global positions of the examples; default arange(B).
          first_sample: index j of the first sample (int or traced scalar), for chunks.

        Returns:
          a `Draw`: `weights` (log p(x|z_1), log p(z), log q(z|x), each [K, B]), `encoded`
          (q(z_1 | x) [B]) and `z` (the samples of every layer, [K, B, Z_l] each).
        """
        k, b = num_samples, x.shape[0]
        if example_ids is None:
            example_ids = jnp.arange(b)
        keys_b = jax.vmap(fastpath.fold_in, in_axes=(None, 0))(key, example_ids)
        sample_ids = first_sample + jnp.arange(k)
        keys_kb = jax.vmap(jax.vmap(fastpath.fold_in, in_axes=(0, None)),
                           in_axes=(None, 0))(keys_b, sample_ids)

        def noise(layer: int, dim: int):
            def draw(key_):
                return fastpath.normal(fastpath.fold_in(key_, layer), (dim,))
            return jax.vmap(jax.vmap(draw))(keys_kb)  # [K, B, dim]

        encoded = self.encode(params, x)
        first = self.encoded_layer
        z, log_qz = self.posterior.sample(self._posterior_params(params, first), encoded,
                                          noise(first, self.latent_dims[first]))
        zs, upper = {first: z}, []
        # The other layers in the order they are inferred: up from z_1, or down from z_L.
        for layer in (reversed(range(first)) if self.top_down else range(1, self.num_layers)):
            if self.top_down:
                enc = self._encode_given_above(params, layer, x, zs[layer + 1])  # [K, B]
                enc = jax.tree.map(lambda a: a.reshape((k * b,) + a.shape[2:]), enc)
            else:
                enc = _as_encoded(self.upper_encoders[layer - 1].apply(
                    params["upper_encoders"][layer - 1], zs[layer - 1].reshape((k * b, -1))))
            upper.append(enc)
            eps = noise(layer, self.latent_dims[layer]).reshape((1, k * b, -1))
            z, log_q = self.posterior.sample(self._posterior_params(params, layer), enc, eps)
            zs[layer] = z.reshape((k, b, -1))
            log_qz = log_qz + log_q.reshape(k, b)
        zs = [zs[layer] for layer in range(self.num_layers)]

        log_pz = self.prior.log_prob(self._prior_params(params), zs[-1],
                                     encode=self._encode_fn(params))
        for layer in range(self.num_layers - 1):
            mean, logvar = self.upper_priors[layer].apply(
                params["upper_priors"][layer], zs[layer + 1].reshape((k * b, -1)))[:2]
            log_pz = log_pz + distributions.gaussian_log_density(
                zs[layer], mean.reshape(zs[layer].shape), logvar.reshape(zs[layer].shape))

        z_in = jnp.concatenate(zs, axis=-1) if self.top_down else zs[0]
        out = self.decode(params, z_in.reshape((k * b, -1)))
        x_n = jnp.broadcast_to(x[None], (k,) + x.shape).reshape((k * b,) + x.shape[1:])
        log_px_z = self.likelihood.log_prob(out, x_n).reshape(k, b)
        return Draw(LogWeights(log_px_z, log_pz, log_qz), encoded, tuple(zs), tuple(upper))

    def points(self, params, draw: Draw):
        """Point summaries of every layer [B, Z_1 + ... + Z_L]: `Posterior.point` of the
        layer `encode` gives (q(z_1 | x), or q(z_L | x) top-down), and for each other layer the
        mean over the draw's K samples of the point of its q (given the layer below, or x and
        the layer above), a Monte Carlo estimate of E_q[z_l | x] (the statistic of Burda et
        al.'s active-unit count, section 5.2). Layers in order z_1, ..., z_L."""
        k, b = draw.z[0].shape[:2]
        first = self.encoded_layer
        out = {first: self.posterior.point(self._posterior_params(params, first), draw.encoded)}
        others = reversed(range(first)) if self.top_down else range(1, self.num_layers)
        for layer, enc in zip(others, draw.upper_encoded):
            point = self.posterior.point(self._posterior_params(params, layer), enc)
            out[layer] = jnp.mean(point.reshape((k, b, -1)), axis=0)
        return jnp.concatenate([out[layer] for layer in range(self.num_layers)], axis=-1)

    def analytic_kl(self, params, encoded: Encoded):
        """The closed-form KL(q(z | x) || p(z)) as (kl_b [B], kl_per_dim_bz [B, Z] or None),
        or None when the model has none (more than one layer, or a (posterior, prior) pair
        without a registered closed form: then the ELBO estimates the KL by sampling)."""
        if self.num_layers != 1 or self.prior.name != "standard_normal":
            return None
        return self.posterior.kl_standard_normal(encoded)

    # ------------------------------------------------------------------ sampling

    def sample_prior(self, params, key, num: int):
        """The decoder's input [num, `decoder_input_dim`] drawn from the generative model: z_L
        from the prior, then each z_l ~ p(z_l | z_{l+1}) (ancestral sampling); z_1, or
        [z_1, ..., z_L] for the top-down hierarchy."""
        keys = jax.random.split(key, self.num_layers)
        z = self.prior.sample(self._prior_params(params), keys[-1], num,
                              encode=self._encode_fn(params), latent_dim=self.latent_dims[-1])
        zs = [z]
        for layer in reversed(range(self.num_layers - 1)):
            mean, logvar = self.upper_priors[layer].apply(params["upper_priors"][layer], z)[:2]
            z = distributions.reparameterize(keys[layer], mean, logvar)
            zs.insert(0, z)
        return jnp.concatenate(zs, axis=-1) if self.top_down else z


# ---------------------------------------------------------------------- reductions


def iwae_bound(log_w_kb):
    """L_K = logsumexp_k log w - log K per example [B] (Burda et al. 2015, eq. 8)."""
    return jax.nn.logsumexp(log_w_kb, axis=0) - jnp.log(log_w_kb.shape[0])


def log_likelihood_estimate(model: VAE, params, x, key, *, num_samples: int,
                            chunk_size: int = 100, example_ids=None):
    """The importance-sampled log p(x) [B] with K = `num_samples` draws from q (Burda et al.
    2015, eq. 8 with large K), in chunks of at most `chunk_size` samples:

        log p(x) ~= logsumexp_{j < K} log w_j - log K

    A `lax.scan` keeps a running logsumexp over the full chunks (memory flat in K); a shorter
    last chunk takes the remainder, so any K works. The samples are those of
    `model.log_weights` with first_sample = 0 .. K - 1: identical to one pass of K samples.
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"num_samples={num_samples} and chunk_size={chunk_size} must be >= 1")
    chunk = min(chunk_size, num_samples)
    num_full, rest = divmod(num_samples, chunk)

    def chunk_lse(first, size):
        draw = model.log_weights(params, x, key, num_samples=size, example_ids=example_ids,
                                 first_sample=first)
        return jax.nn.logsumexp(draw.weights.log_w, axis=0)

    def body(total_b, index):
        return jnp.logaddexp(total_b, chunk_lse(index * chunk, chunk)), None

    total_b = jnp.full((x.shape[0],), -jnp.inf)
    total_b, _ = jax.lax.scan(body, total_b, jnp.arange(num_full))
    if rest:
        total_b = jnp.logaddexp(total_b, chunk_lse(num_full * chunk, rest))
    return total_b - jnp.log(float(num_samples))


# ---------------------------------------------------------------------- construction


def layer_sizes(model_config) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(latent_dims, upper_hidden) of the config's L layers, filling in the stated rules:
    Z_l = max(1, Z_{l-1} // 2) unless `upper_latent_dims` gives them, and the MLPs between
    layers l - 1 and l have two hidden layers of 2 Z_l units unless `upper_hidden` gives them
    (Burda et al. 2015: Z = (100, 50), hidden 100-100)."""
    num_upper = int(model_config.num_layers) - 1
    dims = [int(model_config.latent_dim)]
    given = tuple(model_config.upper_latent_dims)
    if given and len(given) != num_upper:
        raise ValueError(f"model.upper_latent_dims={given} gives {len(given)} sizes for the "
                         f"{num_upper} layers above the first (model.num_layers="
                         f"{model_config.num_layers})")
    for i in range(num_upper):
        dims.append(int(given[i]) if given else max(1, dims[-1] // 2))
    hidden = tuple(tuple(h) for h in model_config.upper_hidden)
    if hidden and len(hidden) != num_upper:
        raise ValueError(f"model.upper_hidden gives {len(hidden)} width lists for the "
                         f"{num_upper} layers above the first")
    hidden = hidden or tuple((2 * z, 2 * z) for z in dims[1:])
    return tuple(dims), hidden


def build_model(model_config, image_shape, *, num_levels: int = 256) -> VAE:
    """The `VAE` that `config.model` names, for images of `image_shape` (H, W, C) with
    `num_levels` intensity levels (the discretised logistic's bins).

    Likelihood, prior and posterior come from their registries by name
    (`likelihoods.make_likelihood`, `priors.make_prior`, `posteriors.make_posterior`); the
    networks from `models.make_encoder` / `make_decoder` (the encoder gets the posterior's
    extra head). Combinations that cannot work are refused here, before anything is written.
    """
    from vae_jax import likelihoods, models, posteriors, priors

    mc = model_config
    h, w, c = image_shape
    likelihood = likelihoods.make_likelihood(mc.likelihood, gaussian_logvar=mc.gaussian_logvar,
                                             num_bins=num_levels)
    posterior_kwargs = {}
    if mc.posterior == "iaf":
        posterior_kwargs = dict(num_steps=int(mc.iaf_steps))
        if mc.iaf_hidden:
            posterior_kwargs["hidden"] = tuple(mc.iaf_hidden)
        if mc.iaf_context_dim:
            posterior_kwargs["context_dim"] = int(mc.iaf_context_dim)
    posterior = posteriors.make_posterior(mc.posterior, **posterior_kwargs)
    prior_kwargs = {}
    if mc.prior_components:
        if mc.prior not in ("mixture", "vamp"):
            raise ValueError(
                f"model.prior_components={mc.prior_components} sizes a 'mixture' or 'vamp' "
                f"prior; model.prior={mc.prior!r} has no components (set it to 0)")
        prior_kwargs["num_components"] = int(mc.prior_components)
    if mc.hierarchy not in HIERARCHIES:
        raise ValueError(f"unknown model.hierarchy {mc.hierarchy!r}; valid: {list(HIERARCHIES)}")
    top_down = mc.hierarchy == "vampprior"
    if mc.prior == "vamp":
        if mc.num_layers != 1 and not top_down:
            raise ValueError(
                f"model.prior='vamp' with model.num_layers={mc.num_layers}: the VampPrior is a "
                "mixture of q(z | u) at pseudo-inputs u, a closed-form density only for a "
                "layer whose posterior reads x alone; use num_layers=1, or "
                "model.hierarchy='vampprior' (q(z_L | x) at the top)")
        prior_kwargs["posterior"] = posterior
    prior = priors.make_prior(mc.prior, **prior_kwargs)
    dims, upper_hidden = layer_sizes(mc)
    if top_down and not mc.upper_hidden:
        upper_hidden = (tuple(mc.hidden),) * (len(dims) - 1)
    common = dict(activation=mc.activation, kernel_init=mc.kernel_init)
    logvar_range = tuple(float(v) for v in mc.logvar_range)
    if logvar_range and not (len(logvar_range) == 2 and logvar_range[0] < logvar_range[1]):
        raise ValueError(f"model.logvar_range={tuple(mc.logvar_range)} must be (lo, hi) with "
                         "lo < hi, or () for linear log-variance heads")
    heads = dict(logvar_range=logvar_range, **common)  # the Gaussian networks'
    encoded_dim = dims[-1] if top_down else dims[0]
    enc_kwargs = dict(latent_dim=encoded_dim, hidden=tuple(mc.hidden),
                      extra_dim=posterior.extra_dim(encoded_dim),
                      extra_zero_init=posterior.extra_zero_init, **heads)
    conv_kwargs = dict(features=tuple(mc.features),
                       strides=tuple(mc.conv_strides) or mc.strides, hidden=tuple(mc.conv_hidden))
    if mc.encoder in ("conv", "gated_conv"):
        enc_kwargs.update(conv_kwargs,
                          kernel_size=tuple(mc.conv_kernel_sizes) or mc.kernel_size)
    encoder = models.make_encoder(mc.encoder, **enc_kwargs)
    output_shape = (h, w, c * likelihood.num_params)
    if top_down or mc.decoder == "gated_conv":
        decoder = _skip_decoder(mc, output_shape, dims if top_down else dims[:1], c, common)
    else:
        dec_kwargs = dict(output_shape=output_shape, hidden=tuple(mc.hidden), **common)
        if mc.decoder == "conv":
            dec_kwargs.update(conv_kwargs, kernel_size=mc.kernel_size)
        decoder = models.make_decoder(mc.decoder, **dec_kwargs)
    gated = mc.encoder.startswith("gated")
    if top_down:
        upper_encoders = tuple(
            models.ConditionalEncoder(
                dims[i], hidden=tuple(mc.hidden[-1:]), x_hidden=tuple(mc.hidden[:1]),
                features=tuple(mc.features) if "conv" in mc.encoder else (),
                kernel_size=mc.kernel_size, strides=conv_kwargs["strides"], gated=gated,
                extra_dim=posterior.extra_dim(dims[i]),
                extra_zero_init=posterior.extra_zero_init, **heads)
            for i in range(len(dims) - 1))
        upper_priors = tuple(models.MLPEncoder(dims[i], hidden=upper_hidden[i], gated=gated,
                                               **heads)
                             for i in range(len(dims) - 1))
    else:
        upper_encoders = tuple(
            models.MLPEncoder(dims[i + 1], hidden=upper_hidden[i],
                              extra_dim=posterior.extra_dim(dims[i + 1]),
                              extra_zero_init=posterior.extra_zero_init, **heads)
            for i in range(len(dims) - 1))
        upper_priors = tuple(
            models.MLPEncoder(dims[i], hidden=tuple(reversed(upper_hidden[i])), **heads)
            for i in range(len(dims) - 1))
    return VAE(encoder=encoder, decoder=decoder, likelihood=likelihood, prior=prior,
               posterior=posterior, latent_dims=dims, upper_encoders=upper_encoders,
               upper_priors=upper_priors, hierarchy=mc.hierarchy)


def _skip_decoder(mc, output_shape, latent_splits, image_channels, common):
    """The `models.SkipDecoder` of the VampPrior code: each latent group through one layer of
    hidden[-1] units and one joint layer of as many, then a dense output ('mlp',
    'gated_mlp'); or, for 'gated_conv', groups and joint layer of H * W * C units reshaped to
    the image, then the full-resolution convolutions `decoder_features`."""
    from vae_jax import models

    if mc.decoder not in ("mlp", "gated_mlp", "gated_conv"):
        raise ValueError(
            f"model.decoder={mc.decoder!r} with model.hierarchy={mc.hierarchy!r}: the decoder "
            "of p(x | z_1, ..., z_L) is 'mlp', 'gated_mlp' or 'gated_conv'")
    if mc.decoder == "gated_conv":
        width, features = math.prod(output_shape[:2]) * image_channels, mc.decoder_features
        if not features:
            raise ValueError("model.decoder='gated_conv' needs model.decoder_features")
    else:
        width, features = int(mc.hidden[-1]), ()
    return models.SkipDecoder(output_shape, latent_splits=latent_splits, branch_width=width,
                              hidden=(width,), features=tuple(features),
                              image_channels=image_channels, gated=mc.decoder != "mlp",
                              **common)
