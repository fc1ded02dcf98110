"""Training: the pure train step, its data-parallel mapping, and the loop.

Data flow of one run (all of it on the devices after start-up):

    dataset rows (uint8) ──split across devices──► rows_shard [N/D, H, W, C] per device
    epoch permutation (drawn on device, replicated) ─► global batch indices [B]
    gather_rows + psum_scatter ─► local batch [B/D, H, W, C] ─► scale / binarise ─► train_step
    train_step: value_and_grad(objective) ─► pmean(grads, "batch") ─► optax update ─► new state

`train_step` is a pure, undecorated function of one device's shard. `make_train_chunk` maps it
over the mesh with `jax.shard_map` and runs `steps_per_dispatch` steps inside one `lax.scan`, so a
small model pays Python dispatch once per chunk. Only the training loop reads the config.

`train_and_evaluate` is three parts: `set_up_run` (data, model, optimiser, programs' arguments;
nothing written yet), a batch feeder (`InMemoryFeeder` for a training set held on the devices,
`StreamFeeder` for one streamed from disk by tf.data; one interface, `advance`), and
`train_loop` (guards, logging, validation, pictures, checkpoints, signals), which does not know
which feeder it drives. The state and the optimiser live in `vae_jax.optim`, the CPU fast paths
in `vae_jax.fastpath` (switched by `config.run.cpu_fast_paths` for the whole run); their names
are re-exported here.

Randomness: one seed -> `jax.random.key(seed)` -> `init_key`, `train_key`, `eval_key`,
`data_key`. Step s uses `fold_in(train_key, s)`; epoch e's order is
`permutation(fold_in(data_key, e))`; latent noise and binarisation draw from per-example keys
folded with the example's position in the global batch. Nothing depends on the device count, so
1 device and 8 devices follow the same trajectory, and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vae_jax import fastpath, input_pipeline, likelihoods, losses, objectives, parallel
from vae_jax import model as model_lib
from vae_jax import workdir as workdir_lib

# The state, the optimiser and the fast forms moved to `optim` and `fastpath`; callers of
# `train.<name>` keep working.
from vae_jax.fastpath import global_norm, scale_by_adam  # noqa: F401
from vae_jax.optim import (  # noqa: F401
    BURDA_STAGES,
    OPTIMIZER_ARGS,
    TrainState,
    apply_finite_update,
    burda_schedule,
    burda_stage_epochs,
    eval_params,
    init_skip_state,
    init_state,
    make_lr_schedule,
    make_optimizer,
    optimizer_factory,
)

# --------------------------------------------------------------------------- construction


def make_model(config: ml_collections.ConfigDict, image_shape) -> model_lib.VAE:
    """The model `config.model` names (`model.build_model`)."""
    return model_lib.build_model(config.model, image_shape)


def make_kl_schedule(config: ml_collections.ConfigDict) -> Callable:
    """The KL weight beta(step) named by `config.objective.kl_schedule`, peaking at
    `config.objective.beta`."""
    o = config.objective
    name = o.kl_schedule
    if name == "constant":
        return losses.make_kl_schedule(name, value=o.beta)
    if name == "linear":
        return losses.make_kl_schedule(name, warmup_steps=o.kl_warmup_steps, end_value=o.beta)
    if name == "cyclical":
        return losses.make_kl_schedule(
            name,
            cycle_steps=o.kl_cycle_steps,
            ratio=o.kl_cycle_ratio,
            max_value=o.beta,
            num_cycles=o.kl_num_cycles or None,
        )
    return losses.make_kl_schedule(name)  # raises, listing the valid names


def objective_settings(config: ml_collections.ConfigDict, *, dataset_size: int = 0,
                       name: str | None = None) -> objectives.Settings:
    """`objectives.Settings` from `config.objective` (`name` overrides its name)."""
    return objectives.Settings.from_config(config.objective, dataset_size=dataset_size,
                                           name=name)


def initial_objective_params(config: ml_collections.ConfigDict, init_key, vae) -> dict:
    """The objective's own initial parameters (`objectives.init_objective_params`; {} for all
    but "factor_vae"), from a key folded out of `init_key`, so the model's are unchanged."""
    return objectives.init_objective_params(objective_settings(config),
                                            jax.random.fold_in(init_key, 1), vae)


def make_loss_fn(config: ml_collections.ConfigDict, vae: model_lib.VAE, *,
                 dataset_size: int = 0, objective: str | None = None) -> Callable:
    """The objective `config.objective.name` (or `objective`; evaluation asks for "elbo") bound
    to the model: `(params, x, key, *, step, beta, example_ids, axis_name) -> (loss, metrics)`."""
    return objectives.make_loss_fn(
        objective_settings(config, dataset_size=dataset_size, name=objective), vae)


def initial_output_bias(config: ml_collections.ConfigDict, data) -> np.ndarray | None:
    """The decoder's initial output bias named by `config.model.decoder_bias_init`, or None for
    zeros.

    "data_mean": `likelihoods.data_mean_output_bias` of the training split's per-pixel mean of
    `images * scale` (the validation split is not used). For dynamically binarised data this is
    the probability that each pixel is on, the mean of the binarised pixels.
    """
    name = config.model.decoder_bias_init
    if name not in losses.OUTPUT_BIAS_INITS:
        raise ValueError(
            f"unknown decoder_bias_init {name!r}; valid: {list(losses.OUTPUT_BIAS_INITS)}"
        )
    if name == "zeros":
        return None
    if len(data.train) == 0:
        raise ValueError(
            "decoder_bias_init='data_mean' needs the training set in memory; this data set is "
            "streamed (data.max_device_bytes): use decoder_bias_init='zeros'"
        )
    # A float64 reduction of the uint8 levels (no float copy of the set; the sums are exact).
    mean_hwc = data.train.mean(axis=0, dtype=np.float64) * data.scale
    return losses.data_mean_output_bias(config.model.likelihood, mean_hwc)


# --------------------------------------------------------------------------- pure steps


