"""Objectives by name (`OBJECTIVES`), and the math of the disentangling ones.

The named objectives ("elbo", "iwae", "capacity", "beta_tc", "dip_vae_i", "dip_vae_ii",
"info_vae_mmd", "factor_vae", at the end of this module) are reductions of
`model.VAE.log_weights` plus the regularisers below; `make_loss_fn` binds one to a model.
The regularisers are pure `jax.numpy` on encoder statistics and latent samples, like
`distributions`: no Flax, no randomness (FactorVAE's discriminator is a `models` network).
Units are nats; per-example terms are summed over the latent axis, batch values are means
over examples (the package convention).

Notation: a batch of B examples x_b with diagonal Gaussian posteriors
q(z|x_b) = N(mean_b, diag exp(logvar_b)), one sample z_b ~ q(z|x_b) each, Z latent dimensions,
N examples in the data set, p(z) = N(0, I).

* ELBO TC-decomposition (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs",
  eq. 2). With the aggregate posterior q(z) = 1/N sum_n q(z|x_n) and its marginals q(z_j):

      E[log q(z|x) - log p(z)] =  E[log q(z|x) - log q(z)]                 index-code MI
                                + E[log q(z) - log prod_j q(z_j)]          total correlation
                                + E[log prod_j q(z_j) - log p(z)]          dimension-wise KL

  q(z_b) and q(z_bj) are estimated from the batch (appendix C): a weighted sum over the batch
  of q(z_b|x_m), with the weights of minibatch weighted or minibatch stratified sampling.
  `tc_decomposition`.

* DIP-VAE (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts from
  Unlabeled Observations", Sec. 3): a covariance C of the codes is pushed to the identity,
      lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2,
  with C = Cov_p(x)[mean(x)] (DIP-VAE-I) or C = Cov_q(z)[z] = E_p(x)[diag exp(logvar(x))] +
  Cov_p(x)[mean(x)] (DIP-VAE-II). `dip_regulariser`.

* Maximum mean discrepancy between the codes and prior samples (Zhao et al. 2017, "InfoVAE",
  eq. 9; Gretton et al. 2012, "A Kernel Two-Sample Test", eq. 3), with an RBF or inverse
  multiquadric kernel (Tolstikhin et al. 2018, "Wasserstein Auto-Encoders", Sec. 4). `mmd`.

* The capacity schedule of Burgess et al. 2018, "Understanding disentangling in beta-VAE",
  Sec. 5: loss = recon + gamma * |KL - C(step)|. `capacity_target`.

* FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising", eq. 2-3): the total correlation
  KL(q(z) || prod_j q(z_j)) by the density-ratio trick, with a discriminator D told samples of
  q(z) from samples of prod_j q(z_j) (each dimension permuted independently over the batch):
      TC ~= E_q(z)[log D(z) / (1 - D(z))].
  `permute_dims`, `density_ratio_tc`, `discriminator_loss`. The discriminator is the
  objective's own network, trained by its own optimiser (`init_objective_params`,
  `objective_optimizer`).

Data parallelism: every function takes `axis_name`. Inside `jax.shard_map` over that axis, the
batch statistics (q(z) of the aggregate posterior, covariances, kernel sums) span the GLOBAL
batch, so the values equal the single-device values on the concatenated batch and do not depend
on the device count. Per-example outputs are the device's own rows. The collectives (all_gather,
psum, pmean) are differentiable; under `parallel.data_parallel` (check_vma=False) the mean over
devices of each device's gradient is the single-device gradient, as for the ELBO.
"""

import dataclasses
import math
import numbers
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from vae_jax import distributions, fastpath, models

_ESTIMATORS = ("mws", "mss")
_DIP_KINDS = ("i", "ii")
_KERNELS = ("rbf", "imq")


# ---------------------------------------------------------------------------------------------
# Helpers for the global batch.


def _gather_rows(x_b_etc: jax.Array, axis_name: str | None) -> jax.Array:
    """The global batch [B_global, ...] from each device's rows [B, ...], in device order."""
    if axis_name is None:
        return x_b_etc
    return jax.lax.all_gather(x_b_etc, axis_name, tiled=True)


def _global_row_offset(num_local: int, axis_name: str | None) -> jax.Array | int:
    """Index in the global batch of this device's first row."""
    if axis_name is None:
        return 0
    return jax.lax.axis_index(axis_name) * num_local


def _global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _global_mean_over_rows(x_b: jax.Array, axis_name: str | None) -> jax.Array:
    """Mean over the global batch; every device holds the same number of rows under shard_map."""
    mean = jnp.mean(x_b, axis=0)
    return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def _num_devices(axis_name: str | None) -> int:
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")


# ---------------------------------------------------------------------------------------------
# beta-TC: the ELBO TC-decomposition.


