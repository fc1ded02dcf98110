"""Evaluation of a trained VAE: importance-sampled NLL, IWAE bounds, latent diagnostics, pictures.

    python -m vae_jax.evaluate --workdir runs/x [--num_importance_samples 5000]
        [--chunk_size 100] [--split test|validation] [--max_examples N] [--batch_size B]
        [--step N | --best] [--parameters auto|iterate|ema] [--out DIR]
        [--disentanglement [--disentanglement_num_train 10000] [--disentanglement_num_eval 5000]]

prints the numbers, then writes `runs/x/eval.json`, `runs/x/per_example.npz` and
`runs/x/plots/*.png` (or into `--out DIR`) from the run's latest checkpoint (or that of
`--step N`). Any K >= 1 works; the chunk size only bounds memory. `compare_evaluations` (the
command `experiments/compare_evaluations.py`) gives the difference of two rows evaluated on the
same images with its paired standard error. Rerun after an interruption, the command continues
the NLL pass after the batches it had finished (`NLL_PROGRESS`, `BatchProgress`).

Every number asks the model (`vae_jax.model.VAE`), so it works for every prior, posterior
family and number of layers: the NLL is `model.log_likelihood_estimate` (the one chunked scan
over `VAE.log_weights`), `per_example_metrics` gives the posterior's point summaries, the ELBO
terms and IWAE-k bounds, `latent_mean_diagnostics` the active units (and the KL per dimension
where it is defined), `latent_diagnostics` the mutual information of one diagonal Gaussian
layer, and the latent paths of the pictures come from `traversal_latents`,
`interpolation_latents`, `manifold_latents`. `make_nll_program` and `make_per_example_program`
wrap the per-example passes in the data-parallel `jax.shard_map` pattern of `vae_jax.parallel`;
`evaluate_workdir` is the command as a function, `save_plots` its pictures (drawn by
`vae_jax.plots`). Units are nats per example, summed over data dimensions, as everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import pathlib
import time
import warnings
import zipfile
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import (
    config_defaults,
    disentanglement,
    distributions,
    fastpath,
    ground_truth,
    input_pipeline,
    likelihoods,
    losses,
    objectives,
    optim,
    parallel,
    plots,
)
from vae_jax import model as model_lib
from vae_jax import workdir as workdir_lib


def nll_summary(log_px_b, num_dims: int) -> dict:
    """Host-side summary of per-example log p(x) estimates (float64 numpy).

        nll_nats        = mean_b(-log p(x_b))
        nll_stderr_nats = std_b(-log p(x_b), ddof=1) / sqrt(N)   (NaN when N < 2)
        bits_per_dim    = nll_nats / (num_dims * ln 2)

    Args:
      log_px_b: [N] estimates of log p(x_b) in nats, e.g. from
        `model.log_likelihood_estimate` concatenated over batches.
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