def preprocess(batch, key, *, scale: float, binarize: bool, example_ids,
               dequantize_levels: int = 0):
    """uint8 levels [b, H, W, C] -> float32 in [0, 1]: k * scale, dynamically binarised or
    uniformly dequantised if asked.

    Dynamic binarisation draws every pixel afresh from Bernoulli(intensity) at every step.
    With dequantize_levels = L > 0 the levels become y = (k + u) / L, u ~ U[0, 1) drawn afresh
    every step (`input_pipeline.uniform_dequantize`), instead of k * scale. Both draw from a
    per-example key, so the draw does not depend on the device layout.
    """
    if dequantize_levels:
        if binarize:
            raise ValueError("binarize and dequantize_levels exclude each other")
        keys_b = losses.per_example_keys(key, example_ids)
        dequantize = jax.vmap(input_pipeline.uniform_dequantize, in_axes=(0, 0, None))
        return dequantize(keys_b, batch, dequantize_levels)
    x = batch.astype(jnp.float32) * scale
    if binarize:
        keys_b = losses.per_example_keys(key, example_ids)
        x = jax.vmap(input_pipeline.dynamic_binarize)(keys_b, x)
    return x


def local_example_ids(local_batch: int, axis_name: str | None):
    """Global positions [b] of this device's examples in the global batch."""
    ids = jnp.arange(local_batch)
    if axis_name is not None:
        ids = ids + jax.lax.axis_index(axis_name) * local_batch
    return ids


def train_step(
    state: TrainState,
    batch,
    key,
    *,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    beta_schedule: Callable,
    lr_schedule: Callable,
    scale: float,
    binarize: bool,
    dequantize_levels: int = 0,
    ema_decay: float = 0.0,
    support: Callable | None = None,
    axis_name: str | None = None,
    scanned: bool = False,
):
    """One optimisation step on one device's shard of the batch.

    Args:
      state: the replicated `TrainState`.
      batch: [b, H, W, C] uint8 levels (b = B / D examples on this device).
      key: this step's key, `fold_in(train_key, step)`.
      loss_fn: `(params, x, key, *, beta, example_ids, axis_name) -> (loss, metrics)`.
      support: `x -> int32 count of elements outside the likelihood's support`
        (`losses.support_violations` bound to the likelihood), reported as the metric
        `support_violations` of the global batch (the intensities before dynamic binarisation
        are checked); the training loop stops the run when it is not 0.
      axis_name: the device axis; gradients and metrics are averaged over it with `pmean`.
      scanned: whether the step runs inside a `lax.scan` of several steps (picks the faster
        form of `apply_finite_update`).

    Returns:
      `(new_state, metrics)` with scalar metrics averaged over the global batch.
    """
    binarize_key, latent_key = fastpath.split(key)
    example_ids = local_example_ids(batch.shape[0], axis_name)
    x = preprocess(batch, binarize_key, scale=scale, binarize=binarize, example_ids=example_ids,
                   dequantize_levels=dequantize_levels)
    beta = beta_schedule(state.step)

    def objective(params):
        return loss_fn(params, x, latent_key, step=state.step, beta=beta,
                       example_ids=example_ids, axis_name=axis_name)

    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    metrics = {k: v for k, v in metrics.items() if k not in ("per_example", "kl_per_dim_nats")}
    if axis_name is not None and jax.lax.axis_size(axis_name) > 1:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
    grad_norm = fastpath.global_norm(grads)
    params, opt_state = apply_finite_update(optimizer, grads, state.params, state.opt_state,
                                            branch=scanned, grad_norm=grad_norm)
    ema_params = state.ema_params
    if ema_params is not None:
        new_ema = optax.incremental_update(params, ema_params, 1.0 - ema_decay)
        ema_params = jax.tree.map(
            lambda new, old: jnp.where(opt_state.last_finite, new, old), new_ema, ema_params
        )
    if support is not None:
        violations = support(batch.astype(jnp.float32) * scale if binarize else x)
        if axis_name is not None:
            violations = jax.lax.psum(violations, axis_name)
        metrics["support_violations"] = violations
    metrics.update(
        beta=jnp.asarray(beta, jnp.float32),
        learning_rate=jnp.asarray(lr_schedule(state.step), jnp.float32),
        grad_norm=grad_norm,
        skipped_updates=opt_state.total_notfinite,
        consecutive_skips=opt_state.notfinite_count,
    )
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
    )
    return new_state, metrics


def eval_step(params, batch, mask, key, *, loss_fn, scale, binarize, dequantize_levels=0,
              support=None, axis_name=None):
    """Sums over the valid (mask = 1) examples of a batch, for the validation pass.

    Returns, summed over the global batch (psum): the ELBO terms `elbo`, `recon`, `kl`; per
    latent dimension `kl_per_dim` [Z], `mean` [Z] and `mean_sq` [Z] of the posterior means (for
    the active-unit count; Z = Z1 + Z2, z1 first, for the two-layer model); `count`; and, with
    `support` (as in `train_step`), `support_violations`. The caller divides by the count at
    the end of the pass.
    """
    binarize_key, latent_key = fastpath.split(key)
    example_ids = local_example_ids(batch.shape[0], axis_name)
    x = preprocess(batch, binarize_key, scale=scale, binarize=binarize, example_ids=example_ids,
                   dequantize_levels=dequantize_levels)
    _, metrics = loss_fn(params, x, latent_key, beta=1.0, example_ids=example_ids,
                         axis_name=None)
    per = metrics["per_example"]
    per = dict(per, mean_sq=jnp.square(per["mean"]))
    sums = {
        name: jnp.einsum("b,b...->...", mask, per[name])
        for name in ("elbo", "recon", "kl", "kl_per_dim", "mean", "mean_sq") if name in per
    }
    sums["count"] = jnp.sum(mask)
    if support is not None:  # padding rows repeat a valid row: a zero count stays zero
        sums["support_violations"] = support(batch.astype(jnp.float32) * scale if binarize else x)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