def _log_importance_weights(
    num_local: int,
    batch_size: int,
    dataset_size: int,
    estimator: str,
    row_offset,
) -> jax.Array:
    """log w_bm [num_local, batch_size]: the weights of q(z_b|x_m) in the estimate of q(z_b).

    Rows are this device's examples (global index row_offset + b), columns the global batch.
    """
    if estimator == "mws":
        return jnp.full((num_local, batch_size), -math.log(batch_size * dataset_size))
    m = batch_size - 1
    log_own = -math.log(dataset_size)
    log_stratum = math.log((dataset_size - m) / (dataset_size * m))
    log_other = -math.log(m)
    row_m = row_offset + jnp.arange(num_local)[:, None]
    col_m = jnp.arange(batch_size)[None, :]
    return jnp.where(
        col_m == row_m,
        log_own,
        jnp.where(col_m == (row_m + 1) % batch_size, log_stratum, log_other),
    )


def tc_decomposition(
    z_bz: jax.Array,
    mean_bz: jax.Array,
    logvar_bz: jax.Array,
    *,
    dataset_size: int,
    estimator: str = "mws",
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """The ELBO TC-decomposition of the KL term, estimated on the batch (beta-TC-VAE).

    With q(z|x_m) = N(mean_m, diag exp(logvar_m)), z_b ~ q(z|x_b), p(z) = N(0, I), the batch
    x_1..x_B as the sample of the data set (N = `dataset_size` examples), and per example b:

        log q(z_b|x_b), log p(z_b)      exact (`distributions.gaussian_log_density`)
        log q(z_b)                ~= logsumexp_m [ log w_bm + log q(z_b|x_m) ]
        log prod_j q(z_bj)        ~= sum_j logsumexp_m [ log w_bm + log q(z_bj|x_mj) ]

        mutual_info_b       = log q(z_b|x_b) - log q(z_b)             index-code MI
        total_correlation_b = log q(z_b) - log prod_j q(z_bj)         total correlation
        dimwise_kl_b        = log prod_j q(z_bj) - log p(z_b)         dimension-wise KL

    so mutual_info_b + total_correlation_b + dimwise_kl_b = log q(z_b|x_b) - log p(z_b)
    (= kl_mc_b, the one-sample Monte Carlo estimate of KL(q(z|x_b) || p(z))) for any weights:
    the three terms split the KL term exactly (Chen et al. 2018, "Isolating Sources of
    Disentanglement in VAEs", eq. 2). Their batch means estimate the expectations of eq. 2.

    Weights w_bm (Chen et al. 2018, appendix C; rtqichen/beta-tcvae, vae_quant.py):
      "mws", minibatch weighted sampling (Sec. 4.1, appendix C.1): w_bm = 1 / (N B) for every
        m, as in the paper and the reference code. Each row of weights sums to 1/N, not 1, so
        log q(z_b) and each log q(z_bj) come out low: by log B where the posteriors do not
        overlap, by log N where they are identical. The three terms still sum to kl_mc_b.
      "mss", minibatch stratified sampling (appendix C.2), with M = B - 1: example b's own
        component gets 1/N, one other example (b + 1 mod B) stands for the leftover stratum of
        (N - M) / M examples and gets (N - M) / (N M), the other B - 2 get 1/M each (strata of
        N/M examples). Each row sums to one, and the estimate is exact in both limits above.
        Which other member stands for the leftover stratum is a free choice (the batch is
        exchangeable). The reference code's `_log_importance_weight_matrix` writes with a
        stride of B, which fills columns 0 and 1 rather than the diagonal and its neighbour:
        every example's z is weighted against x_0 with 1/N, its own component mostly gets 1/M,
        and row B - 2 sums to more than one (reported in rtqichen/beta-tcvae pull request #1,
        unmerged, and YannDubs/disentangling-vae issue #58). This follows the paper's
        estimator, not that indexing.

    With `axis_name` (inside `jax.shard_map`), the mixture over m spans the GLOBAL batch: the
    means and log-variances are all-gathered, each device evaluates its own rows b, B is the
    global batch size and the batch means are over the global batch. Values equal those of one
    device on the concatenated batch. (z itself need not be gathered: only q(z_b|.) of a
    device's own z_b is evaluated there.)

    Args:
      z_bz: [B, Z] one sample per example from q(z|x_b).
      mean_bz, logvar_bz: [B, Z] the posterior parameters of the same examples.
      dataset_size: N, a static integer >= the global batch size.
      estimator: "mws" or "mss".
      axis_name: the mapped device axis when called per device, else None.

    Returns:
      A dict of [B] per-example values `log_qz_b`, `log_prod_qzj_b`, `log_qz_given_x_b`,
      `log_pz_b`, `mutual_info_b`, `total_correlation_b`, `dimwise_kl_b`, `kl_mc_b`, and the
      batch means (scalars) `mutual_info`, `total_correlation`, `dimwise_kl`, `kl_mc`; nats.
    """
    chex.assert_rank(z_bz, 2)
    chex.assert_equal_shape([z_bz, mean_bz, logvar_bz])
    _check_choice(estimator, "estimator", _ESTIMATORS)
    num_local = z_bz.shape[0]
    batch_size = num_local * _num_devices(axis_name)
    if batch_size < 2:
        raise ValueError(f"The aggregate posterior needs a batch of >= 2; got {batch_size}.")
    if not isinstance(dataset_size, numbers.Integral) or dataset_size < batch_size:
        raise ValueError(
            f"dataset_size must be an integer >= the global batch size {batch_size}; "
            f"got {dataset_size!r}."
        )
    all_mean_mz = _gather_rows(mean_bz, axis_name)
    all_logvar_mz = _gather_rows(logvar_bz, axis_name)
    log_w_bm = _log_importance_weights(
        num_local, batch_size, dataset_size, estimator, _global_row_offset(num_local, axis_name)
    )
    # log q(z_bj | x_mj) per dimension: a trailing singleton axis makes the density's latent-axis
    # sum a sum over one term.
    log_q_bmz = distributions.gaussian_log_density(
        z_bz[:, None, :, None], all_mean_mz[None, :, :, None], all_logvar_mz[None, :, :, None]
    )
    log_qz_b = jax.nn.logsumexp(log_w_bm + jnp.sum(log_q_bmz, axis=-1), axis=1)
    log_prod_qzj_b = jnp.sum(jax.nn.logsumexp(log_w_bm[:, :, None] + log_q_bmz, axis=1), axis=-1)
    log_qz_given_x_b = distributions.gaussian_log_density(z_bz, mean_bz, logvar_bz)
    log_pz_b = distributions.gaussian_log_density(z_bz, 0.0, 0.0)
    per_example = {
        "log_qz_b": log_qz_b,
        "log_prod_qzj_b": log_prod_qzj_b,
        "log_qz_given_x_b": log_qz_given_x_b,
        "log_pz_b": log_pz_b,
        "mutual_info_b": log_qz_given_x_b - log_qz_b,
        "total_correlation_b": log_qz_b - log_prod_qzj_b,
        "dimwise_kl_b": log_prod_qzj_b - log_pz_b,
        "kl_mc_b": log_qz_given_x_b - log_pz_b,
    }
    means = {
        name: _global_mean_over_rows(per_example[f"{name}_b"], axis_name)
        for name in ("mutual_info", "total_correlation", "dimwise_kl", "kl_mc")
    }
    return per_example | means


# ---------------------------------------------------------------------------------------------
# DIP-VAE.


def dip_regulariser(
    mean_bz: jax.Array,
    logvar_bz: jax.Array,
    *,
    kind: str,
    lambda_od: float,
    lambda_d: float,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The DIP-VAE penalty on the covariance of the codes.

        penalty = lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2

        C = Cov_p(x)[mean(x)]                                        kind "i"  (DIP-VAE-I)
        C = Cov_q(z)[z] = E_p(x)[diag exp(logvar(x))] + Cov_p(x)[mean(x)]   kind "ii" (DIP-VAE-II)

    (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts from Unlabeled
    Observations", Sec. 3, the DIP-VAE-I and DIP-VAE-II objectives, eq. 6 and 7 as numbered by
    disentanglement_lib.) The expectations over p(x) are batch averages, and the covariance is
    the biased (1/B) one, E[mean mean^T] - E[mean] E[mean]^T, as in disentanglement_lib's
    `compute_covariance_z_mean` (methods/unsupervised/vae.py): it keeps Cov_q(z) =
    E[Sigma] + Cov[mean] an identity for the empirical mixture of the batch's posteriors, and
    the penalty follows `regularize_diag_off_diag_dip`. Computed centred (two passes) rather
    than by that difference of moments, which loses digits in float32 when |E[mean]| is large.
    The KL term is not included (disentanglement_lib's `regularizer` adds it); the paper
    suggests lambda_d = 10 lambda_od for DIP-VAE-I and lambda_d = lambda_od for DIP-VAE-II.

    With `axis_name`, the moments are over the GLOBAL batch (psum of sums and counts).

    Args:
      mean_bz, logvar_bz: [B, Z] encoder outputs.
      kind: "i" or "ii".
      lambda_od, lambda_d: weights of the off-diagonal and diagonal terms.
      axis_name: the mapped device axis when called per device, else None.

    Returns:
      (penalty, metrics): the scalar penalty, and `cov_zz` [Z, Z] (C), `dip_off_diagonal`
      (sum_{i != j} C_ij^2) and `dip_diagonal` (sum_i (C_ii - 1)^2), both unweighted.
    """
    chex.assert_rank(mean_bz, 2)
    chex.assert_equal_shape([mean_bz, logvar_bz])
    _check_choice(kind, "kind", _DIP_KINDS)
    count = _global_sum(jnp.asarray(mean_bz.shape[0], mean_bz.dtype), axis_name)
    mean_z = _global_sum(jnp.sum(mean_bz, axis=0), axis_name) / count
    centred_bz = mean_bz - mean_z
    cov_zz = _global_sum(
        jnp.matmul(centred_bz.T, centred_bz, precision=jax.lax.Precision.HIGHEST), axis_name
    ) / count
    if kind == "ii":
        cov_zz = cov_zz + jnp.diag(_global_sum(jnp.sum(jnp.exp(logvar_bz), axis=0), axis_name)
                                   / count)
    diag_z = jnp.diagonal(cov_zz)
    off_diagonal = jnp.sum(jnp.square(cov_zz)) - jnp.sum(jnp.square(diag_z))
    diagonal = jnp.sum(jnp.square(diag_z - 1.0))
    penalty = lambda_od * off_diagonal + lambda_d * diagonal
    return penalty, {"cov_zz": cov_zz, "dip_off_diagonal": off_diagonal, "dip_diagonal": diagonal}


# ---------------------------------------------------------------------------------------------
# MMD (InfoVAE / WAE).


def _squared_distances(a_nz: jax.Array, b_mz: jax.Array) -> jax.Array:
    """||a_n - b_m||^2 [N, M], clipped at 0 against the rounding of the expanded form."""
    cross_nm = jnp.matmul(a_nz, b_mz.T, precision=jax.lax.Precision.HIGHEST)
    sq_nm = (jnp.sum(jnp.square(a_nz), axis=-1)[:, None] + jnp.sum(jnp.square(b_mz), axis=-1)
             - 2.0 * cross_nm)
    return jnp.maximum(sq_nm, 0.0)


def mmd(
    z_bz: jax.Array,
    prior_z_bz: jax.Array,
    *,
    kernel: str = "rbf",
    scale: float | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """Unbiased estimate of MMD^2 between the codes and samples of the prior.

    With x_1..x_n the codes (z ~ q(z), the aggregate posterior) and y_1..y_m prior samples:

        MMD^2_u = 1/(n(n-1)) sum_{i != i'} k(x_i, x_i') + 1/(m(m-1)) sum_{j != j'} k(y_j, y_j')
                  - 2/(n m) sum_{i, j} k(x_i, y_j)

    the U-statistic of Gretton et al. 2012 ("A Kernel Two-Sample Test", eq. 3 / Lemma 6), as in
    the WAE code (Tolstikhin et al. 2018). Its expectation is MMD^2(q, p) exactly, so it is ~0
    (and can be negative) when the two samples come from one distribution. InfoVAE (Zhao et
    al. 2017, eq. 9) writes the population MMD; their code takes the biased V-statistic (means
    over all pairs, k(x, x) = 1 included), which exceeds this one by
    (1/n)(1 - mean_{i != i'} k(x_i, x_i')) + (1/m)(1 - mean_{j != j'} k(y_j, y_j')) >= 0.

    Kernels, with d2 = ||x - y||^2 and s = `scale`:
      "rbf": k = exp(-d2 / (2 s))        (s = sigma^2, the kernel's variance)
      "imq": k = s / (s + d2)            (s = C; Tolstikhin et al. 2018, Sec. 4)
    Default s = 2 Z sigma_p^2 with sigma_p^2 = 1 (the N(0, I) prior), WAE's choice for both
    kernels (for IMQ at its scale 1; WAE sums IMQ over several multiples of C).

    With `axis_name`, both samples are the GLOBAL batches (all-gathered); each device sums the
    kernel over its own rows and the sums are psum-ed.

    Args:
      z_bz: [n, Z] codes, n >= 2 (globally).
      prior_z_bz: [m, Z] prior samples, m >= 2 (globally); m may differ from n.
      kernel: "rbf" or "imq".
      scale: s above (a positive float), or None for 2 Z.
      axis_name: the mapped device axis when called per device, else None.

    Returns:
      The scalar estimate of MMD^2.
    """
    chex.assert_rank([z_bz, prior_z_bz], 2)
    chex.assert_equal_shape_suffix([z_bz, prior_z_bz], 1)
    _check_choice(kernel, "kernel", _KERNELS)
    num_devices = _num_devices(axis_name)
    n, m = z_bz.shape[0] * num_devices, prior_z_bz.shape[0] * num_devices
    if n < 2 or m < 2:
        raise ValueError(f"The unbiased MMD needs >= 2 samples on each side; got {n} and {m}.")
    s = 2.0 * z_bz.shape[-1] if scale is None else scale

    def k(a_nz, b_mz):
        d2 = _squared_distances(a_nz, b_mz)
        return jnp.exp(-d2 / (2.0 * s)) if kernel == "rbf" else s / (s + d2)

    def off_diagonal_sum(local_nz, all_nz):
        rows_n = _global_row_offset(local_nz.shape[0], axis_name) + jnp.arange(local_nz.shape[0])
        not_self = rows_n[:, None] != jnp.arange(all_nz.shape[0])[None, :]
        return jnp.sum(jnp.where(not_self, k(local_nz, all_nz), 0.0))

    sums = jnp.stack([
        off_diagonal_sum(z_bz, _gather_rows(z_bz, axis_name)),
        off_diagonal_sum(prior_z_bz, _gather_rows(prior_z_bz, axis_name)),
        jnp.sum(k(z_bz, _gather_rows(prior_z_bz, axis_name))),
    ])
    sum_xx, sum_yy, sum_xy = _global_sum(sums, axis_name)
    return sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2.0 * sum_xy / (n * m)


# ---------------------------------------------------------------------------------------------
# Capacity (Burgess et al. 2018).


def capacity_target(step, *, max_capacity: float, num_steps: int) -> jax.Array:
    """The KL capacity C(step), rising linearly from 0 to `max_capacity` then constant.

        C(step) = max_capacity * min(step / num_steps, 1)      (step >= 0)

    for the loss  recon + gamma * |KL - C(step)|  (Burgess et al. 2018, "Understanding
    disentangling in beta-VAE", Sec. 5; disentanglement_lib's `anneal` / AnnealedVAE), with KL
    the batch mean of KL(q(z|x) || p(z)) in nats.

    Args:
      step: the training step, a Python or traced scalar (int or float).
      max_capacity: C_max in nats.
      num_steps: steps to reach C_max, a static Python int; <= 0 means C_max from step 0.

    Returns:
      A float scalar, nats.
    """
    if num_steps <= 0:
        return jnp.asarray(max_capacity, jnp.float32)
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / num_steps, 0.0, 1.0)
    return max_capacity * fraction


# ---------------------------------------------------------------------------------------------
# FactorVAE: the total correlation by the density-ratio trick.


def permute_dims(z_bz: jax.Array, key: jax.Array, *, axis_name: str | None = None
                 ) -> jax.Array:
    """Samples of prod_j q(z_j) from samples of q(z): every latent dimension j permuted
    independently over the GLOBAL batch (Kim & Mnih 2018, Algorithm 1):

        z~_bj = z_{pi_j(b), j},   pi_j = permutation(fold_in(key, j), B_global)

    Args:
      z_bz: [B, Z] this device's rows of z ~ q(z | x).
      key: the permutations' key, the same on every device.
      axis_name: the device axis; the permutations act on the concatenated batch, so the result
        does not depend on the device count.

    Returns:
      [B, Z]: this device's rows of the permuted global batch.
    """
    all_bz = _gather_rows(z_bz, axis_name)
    num, num_dims = all_bz.shape

    def one_dim(j, column_b):
        return column_b[jax.random.permutation(jax.random.fold_in(key, j), num)]

    permuted_bz = jax.vmap(one_dim, in_axes=(0, 1), out_axes=1)(jnp.arange(num_dims), all_bz)
    offset = _global_row_offset(z_bz.shape[0], axis_name)
    return jax.lax.dynamic_slice_in_dim(permuted_bz, offset, z_bz.shape[0], axis=0)


def density_ratio_tc(logits_b2: jax.Array) -> jax.Array:
    """The FactorVAE estimate of the total correlation from the discriminator's logits
    (Kim & Mnih 2018, eq. 3), mean over the batch, in nats:

        TC ~= mean_b log D(z_b) / (1 - D(z_b)) = mean_b [logit_b0 - logit_b1],

    with D = softmax(logits)[:, 0] the probability that z_b was drawn from q(z)."""
    return jnp.mean(logits_b2[:, 0] - logits_b2[:, 1])


def discriminator_loss(logits_q_b2: jax.Array, logits_perm_b2: jax.Array):
    """The discriminator's cross-entropy (Kim & Mnih 2018, Algorithm 1), mean over the batch:

        -1/2 mean_b log D(z_b) - 1/2 mean_b log (1 - D(z~_b)),

    z from q(z) (class 0) and z~ from `permute_dims` (class 1). Returns (loss, accuracy), the
    accuracy the fraction of the 2B samples classified right."""
    log_p_q = jax.nn.log_softmax(logits_q_b2)
    log_p_perm = jax.nn.log_softmax(logits_perm_b2)
    loss = -0.5 * (jnp.mean(log_p_q[:, 0]) + jnp.mean(log_p_perm[:, 1]))
    accuracy = 0.5 * (jnp.mean(logits_q_b2[:, 0] > logits_q_b2[:, 1])
                      + jnp.mean(logits_perm_b2[:, 1] >= logits_perm_b2[:, 0]))
    return loss, accuracy


# ---------------------------------------------------------------------------------------------
# The objectives by name.
#
# Each is `fn(model, params, x, key, *, step, beta, example_ids, axis_name, settings)
# -> (loss, metrics)` on one device's rows, every term reported separately. Every objective
# reports the ELBO's terms of its draw (`recon_nats`, `kl_nats`, `elbo_nats`, and
# `per_example` {recon, kl, elbo, mean[, kl_per_dim]}), so training curves, validation and the
# latent diagnostics read the same keys whatever is minimised.


@dataclasses.dataclass(frozen=True)
class Settings:
    """The static settings of the objectives (`config.objective` plus the data set's size)."""

    name: str = "elbo"
    num_samples: int = 1
    free_bits: float = 0.0
    capacity_max: float = 25.0
    capacity_steps: int = 100000
    capacity_gamma: float = 1000.0
    tc_estimator: str = "mws"
    dip_lambda_od: float = 10.0
    dip_lambda_d: float = 0.0
    mmd_kernel: str = "rbf"
    info_alpha: float = 0.0
    info_lambda: float = 1000.0
    factor_gamma: float = 30.0
    discriminator_hidden: tuple = (1000,) * 6
    dataset_size: int = 0

    @classmethod
    def from_config(cls, objective_config, *, dataset_size: int = 0,
                    name: str | None = None) -> "Settings":
        """The settings of `config.objective` (`name` overrides its name)."""
        values = {f.name: objective_config[f.name] for f in dataclasses.fields(cls)
                  if f.name not in ("dataset_size", "name")}
        values["discriminator_hidden"] = tuple(values["discriminator_hidden"])
        return cls(name=name or objective_config.name, dataset_size=int(dataset_size),
                   **values)


def _elbo_terms(model, params, x, key, num_samples, example_ids, axis_name):
    """The draw and the ELBO's per-example terms: the closed-form KL where the model has one
    (lower variance), else the Monte Carlo KL E_q[log q(z|x) - log p(z)] of the draw."""
    draw = model.log_weights(params, x, key, num_samples=num_samples, example_ids=example_ids)
    w = draw.weights
    recon_b = -jnp.mean(w.log_px_z, axis=0)
    analytic = model.analytic_kl(params, draw.encoded)
    if analytic is not None:
        kl_b, kl_bz = analytic
    else:
        kl_b, kl_bz = jnp.mean(w.log_qz - w.log_pz, axis=0), None
    per_example = {"recon": recon_b, "kl": kl_b, "elbo": -(recon_b + kl_b),
                   "mean": model.points(params, draw)}
    metrics = {"recon_nats": jnp.mean(recon_b), "kl_nats": jnp.mean(kl_b),
               "elbo_nats": -jnp.mean(recon_b + kl_b), "per_example": per_example}
    if kl_bz is not None:
        per_example["kl_per_dim"] = kl_bz
        kl_per_dim_z = jnp.mean(kl_bz, axis=0)
        if axis_name is not None:
            kl_per_dim_z = jax.lax.pmean(kl_per_dim_z, axis_name)
        metrics["kl_per_dim_nats"] = kl_per_dim_z
    return draw, metrics


def elbo_objective(model, params, x, key, *, step, beta, example_ids, axis_name, settings):
    """The negative ELBO: mean_b recon_b + beta * mean_b kl_b (Kingma & Welling 2014), with
    beta from a KL schedule, and with free bits lambda > 0 the KL part is
    sum_z max(lambda, mean_b kl_bz) over the global batch (Kingma et al. 2016, eq. 15)."""
    del step
    _, metrics = _elbo_terms(model, params, x, key, settings.num_samples, example_ids,
                             axis_name)
    if settings.free_bits > 0.0:
        kl_term = jnp.sum(jnp.maximum(metrics["kl_per_dim_nats"], settings.free_bits))
    else:
        kl_term = metrics["kl_nats"]
    loss = metrics["recon_nats"] + beta * kl_term
    return loss, {"loss": loss, **metrics}


def iwae_objective(model, params, x, key, *, step, beta, example_ids, axis_name, settings):
    """The negative importance-weighted bound -mean_b [logsumexp_k log w_bk - log K] (Burda et
    al. 2015, eq. 8), reported as `iwae_nats`; its draw's ELBO terms are reported too (the KL
    by sampling). beta does not enter."""
    del step, beta
    draw = model.log_weights(params, x, key, num_samples=settings.num_samples,
                             example_ids=example_ids)
    bound_b = jax.nn.logsumexp(draw.weights.log_w, axis=0) - jnp.log(settings.num_samples)
    w = draw.weights
    recon_b = -jnp.mean(w.log_px_z, axis=0)
    kl_b = jnp.mean(w.log_qz - w.log_pz, axis=0)
    loss = -jnp.mean(bound_b)
    per_example = {"recon": recon_b, "kl": kl_b, "elbo": -(recon_b + kl_b), "iwae": bound_b,
                   "mean": model.points(params, draw)}
    return loss, {"loss": loss, "iwae_nats": -loss, "recon_nats": jnp.mean(recon_b),
                  "kl_nats": jnp.mean(kl_b), "elbo_nats": -jnp.mean(recon_b + kl_b),
                  "per_example": per_example}


def capacity_objective(model, params, x, key, *, step, beta, example_ids, axis_name,
                       settings):
    """mean_b recon_b + gamma * |mean_b kl_b - C(step)| (Burgess et al. 2018, Sec. 5), with
    C rising linearly to `capacity_max` nats over `capacity_steps` (`capacity_target`)."""
    del beta
    _, metrics = _elbo_terms(model, params, x, key, settings.num_samples, example_ids,
                             axis_name)
    target = capacity_target(step, max_capacity=settings.capacity_max,
                             num_steps=settings.capacity_steps)
    loss = metrics["recon_nats"] + settings.capacity_gamma * jnp.abs(metrics["kl_nats"] - target)
    return loss, {"loss": loss, "capacity_nats": target, **metrics}


def beta_tc_objective(model, params, x, key, *, step, beta, example_ids, axis_name, settings):
    """beta-TCVAE (Chen et al. 2018, eq. 4 with alpha = gamma = 1): mean_b recon_b + MI +
    beta * TC + dimension-wise KL, the three terms of `tc_decomposition` on the draw's
    z ~ q(z | x) against the global batch (`axis_name`). At beta = 1 this is the ELBO with the
    KL estimated through the decomposition."""
    del step
    draw, metrics = _elbo_terms(model, params, x, key, 1, example_ids, axis_name)
    terms = tc_decomposition(draw.z[0][0], draw.encoded.mean, draw.encoded.logvar,
                             dataset_size=settings.dataset_size,
                             estimator=settings.tc_estimator, axis_name=axis_name)
    loss = (metrics["recon_nats"] + terms["mutual_info"] + beta * terms["total_correlation"]
            + terms["dimwise_kl"])
    return loss, {"loss": loss, "mutual_info_nats": terms["mutual_info"],
                  "total_correlation_nats": terms["total_correlation"],
                  "dimwise_kl_nats": terms["dimwise_kl"], **metrics}


def _dip_objective(kind):
    def dip(model, params, x, key, *, step, beta, example_ids, axis_name, settings):
        del step
        _, metrics = _elbo_terms(model, params, x, key, settings.num_samples, example_ids,
                                 axis_name)
        enc = model.encode(params, x)
        lambda_d = settings.dip_lambda_d or (
            10.0 * settings.dip_lambda_od if kind == "i" else settings.dip_lambda_od)
        penalty, terms = dip_regulariser(enc.mean, enc.logvar, kind=kind,
                                         lambda_od=settings.dip_lambda_od, lambda_d=lambda_d,
                                         axis_name=axis_name)
        loss = metrics["recon_nats"] + beta * metrics["kl_nats"] + penalty
        return loss, {"loss": loss, "dip_penalty": penalty,
                      "dip_off_diagonal": terms["dip_off_diagonal"],
                      "dip_diagonal": terms["dip_diagonal"], **metrics}

    dip.__doc__ = (f"DIP-VAE-{kind.upper()} (Kumar et al. 2018): the negative ELBO (beta on the "
                   "KL) plus `dip_regulariser` of the posterior means (and, for II, variances) "
                   "over the global batch; lambda_d defaults to 10 lambda_od for I and "
                   "lambda_od for II, as in the paper.")
    return dip


def info_vae_mmd_objective(model, params, x, key, *, step, beta, example_ids, axis_name,
                           settings):
    """InfoVAE (Zhao et al. 2017, eq. 6): mean_b recon_b + (1 - alpha) mean_b kl_b
    + (alpha + lambda - 1) MMD(q(z), p(z)), the MMD (`mmd`) between the draw's z and one
    prior draw per example (keyed by its global position, so device-count invariant)."""
    del step, beta
    draw, metrics = _elbo_terms(model, params, x, key, 1, example_ids, axis_name)
    if example_ids is None:
        example_ids = jnp.arange(x.shape[0])
    prior_key = fastpath.fold_in(key, 2**31 - 1)  # disjoint from the latent noise's ids

    def one_prior_draw(example_id):
        return model.sample_prior(params, fastpath.fold_in(prior_key, example_id), 1)[0]

    prior_z = jax.vmap(one_prior_draw)(example_ids)
    distance = mmd(draw.z[-1][0], prior_z, kernel=settings.mmd_kernel, axis_name=axis_name)
    loss = (metrics["recon_nats"] + (1.0 - settings.info_alpha) * metrics["kl_nats"]
            + (settings.info_alpha + settings.info_lambda - 1.0) * distance)
    return loss, {"loss": loss, "mmd": distance, **metrics}


def _discriminator(settings: Settings) -> models.Discriminator:
    return models.Discriminator(hidden=settings.discriminator_hidden)


def factor_vae_objective(model, params, x, key, *, step, beta, example_ids, axis_name,
                         settings):
    """FactorVAE (Kim & Mnih 2018, eq. 2 and Algorithm 1), both of its losses in one value:

        VAE:            mean_b recon_b + beta * mean_b kl_b + gamma * TC(D; z)
        discriminator:  `discriminator_loss`(D; sg(z), permute_dims(sg(z)))

    with TC from `density_ratio_tc` and sg the stop-gradient. The VAE's part sees the
    discriminator's parameters (params["objective"]["discriminator"]) through a stop-gradient
    and the discriminator's part sees z through one, so the gradient of the sum is the VAE's
    gradient for the model and the discriminator's for its network; each goes to its own
    optimiser (`objective_optimizer`). The metric `loss` is the VAE's part."""
    del step
    draw, metrics = _elbo_terms(model, params, x, key, 1, example_ids, axis_name)
    disc, disc_params = _discriminator(settings), params["objective"]["discriminator"]
    z_bz = draw.z[0][0]
    tc = density_ratio_tc(disc.apply(jax.lax.stop_gradient(disc_params), z_bz))
    vae_loss = metrics["recon_nats"] + beta * metrics["kl_nats"] + settings.factor_gamma * tc
    z_fixed_bz = jax.lax.stop_gradient(z_bz)
    permuted_bz = permute_dims(z_fixed_bz, fastpath.fold_in(key, 2**31 - 2),
                               axis_name=axis_name)
    d_loss, d_accuracy = discriminator_loss(disc.apply(disc_params, z_fixed_bz),
                                            disc.apply(disc_params, permuted_bz))
    return vae_loss + d_loss, {"loss": vae_loss, "total_correlation_nats": tc,
                               "discriminator_loss": d_loss,
                               "discriminator_accuracy": d_accuracy, **metrics}


OBJECTIVES = {
    "elbo": elbo_objective,
    "iwae": iwae_objective,
    "capacity": capacity_objective,
    "beta_tc": beta_tc_objective,
    "dip_vae_i": _dip_objective("i"),
    "dip_vae_ii": _dip_objective("ii"),
    "info_vae_mmd": info_vae_mmd_objective,
    "factor_vae": factor_vae_objective,
}


def init_objective_params(settings: Settings, key: jax.Array, model) -> dict:
    """The objective's own parameters, kept at params["objective"]: {"discriminator": ...}
    for "factor_vae", {} for every other objective (they have none)."""
    if settings.name != "factor_vae":
        return {}
    z = jnp.zeros((1, model.latent_dims[0]), jnp.float32)
    return {"discriminator": _discriminator(settings).init(key, z)}


def objective_optimizer(objective_config) -> optax.GradientTransformation | None:
    """The optimiser of the objective's own parameters, or None when it has none: FactorVAE's
    discriminator takes Adam(lr, b1, b2) from `discriminator_learning_rate`, `_b1`, `_b2`
    (1e-4, 0.5, 0.9 in Kim & Mnih 2018), with `fastpath.scale_by_adam` like the model's."""
    if objective_config.name != "factor_vae":
        return None
    o = objective_config
    return optax.chain(fastpath.scale_by_adam(b1=o.discriminator_b1, b2=o.discriminator_b2,
                                              eps=1e-8),
                       optax.scale_by_learning_rate(o.discriminator_learning_rate))

# Objectives that read the posterior's mean and log-variance as one diagonal Gaussian layer.
_DIAGONAL_ONLY = ("beta_tc", "dip_vae_i", "dip_vae_ii")


def check_objective(settings: Settings, model) -> None:
    """A clear error for an objective that cannot work with this model, before anything runs."""
    if settings.name not in OBJECTIVES:
        raise ValueError(f"unknown objective {settings.name!r}; valid: {sorted(OBJECTIVES)}")
    if settings.name in _DIAGONAL_ONLY and (model.posterior.name != "diagonal"
                                            or model.num_layers != 1):
        raise ValueError(
            f"objective {settings.name!r} reads the posterior's means and variances as one "
            f"diagonal Gaussian layer; it needs model.posterior='diagonal' and "
            f"model.num_layers=1 (got {model.posterior.name!r}, {model.num_layers})")
    if settings.name == "beta_tc" and model.prior.name != "standard_normal":
        raise ValueError(
            f"objective 'beta_tc' splits the KL against the factorised N(0, I) (its "
            f"dimension-wise KL needs p(z) = prod_j p(z_j)); model.prior={model.prior.name!r} "
            "is not; use model.prior='standard_normal'")
    if settings.name == "beta_tc" and settings.dataset_size < 2:
        raise ValueError("objective 'beta_tc' needs the training set's size (dataset_size)")
    if settings.name == "info_vae_mmd" and model.num_layers != 1:
        raise ValueError("objective 'info_vae_mmd' compares q(z) with p(z) of one layer; "
                         "set model.num_layers=1")
    if settings.free_bits > 0.0 and (settings.name != "elbo" or model.num_layers != 1
                                     or model.prior.name != "standard_normal"
                                     or model.posterior.name != "diagonal"):
        raise ValueError(
            f"free_bits={settings.free_bits} needs the ELBO with a closed-form KL per latent "
            "dimension: objective 'elbo', one layer, a 'diagonal' posterior and the "
            "'standard_normal' prior; set objective.free_bits=0")


def make_loss_fn(settings: Settings, model) -> Callable:
    """The named objective bound to `model` and `settings`:
    `(params, x, key, *, step, beta, example_ids, axis_name) -> (loss, metrics)`."""
    check_objective(settings, model)
    fn = OBJECTIVES[settings.name]

    def loss_fn(params, x, key, *, step=0, beta=1.0, example_ids=None, axis_name=None):
        return fn(model, params, x, key, step=step, beta=beta, example_ids=example_ids,
                  axis_name=axis_name, settings=settings)

    return loss_fn