def make_nll_program(mesh, vae: model_lib.VAE, *, num_samples: int = 5000,
                     chunk_size: int = 100, compiler_options: dict | None = None) -> Callable:
    """A jitted data-parallel `model.log_likelihood_estimate` over a 1-D "batch" mesh.

    The program is `program(params, x, key, example_ids) -> log_px_b`:
      params: replicated; x: [B, H, W, C] split along "batch"; key: replicated;
      example_ids: [B] global positions of the rows of x, split along "batch" like x.
    It returns [B] estimates split along "batch". Because each example's noise comes from its
    global id, the values do not depend on the number of devices (up to float summation order).
    B must divide evenly across the mesh. Any K >= 1 works, whatever the chunk size.
    `compiler_options` default `parallel.compiler_options()`
    (`parallel.compiler_options(convolutional=vae.convolutional)` gives the model's).
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"num_samples={num_samples} and chunk_size={chunk_size} must both be "
                         "positive")

    def per_device(params, x, key, example_ids):
        return model_lib.log_likelihood_estimate(vae, params, x, key, num_samples=num_samples,
                                                 chunk_size=chunk_size, example_ids=example_ids)

    mapped = parallel.data_parallel(
        per_device,
        mesh,
        in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED, parallel.SHARDED),
        out_specs=parallel.SHARDED,
    )
    return jax.jit(mapped, compiler_options=parallel.options_or_default(compiler_options))


# --------------------------------------------------------------------------- per-example metrics


IWAE_KS = (1, 5, 50)


def per_example_metrics(vae: model_lib.VAE, params, x, key, *, iwae_ks=IWAE_KS,
                        example_ids=None) -> dict:
    """The posterior, the ELBO terms and IWAE-k bounds of every example, in one pass.

        point [B, Z]          `VAE.points`: the posterior's point summary of every layer
                              (the mean of a Gaussian; for upper layers the Monte Carlo
                              estimate of E_q[z_l | x])
        mean, logvar [B, Z_1] the Gaussian parameters the encoder emits for q(z_1 | x)
        elbo, recon, kl [B]   the "elbo" objective (beta = 1, one draw; the closed-form KL where
                              the model has one, else by sampling), noise from fold_in(key, 0)
        kl_per_dim [B, Z]     only where the KL has per-dimension terms in closed form
        iwae [B, len(ks)]     L_k(x_b) = logsumexp_{j<k} log w_bj - log k (Burda et al. 2016,
                              eq. 8) for every k of `iwae_ks`, from `log_likelihood_estimate`
                              with K = chunk = k and key fold_in(key, 1). Draw j of example b
                              depends only on (b, j), so the k draws of L_k are the first k of
                              L_max(ks)'s: common random numbers, under which L_1 <= L_5 <= L_50
                              (true in expectation) is seldom reversed by noise.

    `example_ids` [B] are the global positions that key every example's noise.
    """
    if example_ids is None:
        example_ids = jnp.arange(x.shape[0])
    elbo_key, iwae_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    loss_fn = objectives.make_loss_fn(objectives.Settings(name="elbo"), vae)
    _, metrics = loss_fn(params, x, elbo_key, example_ids=example_ids)
    iwae_bk = jnp.stack([
        model_lib.log_likelihood_estimate(vae, params, x, iwae_key, num_samples=k, chunk_size=k,
                                          example_ids=example_ids)
        for k in iwae_ks
    ], axis=-1)
    per_example = metrics["per_example"]
    encoded = vae.encode(params, x)
    out = {"point": per_example["mean"], "mean": encoded.mean, "logvar": encoded.logvar,
           "elbo": per_example["elbo"], "recon": per_example["recon"], "kl": per_example["kl"],
           "iwae": iwae_bk}
    if "kl_per_dim" in per_example:
        out["kl_per_dim"] = per_example["kl_per_dim"]
    return out


def make_per_example_program(fn: Callable, mesh, *, compiler_options: dict | None = None
                             ) -> Callable:
    """`fn(params, x, key, example_ids)` -> per-example outputs, jitted and data-parallel.

    params and key are replicated; x [B, ...] and example_ids [B] are split along "batch",
    and so is every output (each [B, ...]). Bind fn's static arguments with
    `functools.partial` first, e.g. `partial(per_example_metrics, vae)`.
    """
    mapped = parallel.data_parallel(
        lambda params, x, key, example_ids: fn(params, x, key, example_ids=example_ids),
        mesh,
        in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED, parallel.SHARDED),
        out_specs=parallel.SHARDED,
    )
    return jax.jit(mapped, compiler_options=parallel.options_or_default(compiler_options))


# --------------------------------------------------------------------------- latent diagnostics


def mutual_information(mean_bz, logvar_bz, z_bz, *, chunk_size: int = 64):
    """I_q(x; z) estimated from N posteriors and one draw z_n ~ q(z | x_n) from each.

    The estimator of He et al. (2019, "Lagging inference networks", `calc_mi`) for the
    mutual information of Hoffman & Johnson (2016) between the data index and z:

        I = E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)]
          ~= mean_n [-Z/2 log(2 pi) - 1/2 sum_z (1 + logvar_nz)]      (the exact -entropy)
             - mean_n log q(z_n),
        log q(z) ~= logsumexp_m log N(z; mean_m, exp(logvar_m)) - log N

    i.e. the aggregate posterior q(z) is the mixture of the N posteriors (z_n's own included).

    Bias: consistent as N grows, but not a bound and biased for finite N. Since the mixture
    holds z_n's own component, log q(z_n) >= log q(z_n | x_n) - log N, so the expected
    estimate cannot exceed log N nats: it saturates (under-reports) once the true MI nears
    log N, and reads log N for well-separated posteriors. Both there and for identical
    posteriors (where it reads 0) what remains is the Monte Carlo term
    mean_n 1/2 sum_z (eps_nz^2 - 1) of the one draw per example, of standard deviation
    sqrt(Z / (2 N)) nats.

    Args:
      mean_bz, logvar_bz: [N, Z] posterior parameters.
      z_bz: [N, Z] one draw from each posterior.
      chunk_size: z rows per step of the [N, N] mixture evaluation; [chunk_size, N, Z] is the
        largest array held.

    Returns:
      [] the estimate in nats.
    """
    chex.assert_equal_shape([mean_bz, logvar_bz, z_bz])
    chex.assert_rank(mean_bz, 2)
    n, z_dim = mean_bz.shape
    neg_entropy = jnp.mean(
        -0.5 * z_dim * math.log(2 * math.pi) - 0.5 * jnp.sum(1.0 + logvar_bz, axis=-1))

    def log_mixture(z_z):
        return jax.nn.logsumexp(distributions.gaussian_log_density(z_z, mean_bz, logvar_bz))

    log_qz_b = jax.lax.map(log_mixture, z_bz, batch_size=min(chunk_size, n)) - math.log(n)
    return neg_entropy - jnp.mean(log_qz_b)


ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016, Sec. 5.2


def latent_diagnostics(mean_bz, logvar_bz, key, *,
                       active_threshold: float = ACTIVE_THRESHOLD,
                       chunk_size: int = 64) -> dict:
    """Posterior-collapse diagnostics of a set of N encoded examples.

        kl_per_dim [Z]             mean_n KL(N(mean_nz, exp(logvar_nz)) || N(0, 1)), nats
        mean_variance_per_dim [Z]  Var_n(mean_nz) (ddof = 0): Var_x E_q[z_i | x]
        active_units []            #{i : Var_x E_q[z_i | x] > active_threshold} (Burda et al.
                                   2016, Sec. 5.2, with threshold 0.01)
        mutual_information_nats [] `mutual_information` with one z_n ~ q(z | x_n) drawn from
                                   `key` per example (see there for the estimator's bias)

    A collapsed dimension (mean_nz = 0, logvar_nz = 0 for every n) has KL 0 and variance 0.

    Args:
      mean_bz, logvar_bz: [N, Z] posterior parameters of N examples.
      key: PRNG key of the draws for the MI estimate.
      active_threshold: variance above which a latent dimension counts as active.
      chunk_size: passed to `mutual_information`.

    Returns:
      dict of the four entries above (`active_units` int32).
    """
    chex.assert_equal_shape([mean_bz, logvar_bz])
    kl_bz = distributions.kl_standard_normal(mean_bz[..., None], logvar_bz[..., None])
    mean_variance_z = jnp.var(mean_bz, axis=0)
    z_bz = distributions.reparameterize(key, mean_bz, logvar_bz)
    return {
        "kl_per_dim": jnp.mean(kl_bz, axis=0),
        "mean_variance_per_dim": mean_variance_z,
        "active_units": jnp.sum(mean_variance_z > active_threshold).astype(jnp.int32),
        "mutual_information_nats": mutual_information(mean_bz, logvar_bz, z_bz,
                                                      chunk_size=chunk_size),
    }


def latent_mean_diagnostics(latent_mean_nz, kl_nz=None, *,
                            active_threshold: float = ACTIVE_THRESHOLD) -> dict:
    """Per-dimension diagnostics from estimates of E_q[z | x_n] and of each KL term (numpy).

        kl_per_dim [Z]             mean_n kl_nz
        mean_variance_per_dim [Z]  Var_n(latent_mean_nz) (ddof = 0, float64)
        active_units               #{i : mean_variance_per_dim_i > active_threshold}

    Used for every model on `per_example_metrics`' `point` (all layers) and, where defined, its
    `kl_per_dim`; kl_per_dim is None without `kl_nz`. `latent_diagnostics` is the closed-form
    counterpart for one diagonal Gaussian layer (it adds the mutual information).
    """
    variance_z = np.var(np.asarray(latent_mean_nz, np.float64), axis=0)
    return {
        "kl_per_dim": (None if kl_nz is None
                       else np.mean(np.asarray(kl_nz, np.float64), axis=0)),
        "mean_variance_per_dim": variance_z,
        "active_units": int(np.sum(variance_z > active_threshold)),
    }


# --------------------------------------------------------------------------- latent paths


def traversal_latents(mean_z, dims, values):
    """[len(dims), S, Z]: row r moves latent `dims[r]` of `mean_z` by each of `values` [S]."""
    dims = jnp.asarray(dims)
    values = jnp.asarray(values, mean_z.dtype)
    one_hot_rz = jax.nn.one_hot(dims, mean_z.shape[-1], dtype=mean_z.dtype)
    return mean_z + values[None, :, None] * one_hot_rz[:, None, :]


def interpolation_latents(z_a, z_b, num_steps: int):
    """[S, Z]: z_a + t (z_b - z_a) for S values of t evenly spaced over [0, 1]."""
    t_s = jnp.linspace(0.0, 1.0, num_steps, dtype=z_a.dtype)[:, None]
    return z_a + t_s * (z_b - z_a)


def manifold_latents(num_per_side: int, *, low: float = 0.05, high: float = 0.95):
    """[G, G, 2] latents of a 2-D prior grid at normal quantiles (Kingma & Welling 2014, fig. 4).

    Row i holds z_1 = Phi^-1(q_i) with q decreasing down the rows (so "up" is positive, as on
    a plot); column j holds z_0 = Phi^-1(q_j) increasing to the right; q evenly spaced in
    [low, high].
    """
    q_g = jnp.linspace(low, high, num_per_side)
    z_g = jax.scipy.stats.norm.ppf(q_g)
    z0_gg, z1_gg = jnp.meshgrid(z_g, z_g[::-1])
    return jnp.stack([z0_gg, z1_gg], axis=-1)


# --------------------------------------------------------------------------- the command


EVAL_JSON = "eval.json"
PER_EXAMPLE_NPZ = "per_example.npz"
DISENTANGLEMENT_JSON = "disentanglement.json"
PLOTS_DIR = "plots"


def load_run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The config a training run in `workdir` was run with (its config.json, with the defaults of
    fields added since); FileNotFoundError when `workdir` holds no run."""
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --workdir must be the directory of a training run "
            "(python -m vae_jax.main --workdir ...), which holds config.json and checkpoints/."
        )
    return ml_collections.ConfigDict(config_defaults.with_defaults(json.loads(path.read_text())))