def validation_summary(totals: dict) -> dict:
    """Validation metrics from the summed `eval_step` outputs of a whole pass (host numpy).

    Active units (Burda et al. 2015, section 5.2): dimensions whose posterior mean varies over
    the data, Var_x(E_q[z_i | x]) > 0.01; the others have collapsed onto the prior.
    """
    totals = {k: np.asarray(v, np.float64) for k, v in totals.items()}
    count = float(totals.pop("count"))
    mean_z = totals["mean"] / count
    variance_z = totals["mean_sq"] / count - np.square(mean_z)
    summary = {
        "val_elbo_nats": float(totals["elbo"]) / count,
        "val_recon_nats": float(totals["recon"]) / count,
        "val_kl_nats": float(totals["kl"]) / count,
        "val_active_units": int(np.sum(variance_z > 0.01)),
    }
    # Per-dimension KL only where the model has it in closed form (one diagonal Gaussian layer
    # against N(0, I)); elsewhere it is not defined, and no number is printed for it.
    if "kl_per_dim" in totals:
        summary["val_kl_per_dim_nats"] = [float(v) for v in totals["kl_per_dim"] / count]
    return summary


# --------------------------------------------------------------------------- mapped programs


def program_options(config: ml_collections.ConfigDict) -> dict:
    """`parallel.compiler_options` for the programs of this config's model, from its network
    names (the run itself asks the built model, `VAE.convolutional`)."""
    return parallel.compiler_options(
        convolutional=any("conv" in name for name in (config.model.encoder,
                                                      config.model.decoder)))


def epochs_per_chunk(num_steps: int, steps_per_epoch: int) -> int:
    """How many epochs a chunk of `num_steps` consecutive steps can touch."""
    return (num_steps - 1) // steps_per_epoch + 2


def epoch_permutations(data_key, epoch, *, num_examples: int, num_epochs: int):
    """[E, N] example orders of epochs `epoch .. epoch + E - 1`, drawn on the device."""
    epochs = epoch + jnp.arange(num_epochs)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(data_key, epochs)
    return jax.vmap(lambda k: jax.random.permutation(k, num_examples))(keys).astype(jnp.int32)


def make_train_chunk(
    step_fn: Callable, mesh, *, num_steps: int, batch_size: int, steps_per_epoch: int,
    compiler_options: dict | None = None,
) -> Callable:
    """A jitted program running `num_steps` training steps on every device of the mesh.

    `step_fn(state, batch, key)` is `train_step` with its static arguments bound and
    `axis_name="batch"`. The program takes `(state, rows, perms, first_epoch, train_key)`:
    `rows` the device-split dataset, `perms` [E, N] the orders of the E =
    `epochs_per_chunk(...)` epochs from `first_epoch` on, and returns the new state and the
    metrics of every step, stacked [num_steps]. `compiler_options` default
    `parallel.compiler_options()` (see `program_options`).
    """

    def one_step(state, rows_shard, perms, first_epoch, train_key):
        step = state.step
        epoch = step // steps_per_epoch
        start = (step % steps_per_epoch) * batch_size
        order = perms[epoch - first_epoch]
        indices = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
        batch = parallel.gather_rows(rows_shard, indices)
        return step_fn(state, batch, fastpath.fold_in(train_key, step))

    def per_device(state, rows_shard, perms, first_epoch, train_key):
        if num_steps == 1:
            state, metrics = one_step(state, rows_shard, perms, first_epoch, train_key)
            return state, jax.tree.map(lambda m: m[None], metrics)

        def body(carry, _):
            return one_step(carry, rows_shard, perms, first_epoch, train_key)

        return jax.lax.scan(body, state, length=num_steps)

    mapped = parallel.data_parallel(
        per_device,
        mesh,
        in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED, parallel.REPLICATED,
                  parallel.REPLICATED),
        out_specs=(parallel.REPLICATED, parallel.REPLICATED),
    )
    return jax.jit(mapped, donate_argnums=(0,),
                   compiler_options=parallel.options_or_default(compiler_options))


def make_stream_step(step_fn: Callable, mesh, *, compiler_options: dict | None = None
                     ) -> Callable:
    """A jitted program for one step on a global batch streamed from the host."""

    def per_device(state, batch, train_key):
        state, metrics = step_fn(state, batch, fastpath.fold_in(train_key, state.step))
        return state, jax.tree.map(lambda m: m[None], metrics)

    mapped = parallel.data_parallel(
        per_device,
        mesh,
        in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
        out_specs=(parallel.REPLICATED, parallel.REPLICATED),
    )
    return jax.jit(mapped, donate_argnums=(0,),
                   compiler_options=parallel.options_or_default(compiler_options))


def make_eval_program(eval_fn: Callable, mesh, *, batch_size: int,
                      compiler_options: dict | None = None) -> Callable:
    """A jitted program: ELBO sums over the rows `start .. start + batch_size` of a split."""

    def per_device(params, rows_shard, num_valid, start, eval_key):
        indices = start + jnp.arange(batch_size)
        batch = parallel.gather_rows(rows_shard, jnp.minimum(indices, num_valid - 1))
        local_indices = start + local_example_ids(batch.shape[0], parallel.AXIS)
        mask = (local_indices < num_valid).astype(jnp.float32)
        # Noise keyed by the batch's start: every example of the split keeps its noise
        # whatever the device count.
        return eval_fn(params, batch, mask, fastpath.fold_in(eval_key, start))

    mapped = parallel.data_parallel(
        per_device,
        mesh,
        in_specs=(parallel.REPLICATED,) + (parallel.SHARDED,) + (parallel.REPLICATED,) * 3,
        out_specs=parallel.REPLICATED,
    )
    return jax.jit(mapped, compiler_options=parallel.options_or_default(compiler_options))


# --------------------------------------------------------------------------- model selection


# The validation metrics a run can be selected by (`validation_summary`).
BEST_METRICS = ("val_elbo_nats", "val_recon_nats", "val_kl_nats", "val_active_units",
                "val_bits_per_dim")
BEST_JSON = "best.json"


