"""The data-parallel building blocks on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vae_jax import parallel


def test_mesh_spans_all_devices_on_one_axis():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("batch",)
    assert mesh.devices.size == len(jax.devices()) == 8


@pytest.mark.parametrize("num_devices", [1, 2, 8])
def test_gather_rows_equals_numpy_indexing(num_devices):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, size=(40, 3, 2, 1), dtype=np.uint8)  # 40 = 5 per device at 8
    indices = rng.permutation(40)[:16].astype(np.int32)
    program = jax.jit(parallel.data_parallel(
        lambda r, i: parallel.gather_rows(r, i), mesh, in_specs=(P("batch"), P()),
        out_specs=P("batch")))
    got = program(parallel.shard_rows(rows, mesh), parallel.replicate(indices, mesh))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(got), rows[indices])


def test_pmean_of_per_device_means_is_the_global_mean():
    mesh = parallel.make_mesh()
    x = np.arange(32, dtype=np.float32)
    program = jax.jit(parallel.data_parallel(
        lambda v: jax.lax.pmean(jnp.mean(v), parallel.AXIS), mesh, in_specs=P("batch"),
        out_specs=P()))
    assert float(program(parallel.shard_rows(x, mesh))) == pytest.approx(x.mean())


def test_replicate_places_keys_and_arrays_on_every_device():
    mesh = parallel.make_mesh()
    tree = {"key": jax.random.key(3), "w": np.ones((2, 2), np.float32)}
    placed = parallel.replicate(tree, mesh)
    assert placed["w"].sharding.is_fully_replicated and len(placed["w"].sharding.device_set) == 8
    np.testing.assert_array_equal(jax.random.key_data(placed["key"]),
                                  jax.random.key_data(jax.random.key(3)))


@pytest.mark.parametrize("batch,devices", [(60, 8), (7, 2), (0, 4)])
def test_batch_that_does_not_divide_is_a_clear_error(batch, devices):
    with pytest.raises(ValueError, match=rf"batch_size={batch} .* {devices} devices"):
        parallel.check_batch_divisible(batch, devices)


def test_batch_that_divides_gives_the_per_device_batch():
    assert parallel.check_batch_divisible(128, 8) == 16
