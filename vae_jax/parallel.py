"""Data parallelism over every device: the `jax.pmap` pattern, written with `jax.shard_map`.

One per-device program runs on each device of a 1-D mesh whose axis is called "batch".
Parameters and optimiser state are replicated (`PartitionSpec()`), the batch is split along its
first axis (`PartitionSpec("batch")`), and gradients and metrics are averaged with
`jax.lax.pmean(..., "batch")`. This is what `jax.pmap` did; current JAX implements `pmap` on
top of `shard_map` and recommends `shard_map` directly. Arrays are placed with
`jax.device_put` / `jax.make_array_from_process_local_data` and a `NamedSharding`, never with the
deprecated `jax.device_put_replicated` or `flax.jax_utils.replicate`.

The training, evaluation and NLL programs are compiled with `compiler_options()` (one of the CPU
fast paths of `vae_jax.fastpath`: 512-bit vector code on CPUs with AVX-512; for conv models, no
YNNPACK fusions; nothing on other backends or with the fast paths off).

Multi-host: `initialize_distributed` calls `jax.distributed.initialize` first; afterwards the
mesh spans the devices of every process, each process feeds only its own rows, and
`jax.make_array_from_process_local_data` assembles the global arrays.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from vae_jax.fastpath import compiler_options

AXIS = "batch"
REPLICATED = PartitionSpec()
SHARDED = PartitionSpec(AXIS)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Starts multi-host JAX when configured by arguments or the standard environment.

    With explicit arguments they are passed to `jax.distributed.initialize`. Without, it runs
    when the standard variables are set (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
    `JAX_PROCESS_ID`), and on clusters JAX detects by itself (SLURM, Cloud TPU, ...) when
    `JAX_COORDINATOR_ADDRESS` is set. On CPU, collectives across processes go through gloo.
    A single-process run without any of these does nothing.
    """
    if coordinator_address is None and "JAX_COORDINATOR_ADDRESS" not in os.environ:
        return
    # Only affects the CPU client (harmless on GPU/TPU hosts); it must be set before start-up.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def options_or_default(options: dict | None) -> dict:
    """`options`, or `compiler_options()` when None (the program makers' default)."""
    return compiler_options() if options is None else options


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis "batch" over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (AXIS,), axis_types=(AxisType.Auto,))


def check_batch_divisible(global_batch: int, num_devices: int, what: str = "batch_size") -> int:
    """Returns the per-device batch; a clear error when the batch does not split evenly."""
    if global_batch <= 0 or global_batch % num_devices:
        example = max(1, global_batch // num_devices) * num_devices
        raise ValueError(
            f"{what}={global_batch} does not divide evenly across {num_devices} devices; "
            f"choose a multiple of {num_devices} (e.g. {example})"
        )
    return global_batch // num_devices


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (the same value on every process) on every device of the mesh.

    Values go through host memory, which is what lets every process contribute its copy to a
    mesh that spans processes (a single-device jax.Array cannot be moved to such a mesh).
    """
    sharding = NamedSharding(mesh, REPLICATED)

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)


def shard_rows(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles a global array split along axis 0 from this process's contiguous rows."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, SHARDED), local_rows)


def data_parallel(fn: Callable, mesh: Mesh, in_specs, out_specs) -> Callable:
    """Maps a per-device function over the mesh (`jax.shard_map`); the caller jits it."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def gather_rows(rows_shard, indices, *, axis_name: str = AXIS):
    """Per-device: the local slice of `dataset[indices]` from a dataset split across devices.

    Every device holds a contiguous block of `n_local` rows of the (padded) dataset and the
    same global batch indices [B]. Each device picks the requested rows it holds (zeros for the
    rest), and `psum_scatter` both completes the gather and hands device d rows
    [d * B / D, (d + 1) * B / D). Exactly one device contributes a non-zero row per position,
    so the sum is exact, in the rows' own dtype (uint8 images cross devices as bytes). Only
    [B, ...] values cross devices per step, never the dataset. On a single device it is a plain
    gather.

    Args:
      rows_shard: [n_local, ...] this device's rows of the dataset.
      indices: [B] global row indices, identical on every device.

    Returns:
      [B / D, ...] rows for this device, in the dtype of `rows_shard`.
    """
    if jax.lax.axis_size(axis_name) == 1:
        return rows_shard[indices]
    n_local = rows_shard.shape[0]
    offset = jax.lax.axis_index(axis_name) * n_local
    local_idx = indices - offset
    mine = (local_idx >= 0) & (local_idx < n_local)
    picked = rows_shard[jax.numpy.clip(local_idx, 0, n_local - 1)]
    mask = mine.reshape(mine.shape + (1,) * (picked.ndim - 1))
    picked = jax.numpy.where(mask, picked, jax.numpy.zeros((), picked.dtype))
    return jax.lax.psum_scatter(picked, axis_name, scatter_dimension=0, tiled=True)