@dataclasses.dataclass
class BestOnValidation:
    """The best validation pass so far by `metric` and how many passes came after it.

    A pass is better when its value beats the best strictly (`mode` "max": higher, "min":
    lower); `exhausted` once `patience` > 0 passes in a row were not better (early stopping,
    Prechelt 1998). Rebuilt on resume by replaying eval_metrics.jsonl up to the restored step
    (`from_rows`), so a resumed run continues the count exactly.
    """

    metric: str
    mode: str
    patience: int
    best_value: float | None = None
    best_step: int | None = None
    passes_since_best: int = 0

    def update(self, value: float, step: int) -> bool:
        """Records one validation pass; True when it is the new best."""
        better = self.best_value is None or (
            value > self.best_value if self.mode == "max" else value < self.best_value)
        if better:
            self.best_value, self.best_step, self.passes_since_best = float(value), step, 0
        else:
            self.passes_since_best += 1
        return better

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.passes_since_best >= self.patience

    @classmethod
    def from_rows(cls, rows, *, metric: str, mode: str, patience: int) -> "BestOnValidation":
        best = cls(metric=metric, mode=mode, patience=patience)
        for row in rows:
            best.update(row[metric], int(row["step"]))
        return best

    def record(self) -> dict:
        """What best/best.json holds."""
        return {"step": self.best_step, "metric": self.metric, "mode": self.mode,
                "value": self.best_value}


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
    """What `train_and_evaluate` returns (the files in the workdir say the same)."""

    state: TrainState
    last_metrics: dict
    validation: dict


def _device_rows(rows: np.ndarray, mesh) -> jax.Array:
    """Pads rows to a multiple of the device count and splits them across the mesh's devices.

    Devices are ordered process by process, so process p holds the contiguous block p of the
    padded rows: each process passes only its own share.
    """
    n_pad = input_pipeline.padded_size(len(rows), mesh.devices.size)
    padded = np.zeros((n_pad,) + rows.shape[1:], rows.dtype)
    padded[: len(rows)] = rows
    share = input_pipeline.shard_for_process(padded, jax.process_index(), jax.process_count())
    return parallel.shard_rows(share, mesh)


def _validation_size(value):
    """A config value >= 1 is a count of examples (ml_collections may hold it as a float)."""
    return int(value) if value >= 1 else float(value)


