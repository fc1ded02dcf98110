"""The CPU fast paths: library functions rewritten where XLA:CPU measured them slow, behind
one switch.

Each public function here computes what a library function computes (named in its docstring)
and has two forms: the fast form, written for XLA:CPU, and the library form, which it calls
when the fast paths are off. They are on when the switch is on (the default; config
`run.cpu_fast_paths`, which `train.train_and_evaluate` and `evaluate.evaluate_workdir` apply
with `switched`) and the backend is the CPU. No measurement supports them on GPU or TPU, so
there the library forms run whatever the switch says.

    fast form                                   library form
    fold_in, split, bits, uniform, normal,      jax.random.fold_in, split, bits, uniform,
    bernoulli: Threefry with unrolled rounds    normal, bernoulli (bit for bit the same draws)
    softplus, log1p_of_unit: no log1p           jax.nn.softplus, jnp.log1p
    sum_non_batch: [B, D] @ 1_D                 jnp.sum over the non-batch axes
    global_norm: (g * g) @ 1 @ 1 per matrix     optax.tree.norm
    scale_by_adam: scalar bias corrections      optax.scale_by_adam
    where_finite: lax.cond inside a scan        jnp.where select (as optax.apply_if_finite)
    gaussian_log_density_table: the square      distributions.gaussian_log_density over
      expanded into two matmuls                 [N, C, Z] (a mixture's component table)
    compiler_options: 512-bit vectors with      no options
      AVX-512, no YNNPACK fusions for convs

The switch is a `jax.make_user_context`, part of the key of `jax.jit`'s caches: a function
traced under one setting is traced again under the other. The choice is made while tracing
(and, for `scale_by_adam` and `compiler_options`, when they are called). tests/test_fastpath.py
checks every pair against each other (bit for bit for the random draws, to float32 rounding
for the rest) and that the switch really changes the program. The measurements behind each
fast form are in benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

_SWITCH = jax.make_user_context(default_value=True)


@contextlib.contextmanager
def switched(on: bool):
    """Inside the block the fast paths are on (where the backend is the CPU) iff `on`."""
    with _SWITCH(bool(on)):
        yield


def enabled(backend: str | None = None) -> bool:
    """Whether the fast forms run: the switch is on and `backend` (default
    `jax.default_backend()`) is the CPU."""
    if not _SWITCH.value:
        return False
    return (jax.default_backend() if backend is None else backend) == "cpu"


# --------------------------------------------------------------------------- random numbers
#
# JAX's default PRNG is Threefry-2x32 (Salmon et al. 2011, "Parallel random numbers: as easy as
# 1, 2, 3"; 20 rounds). On CPU, JAX lowers its hash as a rolled `while` loop of five iterations
# to keep compile times short. Inside a training step that loop cannot be fused with what
# consumes the bits (the binarisation threshold, the inverse-erf of the Gaussian noise), so
# every draw is its own loop of kernels with its arrays in memory. The fast forms compute the
# same hash with the rounds written out, as plain elementwise `lax` ops; XLA then fuses the
# counters, the hash and the conversion into one loop. On the Burda VAE at batch 20 (W2 of
# benchmarks/), where draws are a large part of a small step, the training step ran 14% faster.
#
# The results are `jax.random`'s: the same keys, bits, U[0, 1) uniforms and Bernoulli draws,
# bit for bit; scaled uniforms and normals are computed from those same bits and agree to an
# ulp, the rounding XLA's fused multiply-adds leave free (`jax.random.normal` itself differs by
# an ulp between eager and jitted calls). That holds for float32 draws from threefry2x32 keys
# with `jax_threefry_partitionable` on (JAX's default); for any other key implementation, dtype
# or setting, each function calls `jax.random`. Keys are typed keys (`jax.random.key`); the
# functions take one key, like `jax.random`, and compose with `jax.vmap` for per-example keys.

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


def _fast_draw(key, dtype=jnp.float32) -> bool:
    """Whether the unrolled hash gives `jax.random`'s draw (and the fast paths are on)."""
    return (enabled()
            and jax.random.key_impl(key) == "threefry2x32"
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
    if not _fast_draw(key):
        return jax.random.fold_in(key, data)
    k1, k2 = _words(key)
    y1, y2 = hash_2x32(k1, k2, np.uint32(0), jnp.asarray(data, dtype=jnp.uint32))
    return jax.random.wrap_key_data(jnp.stack([y1, y2]), impl="threefry2x32")


def split(key, num: int = 2):
    """`jax.random.split(key, num)`: [num] new keys."""
    if not _fast_draw(key):
        return jax.random.split(key, num)
    k1, k2 = _words(key)
    y1, y2 = hash_2x32(k1, k2, np.uint32(0), _counters((num,)))
    return jax.random.wrap_key_data(jnp.stack([y1, y2], axis=-1), impl="threefry2x32")


def bits(key, shape):
    """`jax.random.bits(key, shape)`: uniformly random uint32 values."""
    if not _fast_draw(key):
        return jax.random.bits(key, shape, jnp.uint32)
    k1, k2 = _words(key)
    y1, y2 = hash_2x32(k1, k2, np.uint32(0), _counters(tuple(shape)))
    return y1 ^ y2


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
    """`jax.random.uniform(key, shape, dtype, minval, maxval)`.

    The 23 high bits of a random word become the mantissa of a float in [1, 2); subtracting 1
    gives U[0, 1) on a grid of 2^-23, which is then scaled to [minval, maxval).
    """
    if not _fast_draw(key, dtype):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    minval = jnp.float32(minval)
    maxval = jnp.float32(maxval)
    mantissa = lax.shift_right_logical(bits(key, shape), np.uint32(32 - 23))
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = lax.bitcast_convert_type(mantissa | one, jnp.float32) - jnp.float32(1.0)
    return lax.max(minval, floats * (maxval - minval) + minval)


def normal(key, shape, dtype=jnp.float32):
    """`jax.random.normal(key, shape, dtype)`: sqrt(2) * erfinv(u), u ~ U(-1, 1)."""
    if not _fast_draw(key, dtype):
        return jax.random.normal(key, shape, dtype)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = uniform(key, shape, jnp.float32, lo, 1.0)
    return jnp.float32(np.sqrt(2)) * lax.erf_inv(u)


def bernoulli(key, p):
    """`jax.random.bernoulli(key, p)`: True with probability p, shape of p."""
    if not _fast_draw(key, jnp.result_type(p)):
        return jax.random.bernoulli(key, p)
    return uniform(key, jnp.shape(p)) < p


# --------------------------------------------------------------------------- elementwise math


def log1p_of_unit(y: jax.Array) -> jax.Array:
    """`jnp.log1p(y)` for y in [0, 1], elementwise; the fast form is within 2 ulps in float32
    and takes no log1p.

    XLA:CPU's `log1p` is several times slower than its `log` and `exp`: the Bernoulli
    log-likelihood of the 20 x 784 decoder outputs of one W2 step (benchmarks/) took 31 us with
    `jnp.log1p` and 4.8 us with this function, on one core. (Computed inside a reduction's loop
    it was the slower of the two, which is why `sum_non_batch` sums by a product.) With
    s = y / (2 + y), in [0, 1/3],

        log(1 + y) = 2 artanh(s) = 2 (s + s^3/3 + s^5/5 + ...)
                   = y - s (y - 2 s^2 (1/3 + s^2/5 + ... + s^14/17))   (using 2s = y - y s),

    a series of positive terms in s^2 <= 1/9, truncated after s^17/17 (the rest is below
    3^-18 / 19 * 9/8 < 2e-10 of the total). The leading y is exact, so rounding enters only
    through the correction, which is at most y/3. That truncation is far below float32's
    precision but not float64's, so float64 input goes to `jnp.log1p`.
    """
    if not enabled() or jnp.finfo(jnp.result_type(y)).nmant > 23:
        return jnp.log1p(y)
    s = y / (2.0 + y)
    s_sq = s * s
    series = 1.0 / 17
    for k in (15, 13, 11, 9, 7, 5, 3):
        series = 1.0 / k + s_sq * series
    return y - s * (y - 2.0 * s_sq * series)


@jax.custom_jvp
def _fast_softplus(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0.0) + log1p_of_unit(jnp.exp(-jnp.abs(x)))


@_fast_softplus.defjvp
def _fast_softplus_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return _fast_softplus(x), jax.nn.sigmoid(x) * x_dot


def softplus(x: jax.Array) -> jax.Array:
    """`jax.nn.softplus(x)` = log(1 + exp(x)), elementwise; derivative sigmoid(x).

    The fast form is max(x, 0) + log1p_of_unit(exp(-|x|)), accurate for any finite x (within
    2.1 ulps in float32). `jax.nn.softplus` goes through `jnp.logaddexp` and `log1p`, which
    XLA:CPU runs several times slower. Softplus is the elementwise pass over every decoder
    output, so it sets the speed of the importance-sampled NLL (W4 of benchmarks/, K x 784 of
    them per image) and is on the critical path of every Bernoulli training step. The
    derivative is given explicitly: differentiating the expression would give 0 instead of 1/2
    at x = 0 and lose sigmoid(x)'s relative precision for x << 0.
    """
    return _fast_softplus(x) if enabled() else jax.nn.softplus(x)


# --------------------------------------------------------------------------- reductions


def _dot_ones(x_rc: jax.Array) -> jax.Array:
    """x_rc @ 1 [R]. The ones are opaque (`optimization_barrier`) so the simplifier cannot turn
    the product back into a reduction; HIGHEST precision: no bfloat16/TF32 rounding."""
    ones_c = lax.optimization_barrier(jnp.ones(x_rc.shape[1], x_rc.dtype))
    return jnp.dot(x_rc, ones_c, precision=lax.Precision.HIGHEST)


def sum_non_batch(x_b_etc: jax.Array) -> jax.Array:
    """Sums over every axis except the leading batch axis: [B, ...] -> [B] (`jnp.sum`).

    The fast form flattens to [B, D] and takes the matrix-vector product [B, D] @ 1_D. As a
    reduction, XLA:CPU computes the summed terms (the per-pixel log-likelihood) inside the
    reduction's loop, where softplus ran 2-3x slower than in a loop of its own; as a product it
    gives them their own vectorised loop. In one process, interleaved: W4 of benchmarks/ 78 ->
    97 images/s, W2 unchanged (57k).
    """
    if not enabled():
        return jnp.sum(x_b_etc, axis=tuple(range(1, x_b_etc.ndim)))
    return _dot_ones(x_b_etc.reshape(x_b_etc.shape[0], -1))


def global_norm(tree) -> jax.Array:
    """sqrt(sum of squares of every element of every leaf), `optax.tree.norm` (formerly
    `optax.global_norm`).

    The fast form takes a matrix's sum of squares as the product (x * x) @ 1 @ 1, a
    matrix-vector product XLA:CPU runs as one fused pass; a plain `sum(x * x)` over a large
    matrix becomes a tree of 32 x 32 reduce-windows there, which took several times longer. On
    W2 of benchmarks/ (the non-finite check and the `grad_norm` metric of every step) this made
    the training step 11% faster. Other leaves are summed directly, in float32.
    """
    if not enabled():
        return optax.tree.norm(tree)
    total = jnp.float32(0.0)
    for x in jax.tree.leaves(tree):
        x = x.astype(jnp.float32)
        if x.ndim >= 2:
            x_rc = x.reshape(-1, x.shape[-1])
            row_sums_r = _dot_ones(x_rc * x_rc)
            ones_r = lax.optimization_barrier(jnp.ones(row_sums_r.shape[0], jnp.float32))
            total = total + jnp.dot(ones_r, row_sums_r, precision=lax.Precision.HIGHEST)
        else:
            total = total + jnp.sum(x * x)
    return jnp.sqrt(total)


# --------------------------------------------------------------------------- mixture densities

# How many entries of each row `gaussian_log_density_table` recomputes exactly.
EXACT_TOP = 8


def gaussian_log_density_table(z_nz: jax.Array, mean_cz: jax.Array, logvar_cz: jax.Array, *,
                               log_weights_c: jax.Array | None = None) -> jax.Array:
    """[N, C]: log w_c + log N(z_n; mean_c, diag exp(logvar_c)) for every n and c, nats summed
    over Z: `distributions.gaussian_log_density(z_nz[:, None, :], mean_cz, logvar_cz)` plus the
    mixture weights `log_weights_c` (none: 0), the table a Gaussian mixture's density takes its
    logsumexp over (the VampPrior's, C = 500).

    The library form is that [N, C, Z] elementwise pass. The fast form expands the square:
    with P = exp(-logvar),

        table = -1/2 [ (z * z) @ P^T - 2 z @ (mean * P)^T + sum_j (mean^2 P + logvar + log 2 pi) ]

    two [N, Z] @ [Z, C] products. The expansion loses float32 digits to cancellation when
    components are narrow (absolute error about eps * sum_j (z_j^2 + mean_j^2) P_j: measured
    7e-4 nats at logvar >= -4, 0.14 at logvar >= -10 for z of order 1), so the `EXACT_TOP`
    largest entries of each row, the ones a logsumexp over c is made of, are recomputed
    elementwise; the rest weigh into a logsumexp only by their share of the row's mass. Then the
    logsumexp agrees with the library form's to 6e-5 nats at logvar >= -10 (tests/
    test_fastpath.py). VampPrior training step table, N = 100, C = 500, Z = 40, forward and
    gradient: 12.8 -> 0.9 ms (benchmarks/README.md).
    """
    from vae_jax import distributions  # noqa: PLC0415 (distributions imports this module)

    log_weights_c = 0.0 if log_weights_c is None else log_weights_c
    if not enabled():
        return (distributions.gaussian_log_density(z_nz[:, None, :], mean_cz, logvar_cz)
                + log_weights_c)
    highest = lax.Precision.HIGHEST
    precision_cz = jnp.exp(-logvar_cz)
    quadratic_nc = (jnp.matmul(z_nz * z_nz, precision_cz.T, precision=highest)
                    - 2.0 * jnp.matmul(z_nz, (mean_cz * precision_cz).T, precision=highest)
                    + jnp.sum(mean_cz * mean_cz * precision_cz, axis=-1))
    constant_c = jnp.sum(logvar_cz, axis=-1) + z_nz.shape[-1] * math.log(2 * math.pi)
    table_nc = -0.5 * (quadratic_nc + constant_c) + log_weights_c
    _, top_nk = lax.top_k(lax.stop_gradient(table_nc), min(EXACT_TOP, table_nc.shape[-1]))
    exact_nk = distributions.gaussian_log_density(z_nz[:, None, :], mean_cz[top_nk],
                                                  logvar_cz[top_nk])
    if jnp.ndim(log_weights_c):
        exact_nk = exact_nk + log_weights_c[top_nk]
    return table_nc.at[jnp.arange(table_nc.shape[0])[:, None], top_nk].set(exact_nk)


# --------------------------------------------------------------------------- the optimiser


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                  ) -> optax.GradientTransformation:
    """Adam's scaling (Kingma & Ba 2015, Algorithm 1), `optax.scale_by_adam(b1, b2, eps)`.

        m_t = b1 m_{t-1} + (1 - b1) g_t,   v_t = b2 v_{t-1} + (1 - b2) g_t^2,
        u_t = m_t c1 / (sqrt(v_t c2) + eps),   c1 = 1 / (1 - b1^t),  c2 = 1 / (1 - b2^t).

    The form is chosen when this is called. optax divides every element by 1 - b1^t and by
    1 - b2^t; XLA does not turn a division by a scalar into a multiplication (it rounds
    differently), so each Adam update carried three divisions and a square root per parameter,
    the costliest part of the update on CPU. In the fast form the bias corrections are scalar
    reciprocals, so one division and one square root remain. The results equal optax's to
    float32 rounding, and the state is optax's `ScaleByAdamState`, so either form reads the
    other's checkpoints. On W2 of benchmarks/ (batch-20 MLP) the training step ran 5% faster
    with XLA's default 256-bit vectors and 8% faster with 512-bit ones.
    """
    if not enabled():
        return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

    def init(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                      mu=optax.tree.zeros_like(params),
                                      nu=optax.tree.zeros_like(params))

    def update(grads, state, params=None):
        del params
        mu = optax.tree.update_moment(grads, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        c1 = 1.0 / (1.0 - b1 ** t)
        c2 = 1.0 / (1.0 - b2 ** t)
        updates = jax.tree.map(lambda m, v: m * c1 / (jnp.sqrt(v * c2) + eps), mu, nu)
        return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def where_finite(finite: jax.Array, update: Callable[[], Any], keep: Callable[[], Any], *,
                 scanned: bool) -> Any:
    """`update()` if `finite` (a scalar bool) else `keep()`, two pytrees of the same structure:
    the choice at the heart of `optax.apply_if_finite`.

    Library form: both computed and the result picked leaf by leaf with `jnp.where`, as optax
    does (`where` selects and does not blend, so NaNs in the discarded update never reach the
    result). Fast form, for a step inside a `lax.scan` of several steps per dispatch
    (`scanned`): one `lax.cond` whose `keep` branch is the identity, so the scanned state is
    updated in place: batch-20 MLP (W2 of benchmarks/) 33-36k images/s, against 22-23k with
    `optax.apply_if_finite` and 25k with the select. For one step per jitted call the select
    was the faster (conv VAE, W3: 9.4k images/s, against 8.4k with `optax.apply_if_finite`
    and 5.9k with the `lax.cond`), so it is used there in both forms.
    """
    if scanned and enabled():
        return lax.cond(finite, lambda _: update(), lambda _: keep(), None)
    return jax.tree.map(functools.partial(jnp.where, finite), update(), keep())


# --------------------------------------------------------------------------- compiler options


@functools.cache
def _host_cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU from /proc/cpuinfo (empty where there is none)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def compiler_options(backend: str | None = None, cpu_flags=None, xla_flags: str | None = None,
                     *, convolutional: bool = False) -> dict[str, Any]:
    """XLA options for the package's jitted programs (`jax.jit(..., compiler_options=...)`);
    none in the library form.

    The fast form, on a CPU backend:
    - with AVX-512, 512-bit vector code (`xla_cpu_prefer_vector_width=512`); XLA's default of
      256 leaves half of every vector register unused in the elementwise fusions (the Adam
      update, the likelihood). On the 2-core AMD EPYC of benchmarks/README.md it made the
      training step of W2 7% faster.
    - for a program with convolutions (`convolutional=True`), no YNNPACK fusions
      (`xla_cpu_experimental_ynn_fusion_type=""`), so XLA's own (Eigen) kernels run the
      convolutions and matrix products. On the same machine the conv VAE's training step (W3)
      ran 1.17-1.20x faster (in one process, interleaved); the MLP steps need YNNPACK's matrix
      products (W2 lost 28% with them restricted), so this is asked only for conv models.
    An option that `XLA_FLAGS` already sets is left to it (a user's choice wins).

    Args:
      backend: default `jax.default_backend()`.
      cpu_flags: the CPU's feature flags; default read from /proc/cpuinfo.
      xla_flags: default the `XLA_FLAGS` environment variable.
      convolutional: whether the program's model has convolutions (`model.VAE.convolutional`).
    """
    if not enabled(backend):
        return {}
    cpu_flags = _host_cpu_flags() if cpu_flags is None else cpu_flags
    xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    options = {}
    if "avx512f" in cpu_flags and "xla_cpu_prefer_vector_width" not in xla_flags:
        options["xla_cpu_prefer_vector_width"] = 512
    if convolutional and "xla_cpu_experimental_ynn_fusion_type" not in xla_flags:
        options["xla_cpu_experimental_ynn_fusion_type"] = ""
    return options
