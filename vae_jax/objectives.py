"""The math of the disentangling objectives: beta-TC, DIP, MMD (InfoVAE) and capacity.

Pure `jax.numpy` on encoder statistics and latent samples, like `distributions`: no Flax, no
randomness. The named objectives (`beta_tc`, `dip_vae_i`, `dip_vae_ii`, `info_vae_mmd`,
`capacity`) are assembled from these functions elsewhere. Units are nats; per-example terms are
summed over the latent axis, batch values are means over examples (the package convention).

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

Data parallelism: every function takes `axis_name`. Inside `jax.shard_map` over that axis, the
batch statistics (q(z) of the aggregate posterior, covariances, kernel sums) span the GLOBAL
batch, so the values equal the single-device values on the concatenated batch and do not depend
on the device count. Per-example outputs are the device's own rows. The collectives (all_gather,
psum, pmean) are differentiable; under `parallel.data_parallel` (check_vma=False) the mean over
devices of each device's gradient is the single-device gradient, as for the ELBO.
"""

import math
import numbers

import chex
import jax
import jax.numpy as jnp

from vae_jax import distributions

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