def resolve_num_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """num_steps, or num_epochs * steps per epoch when num_steps is 0."""
    run = config.run
    if run.num_steps:
        return int(run.num_steps)
    return int(run.num_epochs) * (num_train // run.batch_size)


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _unit_open(v):  # [0, 1)
    return 0 <= v < 1


# The range of every numeric field: (predicate, what it says). A value outside its range is an
# error before anything is written (a negative learning rate trains until it diverges; a
# negative num_steps would "finish" at once and write empty metrics).
NUMERIC_RANGES = {
    "data.max_device_bytes": (_non_negative, ">= 0"),
    "data.validation_size": (_positive, "> 0 (a fraction in (0, 1) or a count >= 1)"),
    "model.latent_dim": (_positive, ">= 1"),
    "model.num_layers": (_positive, ">= 1"),
    "model.upper_latent_dims": (_positive, "sizes >= 1"),
    "model.upper_hidden": (_positive, "widths >= 1"),
    "model.hidden": (_positive, "widths >= 1"),
    "model.features": (_positive, "channels >= 1"),
    "model.kernel_size": (_positive, ">= 1"),
    "model.conv_kernel_sizes": (_positive, ">= 1"),
    "model.conv_strides": (_positive, ">= 1"),
    "model.decoder_features": (_positive, "channels >= 1"),
    "model.strides": (_positive, ">= 1"),
    "model.conv_hidden": (_positive, "widths >= 1"),
    "model.prior_components": (_non_negative, ">= 0 (0: the prior's default)"),
    "model.iaf_steps": (_positive, ">= 1"),
    "model.iaf_hidden": (_positive, "widths >= 1"),
    "model.iaf_context_dim": (_non_negative, ">= 0 (0: the posterior's default)"),
    "objective.num_samples": (_positive, ">= 1"),
    "objective.beta": (_non_negative, ">= 0"),
    "objective.kl_warmup_steps": (_non_negative, ">= 0"),
    "objective.kl_cycle_steps": (_non_negative, ">= 0"),
    "objective.kl_cycle_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "objective.kl_num_cycles": (_non_negative, ">= 0"),
    "objective.free_bits": (_non_negative, ">= 0"),
    "objective.capacity_max": (_non_negative, ">= 0"),
    "objective.capacity_steps": (_non_negative, ">= 0"),
    "objective.capacity_gamma": (_non_negative, ">= 0"),
    "objective.dip_lambda_od": (_non_negative, ">= 0"),
    "objective.dip_lambda_d": (_non_negative, ">= 0"),
    "objective.info_alpha": (lambda v: v <= 1, "<= 1"),
    "objective.info_lambda": (_non_negative, ">= 0"),
    "objective.factor_gamma": (_non_negative, ">= 0"),
    "objective.discriminator_hidden": (_positive, "widths >= 1"),
    "objective.discriminator_learning_rate": (_non_negative, ">= 0"),
    "objective.discriminator_b1": (_unit_open, "in [0, 1)"),
    "objective.discriminator_b2": (_unit_open, "in [0, 1)"),
    "optim.learning_rate": (_non_negative, ">= 0"),
    "optim.burda_epoch_scale": (_positive, "> 0"),
    "optim.lr_warmup_steps": (_non_negative, ">= 0"),
    "optim.b1": (_unit_open, "in [0, 1)"),
    "optim.b2": (_unit_open, "in [0, 1)"),
    "optim.eps": (_non_negative, ">= 0"),
    "optim.weight_decay": (_non_negative, ">= 0"),
    "optim.momentum": (_unit_open, "in [0, 1)"),
    "optim.grad_clip_norm": (_non_negative, ">= 0 (0 disables clipping)"),
    "optim.max_consecutive_skips": (_non_negative, ">= 0"),
    "optim.ema_decay": (_unit_open, "in [0, 1) (0 disables the EMA)"),
    "run.batch_size": (_positive, ">= 1"),
    "run.eval_batch_size": (_positive, ">= 1"),
    "run.num_steps": (_non_negative, ">= 0 (0: num_epochs epochs)"),
    "run.num_epochs": (_non_negative, ">= 0"),
    "run.steps_per_dispatch": (_positive, ">= 1"),
    "run.log_every": (_positive, ">= 1"),
    "run.eval_every": (_positive, ">= 1"),
    "run.checkpoint_every": (_positive, ">= 1"),
    "run.keep_checkpoints": (_positive, ">= 1"),
    "run.early_stopping_patience": (_non_negative, ">= 0 (0: never stop early)"),
    "run.num_image_examples": (_non_negative, ">= 0"),
}


def _leaves(value):
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def check_numeric_ranges(config: ml_collections.ConfigDict) -> None:
    """A clear error naming the first numeric field outside its range (NaN is outside every
    range; tuple fields are checked element by element)."""
    for name, (ok, valid) in NUMERIC_RANGES.items():
        value = config
        for part in name.split("."):
            value = value[part]
        values = list(_leaves(value))
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and ok(v) for v in values):
            raise ValueError(f"{name}={value!r} is out of range: it must be {valid}")
    if not config.run.num_steps and not config.run.num_epochs:
        raise ValueError("run.num_steps=0 and run.num_epochs=0: the run would train no step; "
                         "set one")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Clear errors for settings that cannot work, before anything is compiled or written.

    The model's and the objective's own combinations (`model.build_model`,
    `objectives.check_objective`) are checked when they are built, also before anything is
    written.
    """
    check_numeric_ranges(config)
    run, m, data = config.run, config.model, config.data
    parallel.check_batch_divisible(run.batch_size, num_devices)
    parallel.check_batch_divisible(run.eval_batch_size, num_devices, "eval_batch_size")
    k = run.steps_per_dispatch
    for name in ("log_every", "eval_every", "checkpoint_every"):
        if run[name] % k:
            raise ValueError(
                f"run.{name}={run[name]} must be a multiple of run.steps_per_dispatch={k}")
    losses.likelihood_num_params(m.likelihood)
    optimizer_factory(config.optim.name)
    if m.decoder_bias_init not in losses.OUTPUT_BIAS_INITS:
        raise ValueError(f"unknown decoder_bias_init {m.decoder_bias_init!r}; "
                         f"valid: {list(losses.OUTPUT_BIAS_INITS)}")
    if m.decoder_bias_init == "data_mean":
        if m.likelihood not in losses.DATA_MEAN_BIAS_LIKELIHOODS:
            raise ValueError(
                f"model.decoder_bias_init='data_mean' with model.likelihood={m.likelihood!r}: "
                "the data-mean output bias is defined for "
                f"{list(losses.DATA_MEAN_BIAS_LIKELIHOODS)}")
        if "conv" in m.decoder:
            raise ValueError(
                "model.decoder_bias_init='data_mean' needs an output bias per pixel (decoder "
                "'mlp'); the 'conv' decoder has one bias per channel")
    if run.best_metric not in BEST_METRICS or run.best_mode not in ("max", "min"):
        raise ValueError(f"run.best_metric={run.best_metric!r} / run.best_mode={run.best_mode!r}:"
                         f" the metric must be one of {list(BEST_METRICS)} and the mode 'max' "
                         "or 'min'")
    if run.best_metric == "val_bits_per_dim" and not data.dequantize:
        raise ValueError("run.best_metric='val_bits_per_dim' exists only for runs on dequantised "
                         "data (data.dequantize=True); use 'val_elbo_nats'")
    if data.dequantize and data.binarization != "none":
        raise ValueError(
            f"data.dequantize=True with data.binarization={data.binarization!r}: "
            "dequantisation spreads the grey levels over their bins and binarisation replaces "
            "them by 0s and 1s; use one of them (dequantize needs binarization='none')"
        )
    if data.dequantize and m.likelihood not in losses.DENSITY_LIKELIHOODS:
        raise ValueError(
            f"data.dequantize=True with likelihood={m.likelihood!r}: dequantised data need "
            f"a density of continuous intensities, one of {list(losses.DENSITY_LIKELIHOODS)} "
            "('bernoulli' models binary data, 'discretized_logistic' the levels themselves)"
        )
    if data.binarization == "dynamic" and m.likelihood not in (
        "bernoulli", "continuous_bernoulli"
    ):
        raise ValueError(
            f"dynamic binarisation makes binary data; it needs a Bernoulli-type likelihood, "
            f"not {m.likelihood!r} (set data.binarization='none')"
        )


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What `set_up_run` builds from a config before the run touches its workdir."""

    config: ml_collections.ConfigDict
    mesh: Any
    data: Any  # input_pipeline's dataset: validation rows, the training rows unless streamed
    vae: model_lib.VAE
    streaming: bool  # the training set is streamed from disk (`StreamFeeder`)
    num_steps: int
    steps_per_epoch: int
    initial_state: TrainState  # on the host, before any checkpoint is restored
    step_fn: Callable  # `train_step` with its static arguments bound (all but `scanned`)
    eval_fn: Callable  # `eval_step` with its static arguments bound
    keys: tuple  # (train_key, eval_key, data_key)
    labels: dict  # added to every metrics row
    compiler_options: dict


