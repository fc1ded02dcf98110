"""The data-parallel building blocks on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vae_jax import config_defaults, parallel, train
from vae_jax import model as model_lib


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


@pytest.mark.parametrize("backend, flags, xla_flags, expected", [
    ("cpu", {"avx2", "avx512f", "fma"}, "", {"xla_cpu_prefer_vector_width": 512}),
    ("cpu", {"avx2", "fma"}, "", {}),
    ("gpu", {"avx512f"}, "", {}),
    ("cpu", {"avx512f"}, "--xla_cpu_prefer_vector_width=256", {}),
])
def test_compiler_options_ask_for_512_bit_vectors_only_on_avx512_cpus(backend, flags,
                                                                        xla_flags, expected):
    assert parallel.compiler_options(backend, cpu_flags=flags, xla_flags=xla_flags) == expected


NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


@pytest.mark.parametrize("backend, flags, xla_flags, expected", [
    ("cpu", {"avx2"}, "", NO_YNN),
    ("cpu", {"avx512f"}, "", {"xla_cpu_prefer_vector_width": 512, **NO_YNN}),
    ("gpu", {"avx512f"}, "", {}),
    ("cpu", {"avx2"}, "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT", {}),
])
def test_compiler_options_turn_off_ynnpack_only_for_conv_programs_on_cpu(backend, flags,
                                                                         xla_flags, expected):
    got = parallel.compiler_options(backend, cpu_flags=flags, xla_flags=xla_flags,
                                    convolutional=True)
    assert got == expected


@pytest.mark.parametrize("encoder, decoder, convolutional", [
    ("conv", "conv", True), ("mlp", "conv", True), ("conv", "mlp", True), ("mlp", "mlp", False),
])
def test_program_options_follow_the_model(monkeypatch, encoder, decoder, convolutional):
    assert jax.default_backend() == "cpu"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    config = config_defaults.default_config()
    config.model.encoder, config.model.decoder = encoder, decoder
    vae = model_lib.build_model(config.model, (28, 28, 1))
    assert vae.convolutional == convolutional
    got = parallel.compiler_options(convolutional=vae.convolutional)
    assert ("xla_cpu_experimental_ynn_fusion_type" in got) == convolutional
    assert train.program_options(config) == got


def test_conv_program_compiled_without_ynnpack_matches_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 14, 14, 8)).astype(np.float32)
    w = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn)

    options = parallel.compiler_options(convolutional=True)
    got = jax.jit(conv, compiler_options=options)(x, w)
    with jax.enable_x64(True):
        want = jax.jit(conv)(x.astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_programs_compiled_with_the_options_compute_the_same_values():
    x = jnp.linspace(0.0, 4.0, 1000, dtype=jnp.float32)
    f = lambda x: jnp.sqrt(x) / (1.0 + x)  # noqa: E731
    got = jax.jit(f, compiler_options=parallel.compiler_options())(x)
    np.testing.assert_allclose(got, np.sqrt(np.float64(x)) / (1.0 + np.float64(x)), rtol=1e-6)