def _load_split(config, split: str):
    """(levels [N, H, W, C] uint8, labels [N] or None, dataset): the split training saw.

    The data arguments are the training loop's, including its choice of the streamed path
    (whose validation hold-out differs from the in-memory one). The training images are not
    read when the split does not depend on them (test, without static binarisation).
    """
    data_cfg = config.data
    size = data_cfg.validation_size
    validation_size = int(size) if size >= 1 else float(size)
    if split == "test" and data_cfg.name != "digits" and data_cfg.binarization != "static":
        streaming = True
    else:
        streaming = input_pipeline.dataset_nbytes(
            data_cfg.name, split="train", data_dir=data_cfg.data_dir, download=data_cfg.download,
        ) > data_cfg.max_device_bytes
    data = input_pipeline.load_dataset(
        data_cfg.name, data_dir=data_cfg.data_dir, download=data_cfg.download,
        validation_size=validation_size, binarization=data_cfg.binarization,
        seed=data_cfg.seed, train_in_memory=not streaming,
    )
    return getattr(data, split), getattr(data, f"{split}_labels"), data


def binarize_once(levels_nhwc: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """float32 {0, 1}: each pixel drawn once from Bernoulli(level * scale) by a seeded numpy
    generator, so an evaluation of dynamically binarised data is repeatable and every example
    keeps its image whatever --max_examples is."""
    rng = np.random.default_rng(seed)
    probability = levels_nhwc.astype(np.float32) * np.float32(scale)
    return (rng.random(levels_nhwc.shape, dtype=np.float32) < probability).astype(np.float32)


def dequantize_once(levels_nhwc: np.ndarray, num_levels: int, seed: int) -> np.ndarray:
    """float32 y = (k + u) / num_levels, one `input_pipeline.uniform_dequantize` draw per image
    with example n's u from `fold_in(key(seed), n)`, so an evaluation of a dequantised run is
    repeatable and every example keeps its y whatever --max_examples is."""
    keys_n = losses.per_example_keys(jax.random.key(seed), jnp.arange(len(levels_nhwc)))
    draw = jax.jit(jax.vmap(input_pipeline.uniform_dequantize, in_axes=(0, 0, None)),
                   static_argnums=2)
    return np.asarray(draw(keys_n, levels_nhwc, num_levels))


PARAMETERS = ("auto", "ema", "iterate")


def scored_parameters(config, parameters: str = "auto") -> str:
    """Which parameters of a checkpoint an evaluation scores: "ema" or "iterate". `parameters`
    "auto" picks the EMA when the run kept one (config.optim.ema_decay > 0), as validation
    did; "iterate" the optimiser's own parameters of any run (the same checkpoint without the
    average, a control for what the EMA adds); "ema" insists on the average. Raises ValueError
    for "ema" on a run that kept none, or an unknown name."""
    if parameters not in PARAMETERS:
        raise ValueError(f"parameters must be one of {PARAMETERS}; got {parameters!r}")
    kept_ema = config.optim.ema_decay > 0
    if parameters == "ema" and not kept_ema:
        raise ValueError("parameters='ema': this run kept no EMA of its parameters "
                         "(optim.ema_decay = 0); score its iterate ('auto' or 'iterate')")
    if parameters == "auto":
        return "ema" if kept_ema else "iterate"
    return parameters


def restore_eval_params(config, workdir, vae, image_shape, *, step=None, best=False,
                        parameters: str = "auto"):
    """(params, step) of a checkpoint in `workdir/checkpoints` (with `best`, the best one on
    validation in `workdir/best/checkpoints`, kept by `run.keep_best`), on one device: its EMA
    parameters when the run kept them (config.optim.ema_decay > 0), else its parameters;
    `parameters` "iterate" or "ema" asks for one of them (`scored_parameters`).

    `step` None restores the newest intact checkpoint, an int exactly that step's, each
    verified against its checksums (`workdir_lib.Checkpoints.restore`). A reader: corrupt
    checkpoints are skipped with a warning but never moved, and no directory is created.
    Raises FileNotFoundError when there is no checkpoint, `workdir_lib.CheckpointNotFound`
    (a FileNotFoundError naming the steps there are) when there is none of `step`, and
    `workdir_lib.CheckpointRestoreError` when the checkpoint cannot be restored.
    """
    scored = scored_parameters(config, parameters)
    workdir = pathlib.Path(workdir)
    directory = workdir / "best" / "checkpoints" if best else workdir / "checkpoints"
    missing = FileNotFoundError(
        f"no checkpoint in {directory}: the run kept no best checkpoint (run.keep_best or "
        "run.early_stopping_patience)" if best else
        f"no checkpoint in {directory}: train first (python -m vae_jax.main --workdir {workdir})"
    )
    if not directory.is_dir():
        raise missing
    checkpoints = workdir_lib.Checkpoints(directory, keep=config.run.keep_checkpoints)
    try:
        if not checkpoints.steps():
            raise missing
        # Only the structure is needed: shapes from eval_shape, placed on one device.
        abstract = jax.eval_shape(functools.partial(
            optim.init_state, vae=vae, image_shape=image_shape,
            # Only the optimiser state's structure matters here, not the schedule's epochs.
            optimizer=optim.make_optimizer(config, steps_per_epoch=1),
            ema=config.optim.ema_decay > 0,
            objective_params=objectives.init_objective_params(
                objectives.Settings.from_config(config.objective), jax.random.key(1), vae),
        ), jax.random.key(0))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)
        restored = checkpoints.restore(abstract, step, move_corrupt=False)
    finally:
        checkpoints.close()
    state = restored.state
    return (state.ema_params if scored == "ema" else state.params), int(restored.step)


NLL_PROGRESS = "nll_progress.npz"
PROGRESS_EVERY_S = 60.0