def set_up_run(config: ml_collections.ConfigDict, devices=None) -> RunSetup:
    """Checks the config, finds the data and builds the model, the optimiser and the step
    functions: every error a config can cause is raised here, before anything is written."""
    mesh = parallel.make_mesh(devices)
    validate_config(config, mesh.devices.size)
    train_bytes = input_pipeline.dataset_nbytes(
        config.data.name, split="train", data_dir=config.data.data_dir,
        download=config.data.download,
    )
    # Training sets over the budget stay on disk and are streamed with tf.data.
    streaming = train_bytes > config.data.max_device_bytes
    data = input_pipeline.load_dataset(
        config.data.name,
        data_dir=config.data.data_dir,
        download=config.data.download,
        validation_size=_validation_size(config.data.validation_size),
        binarization=config.data.binarization,
        seed=config.data.seed,
        train_in_memory=not streaming,
    )
    num_train = data.num_train
    run = config.run
    steps_per_epoch = num_train // run.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"run.batch_size={run.batch_size} is larger than the training set ({num_train})"
        )
    num_steps = resolve_num_steps(config, num_train)
    losses.check_data_support(
        data.validation[:256].astype(np.float32) * data.scale, config.model.likelihood,
        num_bins=data.num_levels,
    )
    grey_bernoulli = is_grey_level_bernoulli(config, data.num_levels)
    if grey_bernoulli and not config.model.allow_grey_level_bernoulli:
        raise ValueError(
            f"likelihood='bernoulli' with data.binarization='none' on {config.data.name!r}, "
            f"whose pixels have {data.num_levels} grey levels: the Bernoulli cross-entropy of "
            "grey levels is not a likelihood (the ELBO and bits/dim it reports mean nothing). "
            "Binarise the data (data.binarization='dynamic' or 'static'), use a density of "
            "intensities ('continuous_bernoulli', 'gaussian'), or set "
            "model.allow_grey_level_bernoulli=True to train on this loss anyway (its metrics "
            "are then labelled normalised_likelihood=0)"
        )

    root_key = jax.random.key(config.seed)
    init_key, train_key, eval_key, data_key = jax.random.split(root_key, 4)
    vae = model_lib.build_model(config.model, data.image_shape, num_levels=data.num_levels)
    optimizer = make_optimizer(config, steps_per_epoch=steps_per_epoch)
    loss_fn = make_loss_fn(config, vae, dataset_size=num_train)  # checks the objective
    binarize = config.data.binarization == "dynamic"
    dequantize_levels = data.num_levels if config.data.dequantize else 0
    return RunSetup(
        config=config, mesh=mesh, data=data, vae=vae, streaming=streaming, num_steps=num_steps,
        steps_per_epoch=steps_per_epoch,
        initial_state=init_state(init_key, vae, data.image_shape, optimizer,
                                 ema=config.optim.ema_decay > 0,
                                 output_bias=initial_output_bias(config, data),
                                 objective_params=initial_objective_params(config, init_key,
                                                                           vae)),
        step_fn=functools.partial(
            train_step,
            loss_fn=loss_fn,
            optimizer=optimizer,
            beta_schedule=make_kl_schedule(config),
            lr_schedule=make_lr_schedule(config, steps_per_epoch=steps_per_epoch),
            scale=data.scale,
            binarize=binarize,
            dequantize_levels=dequantize_levels,
            ema_decay=config.optim.ema_decay,
            support=vae.likelihood.support_violations,
            axis_name=parallel.AXIS,
        ),
        eval_fn=functools.partial(
            eval_step,
            loss_fn=make_loss_fn(config, vae, dataset_size=num_train, objective="elbo"),
            scale=data.scale, binarize=binarize, dequantize_levels=dequantize_levels,
            support=vae.likelihood.support_violations, axis_name=parallel.AXIS,
        ),
        keys=(train_key, eval_key, data_key),
        labels={"normalised_likelihood": 0.0} if grey_bernoulli else {},
        compiler_options=parallel.compiler_options(convolutional=vae.convolutional),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: bool = False,
    quiet: bool = False,
    devices=None,
) -> TrainResult:
    """Trains the VAE the config describes, writing everything into `workdir`.

    Resumes from the latest checkpoint in `workdir/checkpoints` when there is one. See the
    README ("What is in a workdir") for the files it writes. The whole run, from building the
    optimiser to the last step, has the CPU fast paths switched by `config.run.cpu_fast_paths`
    (`fastpath.switched`).
    """
    with fastpath.switched(config.run.cpu_fast_paths):
        setup = set_up_run(config, devices)
        workdir = pathlib.Path(workdir)
        # Only now, with the data found and the model built, does the run touch the workdir: a
        # typo in the config leaves nothing behind to block the corrected command. The lock
        # comes first, so a second run on the same workdir is refused before it reads or writes
        # anything else.
        lock = (workdir_lib.WorkdirLock(workdir, purpose="training")
                if jax.process_index() == 0 else contextlib.nullcontext())
        with lock:
            # A workdir without a checkpoint holds no trained state: a differing config.json
            # there (a run that failed before its first checkpoint) is replaced, not a reason to
            # refuse.
            workdir_lib.check_workdir_config(
                workdir, config,
                allow_config_change=allow_config_change or not has_checkpoint(workdir))
            state = parallel.replicate(setup.initial_state, setup.mesh)
            checkpoints = workdir_lib.Checkpoints(workdir / "checkpoints",
                                                  keep=config.run.keep_checkpoints)
            try:
                state = checkpoints.restore_latest(state)
                workdir_lib.record_config(workdir, config)
                feeder = make_feeder(setup, start_step=int(jax.device_get(state.step)))
            except BaseException:
                checkpoints.close()
                raise
            return train_loop(setup, workdir, state, checkpoints, feeder, quiet=quiet)


def is_grey_level_bernoulli(config: ml_collections.ConfigDict, num_levels: int) -> bool:
    """`likelihoods.is_grey_level_bernoulli` of the run's likelihood and data."""
    return likelihoods.is_grey_level_bernoulli(
        config.model.likelihood, binarized=config.data.binarization != "none",
        num_levels=num_levels)


def has_checkpoint(workdir) -> bool:
    """Whether `workdir/checkpoints` holds a finished checkpoint (orbax's temporary folders of
    an interrupted save are named `<step>.orbax-checkpoint-tmp-*`, not `<step>`)."""
    directory = pathlib.Path(workdir) / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint of its current step."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class DataSupportError(ValueError):
    """A batch held values outside the likelihood's support."""


@contextlib.contextmanager
def _signals_recorded(signums):
    """Inside the block, SIGINT/SIGTERM are appended to the yielded list instead of acting, so
    the loop can save the current step first. Handlers can only be set in the main thread;
    elsewhere nothing is caught."""
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in signums}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------- batch feeders


