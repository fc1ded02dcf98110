"""`jax.random`'s default generator, bit for bit, in a form XLA:CPU can fuse.

JAX's default PRNG is Threefry-2x32 (Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3"; 20 rounds). On CPU, JAX lowers its hash as a rolled `while` loop of five iterations
to keep compile times short. Inside a training step that loop cannot be fused with what
consumes the bits (the binarisation threshold, the inverse-erf of the Gaussian noise), so
every draw is its own loop of kernels with its arrays in memory. The functions here compute
the same hash with the rounds written out, as plain elementwise `lax` ops; XLA then fuses the
counters, the hash and the conversion into one loop. On the Burda VAE at batch 20 (workload
W2 of `benchmarks/`), where draws are a large part of a small step, this made the training
step about 14% faster.

The results are `jax.random`'s: the same keys, bits, U[0, 1) uniforms and Bernoulli draws,
bit for bit; scaled uniforms and normals are computed from those same bits and agree to an ulp,
the rounding XLA's fused multiply-adds leave free (`jax.random.normal` itself differs by an ulp
between eager and jitted calls). tests/test_threefry.py checks each function against
`jax.random`, also under `vmap` over keys. That holds for float32 draws from threefry2x32 keys
with `jax_threefry_partitionable` on (JAX's default); for any other key implementation, dtype
or setting, each function simply calls `jax.random`.

Keys are new-style typed keys (`jax.random.key`); the functions take one key, like
`jax.random`, and compose with `jax.vmap` for per-example keys.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, d: int):
    return lax.shift_left(x, np.uint32(d)) | lax.shift_right_logical(x, np.uint32(32 - d))


def hash_2x32(k1, k2, x1, x2):
    """Threefry-2x32 with 20 rounds: the block cipher of key (k1, k2) applied to (x1, x2).

    The same function as JAX's `threefry2x32_p` (Salmon et al. 2011, Fig. 2 and Table 4):
    rounds of x0 += x1; x1 = rotl(x1, R) ^ x0, with the key injected every 4 rounds. All
    arguments are uint32 arrays that broadcast together.

    Returns:
      (y1, y2), uint32 arrays of the broadcast shape.
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x = [x1 + ks[0], x2 + ks[1]]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x[0] = x[0] + x[1]
            x[1] = _rotate_left(x[1], rotation) ^ x[0]
        x[0] = x[0] + ks[(block + 1) % 3]
        x[1] = x[1] + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x[0], x[1]


def _is_fast(key, dtype=jnp.float32) -> bool:
    return (jax.random.key_impl(key) == "threefry2x32"
            and bool(jax.config.jax_threefry_partitionable)
            and jnp.dtype(dtype) == jnp.float32)


def _words(key):
    data = jax.random.key_data(key)  # [2] uint32
    return data[0], data[1]


def _counters(shape):
    """The block counters JAX uses for an array of `shape`: (0, i) for flat index i."""
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"at most 2**32 - 1 values per draw; got shape {shape}")
    return lax.iota(np.uint32, size).reshape(shape)


def fold_in(key, data):
    """`jax.random.fold_in(key, data)`: the key for 32-bit integer `data` (a scalar)."""
    if not _is_fast(key):
        return jax.random.fold_in(key, data)
    k1, k2 = _words(key)
    y1, y2 = hash_2x32(k1, k2, np.uint32(0), jnp.asarray(data, dtype=jnp.uint32))
    return jax.random.wrap_key_data(jnp.stack([y1, y2]), impl="threefry2x32")


def split(key, num: int = 2):
    """`jax.random.split(key, num)`: [num] new keys."""
    if not _is_fast(key):
        return jax.random.split(key, num)
    k1, k2 = _words(key)
    y1, y2 = hash_2x32(k1, k2, np.uint32(0), _counters((num,)))
    return jax.random.wrap_key_data(jnp.stack([y1, y2], axis=-1), impl="threefry2x32")


def bits(key, shape):
    """`jax.random.bits(key, shape)`: uniformly random uint32 values."""
    if not _is_fast(key):
        return jax.random.bits(key, shape, jnp.uint32)
    k1, k2 = _words(key)
    y1, y2 = hash_2x32(k1, k2, np.uint32(0), _counters(tuple(shape)))
    return y1 ^ y2


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
    """`jax.random.uniform(key, shape, dtype, minval, maxval)` (fused for float32).

    The 23 high bits of a random word become the mantissa of a float in [1, 2); subtracting 1
    gives U[0, 1) on a grid of 2^-23, which is then scaled to [minval, maxval).
    """
    if not _is_fast(key, dtype):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    minval = jnp.float32(minval)
    maxval = jnp.float32(maxval)
    mantissa = lax.shift_right_logical(bits(key, shape), np.uint32(32 - 23))
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = lax.bitcast_convert_type(mantissa | one, jnp.float32) - jnp.float32(1.0)
    return lax.max(minval, floats * (maxval - minval) + minval)


def normal(key, shape, dtype=jnp.float32):
    """`jax.random.normal(key, shape, dtype)`: sqrt(2) * erfinv(u), u ~ U(-1, 1) (fused for
    float32)."""
    if not _is_fast(key, dtype):
        return jax.random.normal(key, shape, dtype)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = uniform(key, shape, jnp.float32, lo, 1.0)
    return jnp.float32(np.sqrt(2)) * lax.erf_inv(u)


def bernoulli(key, p):
    """`jax.random.bernoulli(key, p)`: True with probability p, shape of p (fused for float32)."""
    if not _is_fast(key, jnp.result_type(p)):
        return jax.random.bernoulli(key, p)
    return uniform(key, jnp.shape(p)) < p