@dataclasses.dataclass
class BatchProgress:
    """The outputs (one array [n, ...]) of the batches `run_in_batches` has finished, kept in
    `path`, an .npz with the `identity` they were computed under (a digest of everything they
    depend on: `nll_identity`), so that an interrupted run continues after them when it is
    run again with the same identity. A file of another identity, or an unreadable one, is
    ignored and replaced at the next save.

    Saves (atomic) come at most every `every_s` seconds and after the last batch, each inside
    `lock()` when given; a save that meets `workdir_lib.WorkdirLocked` (a training run took
    the workdir) is skipped, and one that cannot write (OSError: a read-only directory) turns
    the saving off with a warning: the numbers are computed either way."""

    path: pathlib.Path | None  # None: saving turned off
    identity: str
    every_s: float = PROGRESS_EVERY_S
    lock: Callable[[], contextlib.AbstractContextManager] | None = None
    _saved_at: float = dataclasses.field(default_factory=time.monotonic)

    def load(self) -> np.ndarray | None:
        try:
            with np.load(self.path) as saved:
                if str(saved["identity"]) == self.identity:
                    return saved["done"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # absent or unreadable: computed again
        return None

    def save(self, done: np.ndarray, *, last: bool = False) -> None:
        if self.path is None or (not last and time.monotonic() - self._saved_at < self.every_s):
            return
        try:
            with self.lock() if self.lock else contextlib.nullcontext():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_per_example(self.path, {"identity": np.asarray(self.identity),
                                              "done": done})
        except workdir_lib.WorkdirLocked:
            return  # nothing is written beside a training run
        except OSError as err:
            warnings.warn(f"cannot keep the evaluation's progress in {self.path} ({err}); an "
                          "interrupted evaluation will start over", stacklevel=2)
            self.path = None
        self._saved_at = time.monotonic()


def run_in_batches(program, params, x_nhwc, key, mesh, *, batch_size: int,
                   progress: BatchProgress | None = None):
    """Runs `program(params, x, key, example_ids)` (per-example outputs, split along "batch")
    over every row of x_nhwc [N, ...] in global batches of `batch_size`, with example_ids the
    rows' positions in x_nhwc. The last batch is padded with zero rows (valid data for every
    likelihood) whose outputs are dropped. Returns the outputs as numpy arrays [N, ...].

    With `progress` (a program with one output array), the batches it holds are not run
    again, and the finished ones are saved into it as they come."""
    n = len(x_nhwc)
    outputs = []
    done = None if progress is None else progress.load()
    if done is not None:
        outputs.append(done)
    for start in range(0 if done is None else len(done), n, batch_size):
        x_batch = x_nhwc[start : start + batch_size]
        valid = len(x_batch)
        if valid < batch_size:
            padding = np.zeros((batch_size - valid,) + x_batch.shape[1:], x_batch.dtype)
            x_batch = np.concatenate([x_batch, padding])
        example_ids = np.arange(start, start + batch_size, dtype=np.int32)
        out = program(params, parallel.shard_rows(x_batch, mesh), key,
                      parallel.shard_rows(example_ids, mesh))
        outputs.append(jax.tree.map(lambda a, v=valid: np.asarray(a)[:v], out))
        if progress is not None:
            outputs = [np.concatenate(outputs)]
            progress.save(outputs[0], last=start + batch_size >= n)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def nll_identity(config, params, x_nhwc, key, *, num_samples: int, chunk_size: int,
                 batch_size: int, num_devices: int) -> str:
    """SHA-256 of everything the NLL pass's numbers depend on: the model (config, and the
    parameters' bytes), the data (`data_fingerprint`), the key, K, the chunk and batch sizes,
    the device count, the CPU fast paths and the JAX version."""
    digest = hashlib.sha256(json.dumps({
        "model": config.model.to_dict(), "cpu_fast_paths": config.run.cpu_fast_paths,
        "num_samples": num_samples, "chunk_size": chunk_size, "batch_size": batch_size,
        "num_devices": num_devices, "jax": jax.__version__,
        "data": data_fingerprint(x_nhwc)}, sort_keys=True, default=str).encode())
    for leaf in jax.tree.leaves((params, jax.random.key_data(key))):
        leaf = np.asarray(leaf)
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _finite(value) -> bool:
    return bool(np.all(np.isfinite(np.asarray(value, np.float64))))


def _inside(path: pathlib.Path, directory: pathlib.Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def _refuse_if_in_use(workdir: pathlib.Path) -> None:
    """Raises `workdir_lib.WorkdirLocked` at once when another process (a training run) holds
    the workdir, rather than after the evaluation; the lock is taken again for the writing.
    A workdir where the lock file cannot be written (read-only) is not refused here: its
    numbers are still computed and reported, and writing there fails later."""
    with contextlib.suppress(OSError):
        with workdir_lib.WorkdirLock(workdir, purpose="evaluation"):
            pass


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What `compute_evaluation` computed: the model, the data and the per-example numbers."""

    config: ml_collections.ConfigDict
    vae: model_lib.VAE
    params: dict  # on one device
    step: int  # of the checkpoint
    split: str
    x_nhwc: np.ndarray  # the evaluated data, as the model saw them
    labels: np.ndarray | None
    num_levels: int
    parameters: str  # which ones were scored: "ema" or "iterate" (`scored_parameters`)
    log_px_n: np.ndarray  # [N] importance-sampled log p(x), nats
    per_example: dict  # `per_example_metrics` of every example, numpy [N, ...]
    mutual_information_nats: float | None  # where q(z | x) is one diagonal Gaussian layer
    iwae_ks: tuple
    num_importance_samples: int
    seed: int
    binarization_seed: int
    dequantization_seed: int
    plot_key: jax.Array


def representation_function(vae: model_lib.VAE, params, scale: float, *,
                            batch_size: int = 500) -> Callable:
    """images uint8 [N, H, W, C] (levels) -> codes [N, Z_1] float64: `VAE.point` of
    q(z_1 | x) (the posterior mean of a Gaussian) at x = levels * scale, in batches of at most
    `batch_size`; what the disentanglement metrics score."""
    point = jax.jit(functools.partial(vae.point, params))

    def represent(images_nhwc):
        x_nhwc = np.asarray(images_nhwc, np.float32) * np.float32(scale)
        codes = [np.asarray(point(x_nhwc[i:i + batch_size]), np.float64)
                 for i in range(0, len(x_nhwc), batch_size)]
        return np.concatenate(codes)

    return represent


def compute_disentanglement(evaluation: "Evaluation", *, num_train: int = 10_000,
                            num_eval: int = 5_000, seed: int = 0) -> dict:
    """Every metric of `vae_jax.disentanglement` for the evaluated model on its ground-truth
    data (`ground_truth.make_ground_truth(config.data.name)`), and the factor each code
    dimension captures best.

    disentanglement_lib's protocol: `num_train` sampled points for MIG, modularity, SAP, DCI,
    BetaVAE and FactorVAE training and FactorVAE's variance estimate; `num_eval` for the
    held-out parts (num_test) and BetaVAE / FactorVAE evaluation (defaults 10,000 and 5,000 as
    there); batches of 64; codes are `representation_function`'s posterior means of the
    images' intensities; the sampling comes from numpy's Generator(`seed`).

    Returns:
      {"metrics": {name: float} (`disentanglement.compute_all`), "codes": [{"dim", "factor",
      "score"}] per z_1 dimension (`disentanglement.factor_of_each_code` on the training
      points), "factor_names", "num_train", "num_eval", "seed"}.
    """
    config = evaluation.config
    data = ground_truth.make_ground_truth(config.data.name, data_dir=config.data.data_dir,
                                          download=config.data.download)
    represent = representation_function(evaluation.vae, evaluation.params,
                                         1.0 / (data.num_levels - 1))
    metrics = disentanglement.compute_all(
        data, represent, np.random.default_rng(seed), num_train=num_train, num_test=num_eval,
        num_eval=num_eval, num_variance_estimate=num_train)
    codes_nd, factors_nf = disentanglement.sample_codes(
        data, represent, num_train, np.random.default_rng(seed + 1))
    factor_d, score_d = disentanglement.factor_of_each_code(codes_nd, factors_nf)
    return {
        "metrics": metrics,
        "codes": [{"dim": d, "factor": data.factor_names[int(f)], "score": float(score)}
                  for d, (f, score) in enumerate(zip(factor_d, score_d))],
        "factor_names": list(data.factor_names),
        "num_train": int(num_train), "num_eval": int(num_eval), "seed": int(seed),
    }


def evaluate_workdir(
    workdir,
    *,
    num_importance_samples: int = 5000,
    chunk_size: int = 100,
    split: str = "test",
    max_examples: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    binarization_seed: int = 0,
    dequantization_seed: int = 0,
    iwae_ks=IWAE_KS,
    devices=None,
    write_plots: bool = True,
    step: int | None = None,
    best: bool = False,
    parameters: str = "auto",
    out_dir=None,
    report: Callable[[dict], None] | None = None,
    disentanglement: bool = False,
    disentanglement_num_train: int = 10_000,
    disentanglement_num_eval: int = 5_000,
) -> dict:
    """Evaluates a checkpoint of a training run and writes `eval.json` (into `out_dir`).

    Reads `workdir/config.json`, loads `split` with the training run's data arguments,
    restores the checkpoint of `step` (default: the latest; with `best`, the best one on
    validation that `run.keep_best` kept, recorded in eval.json as `best_checkpoint`;
    `restore_eval_params`; EMA parameters when the run kept them, or as `parameters` asks:
    `scored_parameters`), and computes on every
    device of `devices` (default: all):

      nll_nats (+ stderr, bits_per_dim)  -log p(x) by importance sampling with K =
                                         `num_importance_samples` (`make_nll_program`)
      iwae_bounds {"1", "5", "50"}       mean IWAE-k bounds L_k with common random numbers
      elbo_nats, recon_nats, kl_nats     the ELBO with one z draw: the closed-form KL where the
                                         model has one, else its Monte Carlo estimate (both
                                         from `per_example_metrics`)
      latent diagnostics                 active units and mean_variance_per_dim over the
                                         point summaries of every layer (latent_dim = sum of
                                         `latent_dims`); kl_per_dim where the KL has
                                         per-dimension terms, mutual_information_nats for one
                                         diagonal layer, otherwise a `*_note` saying why not

    Dynamically binarised data are binarised once from `binarization_seed` (recorded). A run
    trained on dequantised data (config `data.dequantize`) is evaluated on one dequantisation
    y = (k + u) / L of every image from `dequantization_seed` (`dequantize_once`; recorded),
    and its log-densities of y are reported as bounds for the L-level data
    (`losses.dequantized_log_mass_bound`): nll_nats, elbo_nats and iwae_bounds are the
    density's values minus D log L, recon_nats plus D log L (recorded as
    `dequantization_offset_nats`), so bits_per_dim = -E log p(y) / (D ln 2) + log2 L, an upper
    bound on the bits/dim of the levels (Theis et al. 2016). The NLL, IWAE and ELBO noise come
    from `seed`. Single-process only. `wall_time_s` is the seconds from the start to the
    numbers (restoring, compiling and computing; the pictures are not counted).

    Output: `report(result)`, when given, is called with the numbers before anything is
    written, so they survive a directory that cannot be written (e.g. a read-only workdir).
    Then `out_dir` (default: the workdir; created if missing) receives eval.json,
    per_example.npz (each example's `nll_nats` and `elbo_nats`, `reported_per_example`: what
    `compare_evaluations` pairs; eval.json's `data_sha256` names the images) and, with
    `write_plots`, the pictures in `plots/` (see `save_plots`). eval.json is written first, so
    the numbers also survive a plotting error; written elsewhere than the workdir, it records
    the workdir it evaluated (`workdir`). A failed write raises OSError naming the directory.
    While the NLL pass runs, `out_dir` keeps its finished batches (`NLL_PROGRESS`, removed
    when eval.json is written), so a rerun with the same arguments after an interruption
    continues after them (`compute_evaluation`'s `progress_dir`).

    An `out_dir` inside the workdir is written holding `workdir_lib.WorkdirLock(workdir,
    purpose="evaluation")`, so an evaluation never writes beside a training run: one that
    holds the workdir raises `workdir_lib.WorkdirLocked` at once (before the computation),
    and again at the writing if one has started meanwhile. Reading the checkpoints needs no
    lock.

    With `disentanglement`, for a run trained on a data set with known factors ("sprites",
    "dsprites", "shapes3d", "smallnorb"), every disentanglement metric too
    (`compute_disentanglement` with `disentanglement_num_train` / `_num_eval` points and the
    seed `seed`): their values go into eval.json under "disentanglement", everything
    (with the factor each code dimension captures) into disentanglement.json, and the
    traversal rows are labelled with those factors.

    Three steps: `compute_evaluation` (the per-example numbers), `summarise_evaluation` (the
    dict of eval.json) and `write_evaluation`, with `report` between the last two; the CPU
    fast paths are switched as the run had them (`run.cpu_fast_paths`, `fastpath.switched`).

    Returns:
      the dict written to eval.json (every number finite).
    """
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation'; got {split!r}")
    if num_importance_samples < 1 or chunk_size < 1:
        raise ValueError(f"num_samples={num_importance_samples} and chunk_size={chunk_size} "
                         "must both be positive")
    if best and step is not None:
        raise ValueError(f"best=True and step={step}: the best checkpoint is the one step "
                         "best/best.json names; ask for one or the other")
    if disentanglement and min(disentanglement_num_train, disentanglement_num_eval) < 2:
        raise ValueError(f"disentanglement_num_train={disentanglement_num_train} and "
                         f"disentanglement_num_eval={disentanglement_num_eval} must be >= 2")
    workdir = pathlib.Path(workdir)
    out_dir = workdir if out_dir is None else pathlib.Path(out_dir)
    config = load_run_config(workdir)
    scored_parameters(config, parameters)  # a bad name or a missing EMA, before anything runs
    if disentanglement and config.data.name not in ground_truth.GROUND_TRUTH_NAMES:
        raise ValueError(
            f"--disentanglement needs a run trained on data with known factors (one of "
            f"{', '.join(ground_truth.GROUND_TRUTH_NAMES)}); {workdir} trained on "
            f"{config.data.name!r}")
    if _inside(out_dir, workdir):
        _refuse_if_in_use(workdir)
    started = time.monotonic()
    lock = ((lambda: workdir_lib.WorkdirLock(workdir, purpose="evaluation"))
            if _inside(out_dir, workdir) else None)
    with fastpath.switched(config.run.cpu_fast_paths):
        evaluation = compute_evaluation(
            workdir, config, num_importance_samples=num_importance_samples,
            chunk_size=chunk_size, split=split, max_examples=max_examples,
            batch_size=batch_size, seed=seed, binarization_seed=binarization_seed,
            dequantization_seed=dequantization_seed, iwae_ks=iwae_ks, devices=devices,
            step=step, best=best, parameters=parameters, progress_dir=out_dir,
            progress_lock=lock)
        result = summarise_evaluation(evaluation)
        if best:
            result["best_checkpoint"] = json.loads((workdir / "best" / "best.json").read_text())
        scores = None
        if disentanglement:
            scores = compute_disentanglement(evaluation, num_train=disentanglement_num_train,
                                             num_eval=disentanglement_num_eval, seed=seed)
            result["disentanglement"] = scores["metrics"]
        if out_dir.absolute() != workdir.absolute():
            result["workdir"] = str(workdir.absolute())
        result["wall_time_s"] = round(time.monotonic() - started, 1)  # before the plots
        if report is not None:
            report(result)
        return write_evaluation(evaluation, result, out_dir, workdir=workdir,
                                write_plots=write_plots, disentanglement_scores=scores)


def compute_evaluation(
    workdir,
    config: ml_collections.ConfigDict | None = None,
    *,
    num_importance_samples: int = 5000,
    chunk_size: int = 100,
    split: str = "test",
    max_examples: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    binarization_seed: int = 0,
    dequantization_seed: int = 0,
    iwae_ks=IWAE_KS,
    devices=None,
    step: int | None = None,
    best: bool = False,
    parameters: str = "auto",
    progress_dir=None,
    progress_lock: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Evaluation:
    """The per-example numbers of `evaluate_workdir` (see there for the arguments), computed
    on every device of `devices`. `config` defaults to the run's. Nothing is written, except
    with `progress_dir`: there the NLL pass keeps its finished batches (`NLL_PROGRESS`, a
    `BatchProgress` saved inside `progress_lock()`), and a rerun with the same arguments
    continues after them."""
    workdir = pathlib.Path(workdir)
    config = load_run_config(workdir) if config is None else config
    if jax.process_count() > 1:
        raise NotImplementedError("the evaluation command runs in a single process")
    levels, labels, data = _load_split(config, split)
    if config.data.binarization == "dynamic":
        x_nhwc = binarize_once(levels, data.scale, binarization_seed)
    elif config.data.dequantize:
        x_nhwc = dequantize_once(levels, data.num_levels, dequantization_seed)
    else:
        x_nhwc = levels.astype(np.float32) * np.float32(data.scale)
    if max_examples is not None:
        x_nhwc = x_nhwc[:max_examples]
        labels = None if labels is None else labels[:max_examples]
    if len(x_nhwc) < 2:
        raise ValueError(f"the {split} split has {len(x_nhwc)} examples (after max_examples="
                         f"{max_examples}); the evaluation needs at least 2")
    vae = model_lib.build_model(config.model, data.image_shape, num_levels=data.num_levels)
    vae.likelihood.check_support(x_nhwc)
    scored = scored_parameters(config, parameters)
    params, step = restore_eval_params(config, workdir, vae, data.image_shape, step=step,
                                       best=best, parameters=scored)

    mesh = parallel.make_mesh(devices)
    num_devices = mesh.devices.size
    if batch_size is None:
        batch_size = -(-config.run.eval_batch_size // num_devices) * num_devices
    parallel.check_batch_divisible(batch_size, num_devices)
    nll_key, metrics_key, diag_key, plot_key = jax.random.split(jax.random.key(seed), 4)
    replicated_params = parallel.replicate(params, mesh)

    def run(program, key, progress=None):
        return run_in_batches(program, replicated_params, x_nhwc, parallel.replicate(key, mesh),
                              mesh, batch_size=batch_size, progress=progress)

    options = parallel.compiler_options(convolutional=vae.convolutional)
    progress = None
    if progress_dir is not None:
        identity = nll_identity(config, params, x_nhwc, nll_key,
                                num_samples=num_importance_samples, chunk_size=chunk_size,
                                batch_size=batch_size, num_devices=num_devices)
        progress = BatchProgress(pathlib.Path(progress_dir) / NLL_PROGRESS, identity,
                                 every_s=PROGRESS_EVERY_S, lock=progress_lock)
    log_px_n = run(make_nll_program(mesh, vae, num_samples=num_importance_samples,
                                    chunk_size=chunk_size, compiler_options=options), nll_key,
                   progress)
    per_example = run(make_per_example_program(functools.partial(
        per_example_metrics, vae, iwae_ks=tuple(iwae_ks)), mesh,
        compiler_options=options), metrics_key)
    # The mutual information where q(z | x) is one diagonal Gaussian layer (its estimator
    # needs the closed-form posterior density).
    mutual_information_nats = None
    if vae.num_layers == 1 and vae.posterior.name == "diagonal":
        mutual_information_nats = float(jax.jit(latent_diagnostics)(
            jnp.asarray(per_example["mean"]), jnp.asarray(per_example["logvar"]),
            diag_key)["mutual_information_nats"])
    return Evaluation(
        config=config, vae=vae, params=params, step=step, split=split, x_nhwc=x_nhwc,
        labels=labels, num_levels=data.num_levels, parameters=scored, log_px_n=log_px_n,
        per_example=per_example,
        mutual_information_nats=mutual_information_nats, iwae_ks=tuple(iwae_ks),
        num_importance_samples=int(num_importance_samples), seed=int(seed),
        binarization_seed=int(binarization_seed), dequantization_seed=int(dequantization_seed),
        plot_key=plot_key)


def _latent_mean_diagnostics(evaluation: Evaluation) -> dict:
    """Active units from the posterior's point summaries of every layer; the KL per dimension
    where the model has it in closed form."""
    per_example = evaluation.per_example
    return latent_mean_diagnostics(per_example["point"], per_example.get("kl_per_dim"))


def summarise_evaluation(evaluation: Evaluation) -> dict:
    """The dict of eval.json from an `Evaluation` (see `evaluate_workdir`); a number that is
    not defined for the model is absent, with a note saying why. Raises FloatingPointError
    when a number is not finite."""
    config, vae, per_example = evaluation.config, evaluation.vae, evaluation.per_example
    num_examples = len(evaluation.x_nhwc)
    num_dims = math.prod(evaluation.x_nhwc.shape[1:])
    iwae = {str(k): float(np.mean(per_example["iwae"][:, i], dtype=np.float64))
            for i, k in enumerate(evaluation.iwae_ks)}
    diagnostics = _latent_mean_diagnostics(evaluation)
    dequantize = config.data.dequantize
    reported = reported_per_example(evaluation)
    result = {
        **nll_summary(-reported["nll_nats"], num_dims=num_dims),
        "elbo_nats": float(np.mean(reported["elbo_nats"])),
        "elbo_stderr_nats": float(np.std(reported["elbo_nats"], ddof=1)
                                  / math.sqrt(num_examples)),
        "recon_nats": float(np.mean(per_example["recon"], dtype=np.float64)),
        "kl_nats": float(np.mean(per_example["kl"], dtype=np.float64)),
        "iwae_bounds": iwae,
        "mean_variance_per_dim": [float(v) for v in diagnostics["mean_variance_per_dim"]],
        "active_units": int(diagnostics["active_units"]),
        "latent_dim": int(sum(vae.latent_dims)),
        "latent_dims": list(vae.latent_dims),
        "num_importance_samples": evaluation.num_importance_samples,
        "split": evaluation.split,
        "checkpoint_step": evaluation.step,
        # Which parameters of the checkpoint were scored (`restore_eval_params`).
        "parameters": evaluation.parameters,
        "seed": evaluation.seed,
        # Which images, in which order: `compare_evaluations` pairs only equal fingerprints.
        "data_sha256": data_fingerprint(evaluation.x_nhwc),
        "likelihood": config.model.likelihood,
        "prior": config.model.prior,
        "posterior": config.model.posterior,
    }
    # Numbers that are not defined for this model are absent, with the reason, not printed wrong.
    if diagnostics["kl_per_dim"] is not None:
        result["kl_per_dim"] = [float(v) for v in diagnostics["kl_per_dim"]]
    else:
        result["kl_per_dim_note"] = (
            "not defined: the KL of this model has no closed-form per-dimension terms "
            f"(posterior {vae.posterior.name!r}, prior {vae.prior.name!r}, "
            f"{vae.num_layers} layer(s)); kl_nats is its Monte Carlo estimate")
    if evaluation.mutual_information_nats is not None:
        result["mutual_information_nats"] = evaluation.mutual_information_nats
    else:
        result["mutual_information_note"] = (
            "not computed: the estimator needs q(z | x) as one diagonal Gaussian layer")
    if likelihoods.is_grey_level_bernoulli(
            config.model.likelihood, binarized=config.data.binarization != "none",
            num_levels=evaluation.num_levels):
        result["normalised_likelihood"] = 0.0
    if evaluation.parameters == "ema":
        result["ema_decay"] = float(config.optim.ema_decay)
    if config.data.binarization == "dynamic":
        result["binarization_seed"] = evaluation.binarization_seed
    if dequantize:
        # The same bound as the NLL's (bin volume L^-D) for the ELBO and the IWAE bounds.
        offset_nats = num_dims * math.log(evaluation.num_levels)
        iwae = {k: v - offset_nats for k, v in iwae.items()}
        result.update(
            recon_nats=result["recon_nats"] + offset_nats,
            iwae_bounds=iwae,
            dequantization_seed=evaluation.dequantization_seed,
            dequantization_offset_nats=offset_nats,
        )
    numbers = {k: v for k, v in result.items() if not isinstance(v, str)}
    numbers["iwae_bounds"] = list(iwae.values())
    bad = sorted(k for k, v in numbers.items() if not _finite(v))
    if bad:
        raise FloatingPointError(f"non-finite evaluation results: {bad}")
    return result


def write_evaluation(evaluation: Evaluation, result: dict, out_dir, *, workdir,
                     write_plots: bool = True, disentanglement_scores: dict | None = None
                     ) -> dict:
    """Writes `result` as eval.json into `out_dir` (created if missing) with
    per_example.npz, removes the NLL pass's progress there (`NLL_PROGRESS`), writes the
    `disentanglement_scores` (`compute_disentanglement`), when given, as disentanglement.json
    and, with `write_plots`, the pictures into `out_dir/plots` (`save_plots`), then eval.json
    again with their paths; returns `result`. eval.json is written first, so the numbers survive a
    plotting error. Inside the workdir, it writes holding the workdir's lock (`evaluate_workdir`
    says why). A failed write raises OSError naming the directory."""
    out_dir, workdir = pathlib.Path(out_dir), pathlib.Path(workdir)
    vae = evaluation.vae
    diagnostics = _latent_mean_diagnostics(evaluation)
    # The pictures decode the decoder's input (z_1, or every layer top-down): its KL per
    # dimension (else the variance of its point summary over the data) orders the traversals.
    decoder_dim = vae.decoder_input_dim
    order_by = (diagnostics["kl_per_dim"] if diagnostics["kl_per_dim"] is not None
                else diagnostics["mean_variance_per_dim"])
    decoder_kl_per_dim = np.asarray(order_by)[:decoder_dim]
    lock = (workdir_lib.WorkdirLock(workdir, purpose="evaluation")
            if _inside(out_dir, workdir) else contextlib.nullcontext())
    try:
        with lock:
            out_dir.mkdir(parents=True, exist_ok=True)
            workdir_lib.write_json(out_dir / EVAL_JSON, result)  # survives a plotting error
            write_per_example(out_dir / PER_EXAMPLE_NPZ, reported_per_example(evaluation))
            (out_dir / NLL_PROGRESS).unlink(missing_ok=True)  # the numbers are written now
            factors = None
            if disentanglement_scores is not None:
                workdir_lib.write_json(out_dir / DISENTANGLEMENT_JSON, disentanglement_scores)
                factors = [f"{c['factor']} {c['score']:.2f}"
                           for c in disentanglement_scores["codes"]]
            if write_plots:
                result["plots"] = sorted(str(p.relative_to(out_dir)) for p in save_plots(
                    out_dir / PLOTS_DIR, vae, evaluation.params, evaluation.x_nhwc,
                    evaluation.plot_key, kl_per_dim=decoder_kl_per_dim,
                    mean_nz=evaluation.per_example["point"][:, :decoder_dim],
                    labels=evaluation.labels, workdir=workdir, factors=factors))
                workdir_lib.write_json(out_dir / EVAL_JSON, result)
    except OSError as err:
        raise type(err)(f"could not write the evaluation into {out_dir} ({err}); choose "
                        "another directory with out_dir (--out)") from err
    return result


def reported_per_example(evaluation: Evaluation) -> dict:
    """The per-example numbers whose means eval.json reports, float64 [N] in the split's order:
    `nll_nats` (-log p(x), importance-sampled) and `elbo_nats`; for a run trained on dequantised
    data, both as bounds on the levels (shifted by D log L, as in `summarise_evaluation`)."""
    log_px_n = np.asarray(evaluation.log_px_n, np.float64)
    elbo_n = np.asarray(evaluation.per_example["elbo"], np.float64)
    if evaluation.config.data.dequantize:
        num_dims = math.prod(evaluation.x_nhwc.shape[1:])
        log_px_n = losses.dequantized_log_mass_bound(log_px_n, num_dims, evaluation.num_levels)
        elbo_n = losses.dequantized_log_mass_bound(elbo_n, num_dims, evaluation.num_levels)
    return {"nll_nats": -log_px_n, "elbo_nats": elbo_n}


def data_fingerprint(x_nhwc: np.ndarray) -> str:
    """SHA-256 of the evaluated data as the model saw them (float32, C order, with the shape):
    equal only for the same images, binarised alike, in the same order."""
    x_nhwc = np.ascontiguousarray(x_nhwc, dtype=np.float32)
    digest = hashlib.sha256(str(x_nhwc.shape).encode())
    digest.update(x_nhwc.tobytes())
    return digest.hexdigest()


def write_per_example(path: pathlib.Path, arrays: dict) -> None:
    """Writes `arrays` as an .npz atomically (a crash never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def paired_difference(a_n, b_n) -> dict:
    """Mean difference of two evaluations of the same N examples, with its paired standard error.

        d_n = a_n - b_n,   difference = mean_n(d_n),   stderr = std_n(d_n, ddof=1) / sqrt(N)

    The paired error counts what the two rows share: stderr^2 = se_a^2 + se_b^2 - 2 cov(a, b) / N.
    Per-example NLLs of two models on one test set are strongly correlated (a hard digit is hard
    for both), so it is much smaller than the unpaired sqrt(se_a^2 + se_b^2), which is returned
    as `unpaired_stderr` for contrast. Float64, host side.

    Args:
      a_n, b_n: per-example values [N] (e.g. `nll_nats` of `reported_per_example`), N >= 2.

    Returns:
      dict of floats: difference, stderr, unpaired_stderr, correlation; and num_examples.
    """
    a_n, b_n = np.asarray(a_n, np.float64), np.asarray(b_n, np.float64)
    if a_n.ndim != 1 or a_n.shape != b_n.shape or len(a_n) < 2:
        raise ValueError(f"need two equal-length vectors of at least 2 examples; got shapes "
                         f"{a_n.shape} and {b_n.shape}")
    n = len(a_n)
    d_n = a_n - b_n
    return {
        "difference": float(np.mean(d_n)),
        "stderr": float(np.std(d_n, ddof=1) / math.sqrt(n)),
        "unpaired_stderr": float(math.sqrt((np.var(a_n, ddof=1) + np.var(b_n, ddof=1)) / n)),
        "correlation": float(np.corrcoef(a_n, b_n)[0, 1]),
        "num_examples": n,
    }


def load_evaluation(directory) -> tuple[dict, dict]:
    """(eval.json, per_example.npz arrays) of the directory an evaluation wrote into (a workdir,
    or its `--out`). Raises FileNotFoundError naming what is missing and how to get it."""
    directory = pathlib.Path(directory)
    eval_path, arrays_path = directory / EVAL_JSON, directory / PER_EXAMPLE_NPZ
    if not eval_path.is_file():
        raise FileNotFoundError(f"{eval_path} does not exist: evaluate the run first "
                                f"(python -m vae_jax.evaluate --workdir ...)")
    if not arrays_path.is_file():
        raise FileNotFoundError(
            f"{arrays_path} does not exist: {eval_path} was written before evaluations kept "
            f"their per-example numbers; evaluate again with the same flags (the same seeds "
            f"give the same numbers)")
    with np.load(arrays_path) as arrays:
        return json.loads(eval_path.read_text()), {k: arrays[k] for k in arrays.files}


def compare_evaluations(directory_a, directory_b) -> dict:
    """Row A minus row B, paired over the examples both evaluations scored: `paired_difference`
    of the NLL (`nll`) and of the ELBO (`elbo`), with each row's means. Refuses (ValueError,
    naming the field) two evaluations of different splits or different images
    (`data_sha256`: the test set binarised with another seed, or cut by --max_examples)."""
    eval_a, arrays_a = load_evaluation(directory_a)
    eval_b, arrays_b = load_evaluation(directory_b)
    for key in ("split", "num_examples", "data_sha256"):
        if eval_a.get(key) != eval_b.get(key):
            raise ValueError(f"{directory_a} and {directory_b} did not score the same examples: "
                             f"{key} {eval_a.get(key)!r} against {eval_b.get(key)!r}")
    return {
        "a": str(directory_a), "b": str(directory_b), "split": eval_a["split"],
        "nll_nats": [eval_a["nll_nats"], eval_b["nll_nats"]],
        "nll": paired_difference(arrays_a["nll_nats"], arrays_b["nll_nats"]),
        "elbo_nats": [eval_a["elbo_nats"], eval_b["elbo_nats"]],
        "elbo": paired_difference(arrays_a["elbo_nats"], arrays_b["elbo_nats"]),
    }


def save_plots(directory, vae, params, x_nhwc, key, *, kl_per_dim, mean_nz, labels=None,
               workdir=None, num_examples: int = 16, factors=None) -> list:
    """Writes every picture of `vae_jax.plots` for a model and an encoded split; returns paths.

    reconstructions, prior samples (from the model's actual prior, ancestrally for several
    layers: `VAE.sample_prior`), latent traversals (of example 0, dimensions by `kl_per_dim`
    descending), interpolation (examples 0 -> 1), the latent scatter coloured by label
    (Z >= 2), the 2-D manifold (Z = 2 under an N(0, I) prior), and the training curves when
    `workdir` holds metrics.jsonl. mean_nz [N, Z_1] are the posterior's point summaries of z_1,
    the decoder's input; `factors` [Z_1], if given, label the traversal rows (the factor each
    dimension captures). Traversals move each dimension by -3..3 around example 0's point:
    in prior standard deviations under one N(0, I) layer, otherwise in standard deviations of
    the points over the split (the prior's scale is not 1 then).
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    latent_dim = mean_nz.shape[-1]
    standard_normal_prior = vae.num_layers == 1 and vae.prior.name == "standard_normal"

    @jax.jit
    def decode(z_nz):
        return vae.likelihood.mean(vae.decode(params, z_nz))

    def decode_grid(z_rsz):
        images = np.asarray(decode(z_rsz.reshape(-1, latent_dim)))
        return images.reshape(z_rsz.shape[:2] + images.shape[1:])

    inputs = x_nhwc[:num_examples]
    z_inputs = jnp.asarray(mean_nz[:num_examples])
    order = np.argsort(-np.asarray(kl_per_dim), kind="stable")
    values = np.linspace(-3.0, 3.0, 11)
    scale_z = (np.ones(latent_dim) if standard_normal_prior
               else np.std(np.asarray(mean_nz, np.float64), axis=0) + 1e-6)
    z_prior = jax.jit(vae.sample_prior, static_argnums=2)(params, key, 64)
    paths = [
        plots.reconstructions(directory / "reconstructions.png", inputs,
                              np.asarray(decode(z_inputs))),
        plots.prior_samples(directory / "samples.png", np.asarray(decode(z_prior)), rows=8),
    ]
    # traversal_latents moves every dimension by the same values: scale each row's own.
    traversals = np.stack([np.asarray(traversal_latents(
        z_inputs[0], [d], (values * scale_z[d]).astype(np.float32)))[0] for d in order])
    paths.append(plots.latent_traversals(
        directory / "traversals.png", decode_grid(traversals), dims=order,
        kl_per_dim=np.asarray(kl_per_dim)[order],
        factors=None if factors is None else [factors[d] for d in order]))
    if len(inputs) >= 2:
        path = interpolation_latents(z_inputs[0], z_inputs[1], 10)
        paths.append(plots.interpolation(directory / "interpolation.png",
                                         np.asarray(decode(path)), start=inputs[0], end=inputs[1]))
    if latent_dim >= 2:
        dims = tuple(int(d) for d in order[:2])
        paths.append(plots.latent_scatter(directory / "latent_scatter.png",
                                          np.asarray(mean_nz)[:, dims], labels=labels, dims=dims))
    if latent_dim == 2 and standard_normal_prior:
        grid_ggz = manifold_latents(15)
        paths.append(plots.latent_manifold(directory / "manifold.png", decode_grid(grid_ggz)))
    if workdir is not None and (pathlib.Path(workdir) / "metrics.jsonl").is_file():
        workdir = pathlib.Path(workdir)
        eval_metrics = workdir / "eval_metrics.jsonl"
        paths.append(plots.training_curves(
            directory / "training_curves.png", workdir / "metrics.jsonl",
            eval_metrics if eval_metrics.is_file() else None))
    return [pathlib.Path(p) for p in paths]


def summary_lines(result: dict) -> list[str]:
    """The lines the command prints: the main numbers of an evaluation and its IWAE bounds."""
    keys = ("nll_nats", "nll_stderr_nats", "bits_per_dim", "elbo_nats", "active_units",
            "mutual_information_nats")
    bounds = result["iwae_bounds"]
    lines = [
        f"{result['split']} ({result['num_examples']} examples, step "
        f"{result['checkpoint_step']}): "
        + ", ".join(f"{k}={result[k]:.4g}" for k in keys if k in result),
        "iwae_bounds: " + ", ".join(f"L_{k}={v:.4g}" for k, v in bounds.items()),
    ]
    if "disentanglement" in result:
        lines.append("disentanglement: " + ", ".join(
            f"{k}={v:.4g}" for k, v in result["disentanglement"].items()))
    return lines


def _define_flags():
    """The command's flags, defined only when it runs (so importing this module never does)."""
    from absl import flags

    return dict(
        workdir=flags.DEFINE_string("workdir", None, "A training run's directory."),
        num_importance_samples=flags.DEFINE_integer(
            "num_importance_samples", 5000, "K importance samples per example for the NLL.",
            lower_bound=1),
        chunk_size=flags.DEFINE_integer(
            "chunk_size", 100, "The most importance samples per scan step (bounds memory; "
            "need not divide K).", lower_bound=1),
        split=flags.DEFINE_enum("split", "test", ["test", "validation"], "Split to evaluate."),
        max_examples=flags.DEFINE_integer("max_examples", None, "Evaluate the first N only."),
        batch_size=flags.DEFINE_integer(
            "batch_size", None, "Global batch (default: eval_batch_size rounded up to a "
            "multiple of the device count)."),
        seed=flags.DEFINE_integer("seed", 0, "Seed of the importance samples and z draws."),
        binarization_seed=flags.DEFINE_integer(
            "binarization_seed", 0, "Seed of the one binarisation of dynamically binarised data."),
        dequantization_seed=flags.DEFINE_integer(
            "dequantization_seed", 0,
            "Seed of the one dequantisation of the data of a run trained with data.dequantize."),
        step=flags.DEFINE_integer(
            "step", None, "Evaluate the checkpoint of this step (default: the latest).",
            lower_bound=0),
        parameters=flags.DEFINE_enum(
            "parameters", "auto", list(PARAMETERS), "Which parameters of the checkpoint to "
            "score: auto (the EMA when the run kept one, as validation did), iterate (the "
            "optimiser's own: a control for what the EMA adds), ema."),
        best=flags.DEFINE_bool(
            "best", False, "Evaluate the best checkpoint on validation (runs with "
            "run.keep_best or run.early_stopping_patience) instead of the latest."),
        out_dir=flags.DEFINE_string(
            "out", None, "Directory for eval.json and plots/ (default: the workdir)."),
        plots=flags.DEFINE_bool("plots", True, "Write pictures into <out>/plots/."),
        disentanglement=flags.DEFINE_bool(
            "disentanglement", False, "Also the disentanglement metrics (runs on sprites, "
            "dsprites, shapes3d, smallnorb): into eval.json and disentanglement.json."),
        disentanglement_num_train=flags.DEFINE_integer(
            "disentanglement_num_train", 10_000, "Points for the metrics' training parts "
            "(disentanglement_lib: 10,000).", lower_bound=2),
        disentanglement_num_eval=flags.DEFINE_integer(
            "disentanglement_num_eval", 5_000, "Points for their held-out parts "
            "(disentanglement_lib: 5,000).", lower_bound=2),
    )


def run() -> None:
    """Entry point: `python -m vae_jax.evaluate --workdir runs/x [...]`."""
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import app, flags, logging

    defined = _define_flags()
    flags.mark_flags_as_required(["workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        values = {name: flag.value for name, flag in defined.items()}
        workdir = values.pop("workdir")
        out_dir = pathlib.Path(values["out_dir"] or workdir)

        def report(result):  # before anything is written: the numbers outlive a failed write
            print("\n".join(summary_lines(result)), flush=True)

        try:
            evaluate_workdir(workdir, write_plots=values.pop("plots"), report=report, **values)
        # No run, checkpoint, step or data; an unreadable checkpoint; an unwritable directory;
        # a training run in the workdir.
        except (OSError, workdir_lib.CheckpointRestoreError, workdir_lib.WorkdirLocked) as err:
            sys.exit(f"error: {err}")
        print(f"written: {out_dir / EVAL_JSON}")

    app.run(main)


if __name__ == "__main__":
    run()