class InMemoryFeeder:
    """Feeds the training loop from a training set held on the devices.

    The rows are split across the devices once; each dispatch runs `steps_per_dispatch` steps
    in one program (`make_train_chunk`), gathering its batches by the epochs' permutations
    (drawn on the device, `epoch_permutations`). A run whose length is not a multiple of
    `steps_per_dispatch` ends with one shorter chunk.
    """

    def __init__(self, step_fn: Callable, mesh, rows: np.ndarray, *, train_key, data_key,
                 batch_size: int, steps_per_epoch: int, steps_per_dispatch: int,
                 num_steps: int, compiler_options: dict):
        self._step_fn, self._mesh = step_fn, mesh
        self._batch_size, self._steps_per_epoch = batch_size, steps_per_epoch
        self._steps_per_dispatch, self._num_steps = steps_per_dispatch, num_steps
        self._options = compiler_options
        self._rows = _device_rows(rows, mesh)
        self._train_key, self._data_key = parallel.replicate((train_key, data_key), mesh)
        self._perms_fn = jax.jit(
            functools.partial(epoch_permutations, num_examples=len(rows),
                              num_epochs=epochs_per_chunk(steps_per_dispatch, steps_per_epoch)),
            out_shardings=jax.sharding.NamedSharding(mesh, parallel.REPLICATED),
        )
        self._epoch, self._perms = None, None
        self._programs = {}  # chunk length -> program

    def _program(self, length: int) -> Callable:
        if length not in self._programs:
            # The faster form of the finite-update select depends on the scan
            # (`apply_finite_update`).
            step_fn = functools.partial(self._step_fn, scanned=length > 1)
            self._programs[length] = make_train_chunk(
                step_fn, self._mesh, num_steps=length, batch_size=self._batch_size,
                steps_per_epoch=self._steps_per_epoch, compiler_options=self._options)
        return self._programs[length]

    def advance(self, state, step: int):
        """Runs the next chunk from `step` (= state.step): `(state, metrics [n], n)`."""
        epoch = step // self._steps_per_epoch
        if epoch != self._epoch:
            self._perms, self._epoch = self._perms_fn(self._data_key, epoch), epoch
        length = min(self._steps_per_dispatch, self._num_steps - step)
        state, metrics = self._program(length)(state, self._rows, self._perms, epoch,
                                               self._train_key)
        return state, metrics, length


class StreamFeeder:
    """Feeds the training loop one global batch per dispatch from a tf.data stream
    (`input_pipeline.stream_batches`; each process reads its own rows), for training sets
    over the device budget. A resumed run skips the batches of the steps it has done."""

    def __init__(self, step_fn: Callable, mesh, batches, *, train_key, compiler_options: dict):
        self._mesh, self._batches = mesh, batches
        self._program = make_stream_step(functools.partial(step_fn, scanned=False), mesh,
                                         compiler_options=compiler_options)
        self._train_key = parallel.replicate(train_key, mesh)

    def advance(self, state, step: int):
        """Runs one step on the next batch: `(state, metrics [1], 1)`."""
        del step  # the stream is positioned already
        batch = parallel.shard_rows(next(self._batches), self._mesh)
        state, metrics = self._program(state, batch, self._train_key)
        return state, metrics, 1


def make_feeder(setup: RunSetup, *, start_step: int):
    """The feeder of the run's data path, positioned at `start_step`."""
    config, mesh = setup.config, setup.mesh
    train_key, _, data_key = setup.keys
    if setup.streaming:
        batches = input_pipeline.stream_batches(
            config.data.name,
            split=setup.data.train_split,
            batch_size=config.run.batch_size // jax.process_count(),
            data_dir=config.data.data_dir,
            download=config.data.download,
            seed=config.data.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            skip_batches=start_step,  # a resumed run continues where the stream stopped
        )
        return StreamFeeder(setup.step_fn, mesh, batches, train_key=train_key,
                            compiler_options=setup.compiler_options)
    return InMemoryFeeder(
        setup.step_fn, mesh, setup.data.train, train_key=train_key, data_key=data_key,
        batch_size=config.run.batch_size, steps_per_epoch=setup.steps_per_epoch,
        steps_per_dispatch=config.run.steps_per_dispatch, num_steps=setup.num_steps,
        compiler_options=setup.compiler_options)


# --------------------------------------------------------------------------- the loop


def train_loop(setup: RunSetup, workdir: pathlib.Path, state, checkpoints, feeder, *,
               quiet: bool = False) -> TrainResult:
    """The loop of `train_and_evaluate` from the restored `state` to `setup.num_steps`,
    dispatching `feeder.advance` (either feeder) and, between dispatches, logging, validating,
    drawing pictures and saving checkpoints at the config's cadence.

    After every dispatch the previous dispatch's guards are read (one behind, so the devices
    stay busy): more than `max_consecutive_skips` non-finite updates in a row, or data outside
    the likelihood's support, stop the run at once, after the window up to that point is
    written to metrics.jsonl; no checkpoint is saved after either. SIGINT and SIGTERM save the
    current step and raise `TrainingInterrupted`.
    """
    config, mesh, data, num_steps, labels = (setup.config, setup.mesh, setup.data,
                                             setup.num_steps, setup.labels)
    is_chief = jax.process_index() == 0
    start_step = int(jax.device_get(state.step))
    eval_program = make_eval_program(setup.eval_fn, mesh, batch_size=config.run.eval_batch_size,
                                     compiler_options=setup.compiler_options)
    val_rows = _device_rows(data.validation, mesh)
    eval_key = parallel.replicate(setup.keys[1], mesh)
    pictures = workdir_lib.Pictures(
        workdir, setup.vae,
        examples=data.validation[: config.run.num_image_examples].astype(np.float32) * data.scale,
        enabled=is_chief,
    )

    def evaluate(state):
        params = eval_params(state)
        totals = None
        for start in range(0, len(data.validation), config.run.eval_batch_size):
            sums = eval_program(params, val_rows, len(data.validation), start, eval_key)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        outside = int(totals.pop("support_violations", 0))
        if outside:
            raise DataSupportError(
                f"the validation split has {outside} pixel values outside the support of the "
                f"{config.model.likelihood!r} likelihood (see losses.support_violations); stopping")
        summary = validation_summary(totals)
        if config.data.dequantize:
            # The ELBO on y = (k + u) / L bounds the code length of the levels.
            num_dims = int(np.prod(data.image_shape))
            log_mass = losses.dequantized_log_mass_bound(
                summary["val_elbo_nats"], num_dims, data.num_levels)
            summary["val_bits_per_dim"] = float(-log_mass / (num_dims * np.log(2.0)))
        return {**summary, **labels}

    logger = workdir_lib.MetricsLogger(workdir, enabled=is_chief, quiet=quiet,
                                       total_steps=num_steps, initial_step=start_step)
    run = config.run
    best_checkpoints = None
    # The validation passes up to the restored step: what the interrupted run had seen there.
    history = [row for row in workdir_lib.read_jsonl(workdir / "eval_metrics.jsonl")
               if row["step"] <= start_step]
    best = BestOnValidation.from_rows(history, metric=run.best_metric, mode=run.best_mode,
                                      patience=run.early_stopping_patience)
    if run.keep_best or run.early_stopping_patience > 0:
        best_checkpoints = workdir_lib.Checkpoints(workdir / "best" / "checkpoints", keep=1)

    def checkpoint_note():
        latest = checkpoints.latest_step()
        if latest is None:
            return ("No checkpoint was written, so the workdir holds no trained state; the "
                    "corrected command starts afresh.")
        return (f"The last checkpoint is step {latest} ({checkpoints.directory / str(latest)}); "
                "rerunning the command resumes from it.")

    pending, window_start, window_steps = [], time.perf_counter(), 0

    def log_window(step, **extra):
        nonlocal pending, window_start, window_steps
        summary = workdir_lib.summarise(jax.device_get(pending), step,
                                        time.perf_counter() - window_start,
                                        window_steps * config.run.batch_size)
        summary.update(labels, **extra)
        logger.log(summary, step)
        pending, window_start, window_steps = [], time.perf_counter(), 0
        return summary

    inflight = []  # (per-step metrics [n] of a dispatch, the step it ended at), not yet checked

    def check_guards(upto: int):
        """Reads the guards of the oldest dispatches, leaving `upto` unread; stops on failure."""
        while len(inflight) > upto:
            metrics, end_step = inflight.pop(0)
            guards = jax.device_get({k: metrics[k] for k in metrics
                                     if k in ("consecutive_skips", "support_violations")})
            first = end_step - len(guards["consecutive_skips"]) + 1  # step of element 0
            limit = config.optim.max_consecutive_skips
            over = np.flatnonzero(guards["consecutive_skips"] > limit)
            if over.size:
                at = first + int(over[0])
                log_window(end_step, diverged_at_step=at)
                raise FloatingPointError(
                    f"{limit + 1} consecutive updates had non-finite gradients (limit "
                    f"optim.max_consecutive_skips={limit}) at step {at}; stopping. "
                    f"{checkpoint_note()}")
            outside = np.flatnonzero(guards.get("support_violations", np.zeros(1)))
            if outside.size:
                at = first + int(outside[0])
                log_window(end_step, support_violation_at_step=at)
                raise DataSupportError(
                    f"the training batch of step {at} had "
                    f"{int(guards['support_violations'][outside[0]])} pixel values outside the "
                    f"support of the {config.model.likelihood!r} likelihood (see "
                    f"losses.support_violations); stopping. {checkpoint_note()}")

    last_metrics, validation = {}, {}
    if best.exhausted:  # the rerun command of a run that stopped early: nothing to train
        last_metrics = (workdir_lib.read_jsonl(workdir / "metrics.jsonl") or [{}])[-1]
        validation = {k: v for k, v in history[-1].items() if k != "step"}
    step = start_step
    try:
        with _signals_recorded((signal.SIGINT, signal.SIGTERM)) as caught:
            while step < num_steps and not best.exhausted:
                state, metrics, length = feeder.advance(state, step)
                step += length
                pending.append(metrics)
                inflight.append((metrics, step))
                window_steps += length
                check_guards(upto=1)
                last = step >= num_steps
                if step % config.run.log_every == 0 or last:
                    check_guards(upto=0)
                    last_metrics = log_window(step)
                if step % config.run.eval_every == 0 or last:
                    validation = evaluate(state)
                    logger.log_eval(validation, step)
                    pictures.write(eval_params(state), step, jax.random.fold_in(eval_key, step))
                    logger.log_images(pictures.last_images, step)
                    if best.update(validation[run.best_metric], step) and best_checkpoints:
                        check_guards(upto=0)
                        best_checkpoints.save(step, state)
                        best_checkpoints.wait()  # best.json names a checkpoint that exists
                        if is_chief:
                            workdir_lib.write_json(workdir / "best" / BEST_JSON, best.record())
                    if best.exhausted and not last:
                        last = True  # stop here, with a checkpoint of this step
                        if pending:
                            check_guards(upto=0)
                            last_metrics = log_window(step)
                if step % config.run.checkpoint_every == 0 or last or caught:
                    check_guards(upto=0)  # never checkpoint what the guards give up on
                    checkpoints.save(step, state)
                if caught and not last:
                    if pending:
                        log_window(step)
                    name = signal.Signals(caught[0]).name
                    # The `finally` below waits for the save: a failed one replaces this.
                    raise TrainingInterrupted(
                        f"{name} at step {step}: saved checkpoint {step} to "
                        f"{checkpoints.directory / str(step)}; rerun the same command to resume",
                        caught[0])
    finally:
        checkpoints.close()
        if best_checkpoints is not None:
            best_checkpoints.close()
        logger.close()
    if best.exhausted:
        validation = {**validation, "early_stopped_at_step": step,
                      "best_step": best.best_step, f"best_{run.best_metric}": best.best_value}
    if is_chief:
        workdir_lib.write_json(workdir / "final_metrics.json", {**last_metrics, **validation})
    return TrainResult(state=state, last_metrics=last_metrics, validation=validation)

