"""Flax linen encoders and decoders for variational autoencoders.

Modules here are deterministic maps with explicit parameters: no randomness (the
reparameterisation lives in `vae_jax.distributions`) and no losses (`vae_jax.losses`).

- Encoders map a batch `x` [B, ...] to the Gaussian posterior parameters
  `(mean_bz, logvar_bz)`, each [B, Z].
- Decoders map `z_bz` [B, Z] to unconstrained outputs [B, *output_shape] with no final
  activation: logits or likelihood parameters, interpreted by the likelihood in the loss. A
  likelihood with P parameters per pixel asks for `output_shape=(H, W, C * P)`.
- A decoder takes the same architecture keyword arguments as its encoder (`hidden`,
  `features`, `kernel_size`, `strides`, ...) and mirrors them, so one config section can
  build both halves.

All module attributes are hashable (sequences are stored as tuples), so a module instance can be
a static argument of `jax.jit`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import canonicalize_padding
from jax import lax

Array = jax.Array
Initializer = jax.nn.initializers.Initializer


def _as_tuple(module: nn.Module, *fields: str) -> None:
    """Stores list-valued attributes as tuples so the module stays hashable."""
    for field in fields:
        value = getattr(module, field)
        if not isinstance(value, (int, str)):
            object.__setattr__(module, field, tuple(value))


# ----------------------------------------------------------------------------------------------
# Activations and initialisers
# ----------------------------------------------------------------------------------------------

_LEAKY_RELU_SLOPE = 0.01


def _identity(x: Array) -> Array:
    return x


def _gelu_exact(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


def _leaky_relu(x: Array) -> Array:
    return jax.nn.leaky_relu(x, negative_slope=_LEAKY_RELU_SLOPE)


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": _leaky_relu,
    "elu": jax.nn.elu,
    "gelu": _gelu_exact,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "selu": jax.nn.selu,
    "linear": _identity,
}

# Gains g such that Var[w] = g^2 / fan_in keeps activations at unit scale through the layer
# (PyTorch `torch.nn.init.calculate_gain` convention where it defines one).
_GAINS: dict[str, float] = {
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1.0 + _LEAKY_RELU_SLOPE**2)),
    # PyTorch defines no gain for elu/gelu/silu. They equal ReLU for large positive inputs and
    # are near zero for large negative ones, so they take the ReLU gain.
    "elu": math.sqrt(2.0),
    "gelu": math.sqrt(2.0),
    "silu": math.sqrt(2.0),
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "selu": 3.0 / 4.0,
    "linear": 1.0,
}

_KERNEL_INITS = (
    "lecun_normal",
    "kaiming_normal",
    "he_normal",
    "kaiming_uniform",
    "he_uniform",
    "glorot_normal",
    "xavier_normal",
    "glorot_uniform",
    "xavier_uniform",
)


def get_activation(name: str) -> Callable[[Array], Array]:
    """Returns the elementwise activation called `name`.

    Valid names: relu, leaky_relu (negative slope 0.01), elu, gelu (exact erf form, as PyTorch's
    default), silu, tanh, sigmoid, selu, linear (identity).

    Raises:
      ValueError: if `name` is unknown; the message lists the valid names.
    """
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def activation_gain(activation: str) -> float:
    """The initialisation gain g for `activation` (see `get_kernel_init`)."""
    if activation not in _GAINS:
        raise ValueError(f"unknown activation {activation!r}; valid names: {sorted(_GAINS)}")
    return _GAINS[activation]


def get_kernel_init(name: str, activation: str = "relu") -> Initializer:
    """Returns the kernel initialiser called `name`, scaled for `activation` where that applies.

    With fan_in = (receptive field size) * (input features) and
    fan_avg = (fan_in + fan_out) / 2, as computed by `jax.nn.initializers.variance_scaling`:

    - "lecun_normal": Flax's default, `jax.nn.initializers.lecun_normal()`, a truncated normal
      with std 1 / sqrt(fan_in) (LeCun et al., 1998). Ignores `activation`.
    - "kaiming_normal" / "he_normal": N(0, g^2 / fan_in), i.e. std g / sqrt(fan_in)
      (He et al., 2015, eq. 10; PyTorch `kaiming_normal_`, untruncated).
    - "kaiming_uniform" / "he_uniform": U(-b, b) with b = g * sqrt(3 / fan_in), so the variance
      is again g^2 / fan_in (PyTorch `kaiming_uniform_`); b = sqrt(6 / fan_in) for relu.
    - "glorot_normal" / "xavier_normal": `jax.nn.initializers.glorot_normal()`, truncated normal
      with std 1 / sqrt(fan_avg) (Glorot & Bengio, 2010). Ignores `activation`.
    - "glorot_uniform" / "xavier_uniform": U(-b, b), b = sqrt(3 / fan_avg). Ignores `activation`.

    The gain g follows PyTorch's `calculate_gain`: relu sqrt(2), leaky_relu
    sqrt(2 / (1 + 0.01^2)), tanh 5/3, selu 3/4, sigmoid and linear 1. PyTorch defines none for
    elu, gelu and silu; this module uses the ReLU gain sqrt(2) for them.

    The Kaiming variants are `jax.nn.initializers.variance_scaling(scale=g**2, mode="fan_in",
    distribution="normal" | "uniform")`.

    Raises:
      ValueError: if `name` or `activation` is unknown; the message lists the valid names.
    """
    if name not in _KERNEL_INITS:
        raise ValueError(f"unknown kernel_init {name!r}; valid names: {sorted(_KERNEL_INITS)}")
    gain = activation_gain(activation)
    if name == "lecun_normal":
        return jax.nn.initializers.lecun_normal()
    if name in ("kaiming_normal", "he_normal"):
        return jax.nn.initializers.variance_scaling(gain**2, "fan_in", "normal")
    if name in ("kaiming_uniform", "he_uniform"):
        return jax.nn.initializers.variance_scaling(gain**2, "fan_in", "uniform")
    if name in ("glorot_normal", "xavier_normal"):
        return jax.nn.initializers.glorot_normal()
    return jax.nn.initializers.glorot_uniform()


# ----------------------------------------------------------------------------------------------
# Transposed convolution via the sub-pixel (phase) decomposition
# ----------------------------------------------------------------------------------------------


def _conv_transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """Padding (low, high) of the dilated input that `lax.conv_transpose` uses for 'SAME'/'VALID'.

    Same rule as `jax._src.lax.convolution._conv_transpose_padding`, restated here because that
    function is private; the tests check the results agree with `flax.linen.ConvTranspose`.
    """
    if padding == "SAME":
        pad_len = k + s - 2
        pad_lo = k - 1 if s > k - 1 else -(-pad_len // 2)
    elif padding == "VALID":
        pad_len = k + s - 2 + max(k - s, 0)
        pad_lo = k - 1
    else:
        raise ValueError(f"padding must be 'SAME', 'VALID' or (low, high) pairs, got {padding!r}")
    return pad_lo, pad_len - pad_lo


class _AxisPlan(NamedTuple):
    """Sub-pixel decomposition of one spatial axis (see `ConvTranspose` for the derivation).

    Phase r of the output (positions o = s * q + r) is a stride-1 correlation of the input with
    taps `first_tap[r] + s * m` for m < `n_taps[r]`, shifted by `offset[r]` input pixels.
    Every phase is computed for `phase_len` positions; the interleaved result is cropped to
    `out_len`.
    """

    stride: int
    in_len: int
    first_tap: tuple[int, ...]
    n_taps: tuple[int, ...]
    offset: tuple[int, ...]
    phase_len: int
    out_len: int

    def conv_padding(self, window_lo: int, window: int) -> tuple[int, int]:
        """(low, high) padding of a stride-1 conv over input offsets window_lo + [0, window)."""
        return -window_lo, self.phase_len - self.in_len + window_lo + window - 1


def _axis_plan(n: int, k: int, s: int, pad_lo: int, pad_hi: int) -> _AxisPlan:
    """Plans one spatial axis: input length n, kernel k, stride s, dilated-input padding."""
    out_len = (n - 1) * s + 1 + pad_lo + pad_hi - k + 1
    if out_len < 1:
        raise ValueError(f"transposed convolution of length {n} with kernel {k} is empty")
    # First tap t meeting an input pixel for outputs o = r (mod s): o + t - pad_lo = 0 (mod s).
    first_tap = tuple((pad_lo - r) % s for r in range(s))
    return _AxisPlan(
        stride=s,
        in_len=n,
        first_tap=first_tap,
        n_taps=tuple(len(range(t0, k, s)) for t0 in first_tap),
        offset=tuple((r + t0 - pad_lo) // s for r, t0 in enumerate(first_tap)),  # exact division
        phase_len=-(-out_len // s),
        out_len=out_len,
    )


def _conv_stride1(
    x: Array, kernel: Array, paddings: Sequence[tuple[int, int]], precision: Any
) -> Array:
    """Stride-1 channels-last convolution with any (also negative) padding.

    XLA:CPU returns wrong f32 results for convolutions with negative low padding
    (openxla/xla#48713). The convolution's input gradient pads by (window - 1 - padding), so the
    convolution itself only pads within [0, window - 1] per side; `lax.pad` (whose transpose is
    a slice) crops or pads the rest.
    """
    nd = kernel.ndim - 2
    conv_pads = [
        (min(max(lo, 0), k - 1), min(max(hi, 0), k - 1))
        for (lo, hi), k in zip(paddings, kernel.shape[:nd])
    ]
    extra = [(lo - c_lo, hi - c_hi, 0) for (lo, hi), (c_lo, c_hi) in zip(paddings, conv_pads)]
    if any(e != (0, 0, 0) for e in extra):
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + extra + [(0, 0, 0)])
    spatial = tuple(range(1, nd + 1))
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,) * nd,
        padding=conv_pads,
        dimension_numbers=lax.ConvDimensionNumbers(
            lhs_spec=(0, nd + 1) + spatial,
            rhs_spec=(nd + 1, nd) + tuple(range(nd)),
            out_spec=(0, nd + 1) + spatial,
        ),
        precision=precision,
    )


def _phases_fused(x: Array, kernel: Array, plans: Sequence[_AxisPlan], precision: Any) -> Array:
    """All phases from one stride-1 conv: [B, *phase_len, prod(strides), C_out].

    Each phase's sub-kernel is placed in a common window spanning every phase's offsets, with
    zero taps where a phase has none, and the phases are stacked on the output channels.
    """
    nd = len(plans)
    c_in, c_out = kernel.shape[nd], kernel.shape[nd + 1]
    # Index k on each axis reads an appended zero tap.
    window_kernel = jnp.pad(kernel, [(0, 1)] * nd + [(0, 0), (0, 0)])
    paddings = []
    for axis, plan in enumerate(plans):
        k = kernel.shape[axis]
        used = [r for r in range(plan.stride) if plan.n_taps[r] > 0]
        window_lo = min(plan.offset[r] for r in used)
        window = max(plan.offset[r] + plan.n_taps[r] for r in used) - window_lo
        taps = np.full((window, plan.stride), k, dtype=np.int32)  # [window position, phase]
        for r in used:
            start = plan.offset[r] - window_lo
            taps[start : start + plan.n_taps[r], r] = range(plan.first_tap[r], k, plan.stride)
        window_kernel = jnp.take(window_kernel, taps, axis=2 * axis)
        paddings.append(plan.conv_padding(window_lo, window))
    # Axes are now (window_1, s_1, ..., window_n, s_n, C_in, C_out).
    order = [2 * i for i in range(nd)] + [2 * nd] + [2 * i + 1 for i in range(nd)] + [2 * nd + 1]
    window_kernel = jnp.transpose(window_kernel, order)
    n_phases = math.prod(plan.stride for plan in plans)
    window_kernel = window_kernel.reshape(window_kernel.shape[:nd] + (c_in, n_phases * c_out))
    y = _conv_stride1(x, window_kernel, paddings, precision)
    return y.reshape(y.shape[:-1] + (n_phases, c_out))


def _phases_separate(x: Array, kernel: Array, plans: Sequence[_AxisPlan], precision: Any) -> Array:
    """One stride-1 conv per phase on its own sub-kernel: [B, *phase_len, prod(strides), C_out]."""
    phase_shape = (x.shape[0],) + tuple(plan.phase_len for plan in plans) + (kernel.shape[-1],)
    phases = []
    for phase in itertools.product(*(range(plan.stride) for plan in plans)):
        if any(plan.n_taps[r] == 0 for plan, r in zip(plans, phase)):
            # No tap reaches these outputs (kernel smaller than stride): only the bias remains.
            phases.append(jnp.zeros(phase_shape, jnp.result_type(x, kernel)))
            continue
        sub_kernel = kernel[
            tuple(slice(plan.first_tap[r], None, plan.stride) for plan, r in zip(plans, phase))
        ]
        paddings = [
            plan.conv_padding(plan.offset[r], plan.n_taps[r]) for plan, r in zip(plans, phase)
        ]
        phases.append(_conv_stride1(x, sub_kernel, paddings, precision))
    return jnp.stack(phases, axis=-2)


# Below this many output channels of the fused convolution (phases * C_out) the fused form is
# faster on CPU; above it the separate convolutions win by skipping the zero taps. Measured with
# benchmarks/conv_transpose.py-style timings of value_and_grad on 2 CPU cores.
_FUSE_MAX_CHANNELS = 16


def sub_pixel_conv_transpose(
    x: Array,
    kernel: Array,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    precision: Any = None,
    fused: bool | None = None,
) -> Array:
    """`lax.conv_transpose(x, kernel, strides, padding)` computed with stride-1 convolutions.

    Args:
      x: input [B, *spatial, C_in], channels last.
      kernel: [*kernel_size, C_in, C_out], the layout of `lax.conv_transpose` with
        `transpose_kernel=False` (no spatial flip).
      strides: one upsampling factor per spatial axis.
      padding: 'SAME', 'VALID', or one (low, high) pair per spatial axis, with the meaning
        `lax.conv_transpose` gives them.
      precision: passed to `lax.conv_general_dilated`.
      fused: True computes all prod(strides) phases with one convolution over a common window
        (zero taps included); False with one convolution per phase on its exact sub-kernel.
        None picks fused when prod(strides) * C_out <= 16, where it measured faster on CPU.

    Returns:
      [B, *out_spatial, C_out], equal to `lax.conv_transpose` up to float rounding. See
      `ConvTranspose` for the decomposition.
    """
    nd = kernel.ndim - 2
    kernel_size = kernel.shape[:nd]
    if isinstance(padding, str):
        pads = [_conv_transpose_padding(k, s, padding) for k, s in zip(kernel_size, strides)]
    else:
        pads = [tuple(p) for p in padding]
    plans = [
        _axis_plan(n, k, s, lo, hi)
        for n, k, s, (lo, hi) in zip(x.shape[1:-1], kernel_size, strides, pads)
    ]
    c_out = kernel.shape[-1]
    if fused is None:
        fused = math.prod(strides) * c_out <= _FUSE_MAX_CHANNELS
    compute_phases = _phases_fused if fused else _phases_separate
    y = compute_phases(x, kernel, plans, precision)  # [B, *phase_len, prod(strides), C_out]

    # Depth-to-space: output position s * q + r of each axis is phase r at position q.
    batch, phase_lens = y.shape[0], y.shape[1 : nd + 1]
    y = y.reshape((batch,) + phase_lens + tuple(strides) + (c_out,))
    interleaved = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [2 * nd + 1]
    y = jnp.transpose(y, interleaved)
    y = y.reshape((batch,) + tuple(q * s for q, s in zip(phase_lens, strides)) + (c_out,))
    return y[(slice(None),) + tuple(slice(0, plan.out_len) for plan in plans)]


class ConvTranspose(nn.Module):
    """Drop-in replacement for `flax.linen.ConvTranspose` that is fast to differentiate on CPU.

    Computes the same function as `nn.ConvTranspose(transpose_kernel=False)` with the same
    parameters (`kernel` [*kernel_size, C_in, features], `bias` [features]), so parameter trees
    are interchangeable. `nn.ConvTranspose` lowers to a convolution with input (lhs) dilation,
    whose gradient XLA computes on a slow path on CPU (jax-ml/jax#31662, openxla/xla#34273).
    Here the same map is built from ordinary stride-1 convolutions and a depth-to-space
    rearrangement, the sub-pixel convolution of Shi et al. (2016), "Real-Time Single Image and
    Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network"; its
    gradients are stride-1 convolutions too.

    Decomposition, per spatial axis, for input length N, kernel w of size k, stride s and
    padding (p_lo, p_hi) of the s-dilated input (what 'SAME'/'VALID' resolve to in
    `lax.conv_transpose`). The output is

        y[o] = sum_{t, i : s * i = o + t - p_lo} x[i] w[t],
        len(y) = (N - 1) * s + 1 + p_lo + p_hi - k + 1.

    Write o = s * q + r with phase r in [0, s). Only taps t = t0_r + s * m, with
    t0_r = (p_lo - r) mod s, meet an input pixel, so every phase is a stride-1 correlation with
    the sub-kernel w_r[m] = w[t0_r + s * m] (m = 0 .. ceil((k - t0_r) / s) - 1) at offset
    d_r = (r + t0_r - p_lo) / s (an integer by the choice of t0_r):

        y[s * q + r] = sum_m x[q + d_r + m] w_r[m].

    In 2-D there are s_h * s_w phases, each with the outer product of the two axes' tap sets.
    Each phase is computed for ceil(len(y) / s) positions, in one of two forms:

    - fused: the sub-kernels are placed in one window spanning all phases' offsets (zero taps
      where a phase has none) and stacked on the output channels, so one convolution yields
      [B, Q_h, Q_w, s_h * s_w * features]. For kernel 3, stride 2, 'SAME' the window is 2x2:
      16 multiply-adds per input pixel and channel pair instead of 9, but one large convolution.
    - separate: one convolution per phase on its exact sub-kernel (2x2, 2x1, 1x2 and 1x1 for
      kernel 3, stride 2), no wasted multiply-adds, s_h * s_w smaller convolutions.

    The fused form is used when s_h * s_w * features <= 16 (few output channels, where one
    larger convolution is faster on CPU), the separate form otherwise. Depth-to-space then
    interleaves the phases, output [s * q + r] = phase r at q, and crops the surplus rows
    (present only for 'VALID' or explicit padding when s does not divide len(y)).

    Explicit paddings beyond kernel - 1, or negative ones, are applied by `lax.pad` rather than
    by the convolution, because XLA:CPU miscomputes convolutions with negative padding
    (openxla/xla#48713), which the input gradient of such a convolution would contain.

    Attributes:
      features: output channels.
      kernel_size: one int per spatial axis (a bare int means a 1-D kernel, as in Flax).
      strides: int (every axis) or one int per spatial axis (upsampling factors); None means 1.
      padding: 'SAME', 'VALID', an int, or per-axis ints or (low, high) pairs, with the meaning of
        `flax.linen.ConvTranspose`. 'CIRCULAR' is not supported.
      use_bias: add a learned bias [features].
      dtype: computation dtype (None: inferred from inputs and parameters).
      param_dtype: parameter dtype.
      precision: precision of the convolution, see `jax.lax.Precision`.
      kernel_init: initialiser of the kernel [*kernel_size, C_in, features].
      bias_init: initialiser of the bias.
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] | None = None
    padding: str | int | Sequence[int | tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    def __post_init__(self):
        _as_tuple(self, "kernel_size")
        if self.strides is not None:
            _as_tuple(self, "strides")
        if not isinstance(self.padding, (int, str)):
            padding = tuple(p if isinstance(p, int) else tuple(p) for p in self.padding)
            object.__setattr__(self, "padding", padding)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """Applies the transposed convolution.

        Args:
          inputs: [*batch, *spatial, C_in]; any number of leading batch axes (including none).

        Returns:
          [*batch, *out_spatial, features]; out_spatial = strides * spatial for 'SAME'.
        """
        if isinstance(self.kernel_size, int):
            kernel_size = (self.kernel_size,)
        else:
            kernel_size = tuple(self.kernel_size)
        nd = len(kernel_size)
        if self.strides is None:
            strides = (1,) * nd
        elif isinstance(self.strides, int):
            strides = (self.strides,) * nd
        else:
            strides = tuple(self.strides)
        padding = canonicalize_padding(self.padding, nd)
        if padding == "CIRCULAR":
            raise ValueError("ConvTranspose does not support 'CIRCULAR' padding")

        batch_shape = inputs.shape[: inputs.ndim - nd - 1]
        x = inputs.reshape((-1,) + inputs.shape[len(batch_shape) :])

        kernel = self.param(
            "kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = sub_pixel_conv_transpose(x, kernel, strides, padding, precision=self.precision)
        if bias is not None:
            y = y + bias
        return y.reshape(batch_shape + y.shape[1:])


# ----------------------------------------------------------------------------------------------
# Shapes of the convolutional encoder
# ----------------------------------------------------------------------------------------------


def _per_layer(value: int | Sequence[int], n_layers: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n_layers
    value = tuple(value)
    if len(value) != n_layers:
        raise ValueError(f"{name} needs one entry per layer ({n_layers}), got {value}")
    return value


def _conv_spatial_sizes(
    input_hw: Sequence[int],
    n_layers: int,
    kernel_size: int,
    strides: int | Sequence[int],
    padding: str,
) -> list[tuple[int, int]]:
    """Spatial sizes (h, w) before the first and after every strided conv layer."""
    sizes = [tuple(input_hw)]
    for s in _per_layer(strides, n_layers, "strides"):
        if padding == "SAME":
            sizes.append(tuple(-(-n // s) for n in sizes[-1]))
        elif padding == "VALID":
            if min(sizes[-1]) < kernel_size:
                raise ValueError(f"feature map {sizes[-1]} is smaller than kernel {kernel_size}")
            sizes.append(tuple((n - kernel_size) // s + 1 for n in sizes[-1]))
        else:
            raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return sizes


def conv_feature_shape(
    input_shape: Sequence[int],
    features: Sequence[int],
    kernel_size: int,
    strides: int | Sequence[int],
    padding: str = "SAME",
) -> tuple[int, int, int]:
    """Shape (h, w, c) of the last feature map of `ConvEncoder`, from its configuration alone.

    Each layer maps a spatial size n to ceil(n / s) for 'SAME' and floor((n - k) / s) + 1 for
    'VALID' (k the kernel size, s the layer's stride); c = features[-1].

    Args:
      input_shape: (H, W, C) of one input image.
      features: output channels of each conv layer.
      kernel_size: square kernel size of every layer.
      strides: int for every layer, or one int per layer.
      padding: 'SAME' or 'VALID'.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
    if not features:
        raise ValueError("features must name at least one conv layer")
    h, w = _conv_spatial_sizes(input_shape[:2], len(features), kernel_size, strides, padding)[-1]
    return (h, w, features[-1])


def _mirror_crop_start(n_in: int, kernel_size: int, stride: int) -> int:
    """Rows to drop at the start when a 'SAME' transposed conv undoes a 'SAME' conv of size n_in.

    The encoder conv maps n_in to n_out = ceil(n_in / s), padding its input by
    lo = floor(max((n_out - 1) * s + k - n_in, 0) / 2) at the start. The transposed conv
    returns s * n_out >= n_in rows, and input pixel i spreads over rows s * i + p_lo - (k - 1)
    .. s * i + p_lo, with p_lo its 'SAME' padding. Dropping c = p_lo + lo - (k - 1) rows at
    the start places that window where the encoder's window for output i lay, which makes the
    cropped layer, with a spatially flipped kernel, exactly the adjoint (transpose) of the
    encoder layer. c is 0 for even sizes with stride 2; e.g. c = 1 for 7 -> 4, kernel 3.
    """
    n_out = -(-n_in // stride)
    enc_pad_lo = max((n_out - 1) * stride + kernel_size - n_in, 0) // 2
    dec_pad_lo, _ = _conv_transpose_padding(kernel_size, stride, "SAME")
    crop = dec_pad_lo + enc_pad_lo - (kernel_size - 1)
    assert 0 <= crop <= stride * n_out - n_in, (n_in, kernel_size, stride, crop)
    return crop


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _gaussian_heads(h_bf: Array, latent_dim: int, extra_dim: int, kernel_init: str,
                    extra_zero_init: bool = False, logvar_range: Sequence[float] = ()):
    """The linear heads of a Gaussian encoder: (mean_bz, logvar_bz), plus extra_be when
    extra_dim > 0. The heads use the "linear" gain: no nonlinearity follows them; the extra
    head starts at zero (kernel and bias) when `extra_zero_init`. `logvar_range` (lo, hi)
    clips the log-variance head, hardtanh(lo, hi) (the VampPrior code's (-6, 2): standard
    deviations from 0.05 to 2.7; no gradient outside the range); () leaves it linear."""
    head_init = get_kernel_init(kernel_init, "linear")
    mean_bz = nn.Dense(latent_dim, kernel_init=head_init, name="mean")(h_bf)
    logvar_bz = nn.Dense(latent_dim, kernel_init=head_init, name="logvar")(h_bf)
    if logvar_range:
        logvar_bz = jnp.clip(logvar_bz, *logvar_range)
    if not extra_dim:
        return mean_bz, logvar_bz
    extra_init = nn.initializers.zeros if extra_zero_init else head_init
    return mean_bz, logvar_bz, nn.Dense(extra_dim, kernel_init=extra_init, name="extra")(h_bf)


class GatedDense(nn.Module):
    """A gated dense layer (Dauphin et al. 2017; the GatedDense of Tomczak & Welling's VampPrior
    code): x [B, F_in] -> [B, features],

        h = (x W_1 + b_1) * sigmoid(x W_2 + b_2),

    two dense maps ("h" and "gate") with `kernel_init`; the gate is the nonlinearity."""

    features: int
    kernel_init: Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x_bf: Array) -> Array:
        h_bf = nn.Dense(self.features, kernel_init=self.kernel_init, name="h")(x_bf)
        gate_bf = nn.Dense(self.features, kernel_init=self.kernel_init, name="gate")(x_bf)
        return h_bf * jax.nn.sigmoid(gate_bf)


class GatedConv(nn.Module):
    """A gated convolution (Dauphin et al. 2017; the GatedConv2d of Tomczak & Welling's
    VampPrior code): x [B, H, W, C_in] -> [B, H', W', features],

        h = (conv_1(x) + b_1) * sigmoid(conv_2(x) + b_2),

    two 'SAME' convolutions of `kernel_size` and `strides` with `kernel_init`; the gate is the
    nonlinearity."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    kernel_init: Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x_bhwc: Array) -> Array:
        conv = functools.partial(nn.Conv, self.features, (self.kernel_size,) * 2,
                                 strides=(self.strides,) * 2, padding="SAME",
                                 kernel_init=self.kernel_init)
        return conv(name="h")(x_bhwc) * jax.nn.sigmoid(conv(name="gate")(x_bhwc))


def _hidden_layer(width: int, *, gated: bool, init: Initializer, act: Callable, name: str):
    """One hidden layer of the MLPs: dense + activation, or a `GatedDense` (no activation)."""
    if gated:
        return GatedDense(width, kernel_init=init, name=name)
    dense = nn.Dense(width, kernel_init=init, name=name)
    return lambda h_bf: act(dense(h_bf))


class MLPEncoder(nn.Module):
    """Fully connected Gaussian encoder: x [B, ...] -> (mean_bz, logvar_bz), each [B, Z].

    All non-batch axes are flattened, then `hidden` dense layers with `activation`, then two
    linear dense heads. Hidden kernels use `get_kernel_init(kernel_init, activation)`; the heads
    use the gain of "linear", since no nonlinearity follows them.

    Attributes:
      latent_dim: Z.
      hidden: widths of the hidden layers, input side first.
      activation: name for `get_activation`.
      kernel_init: name for `get_kernel_init`.
      extra_dim: E > 0 adds a third linear head [B, E] that a posterior family reads
        (`posteriors.Posterior.extra_dim`: a Cholesky factor's off-diagonal, an IAF context);
        the output is then (mean_bz, logvar_bz, extra_be).
      extra_zero_init: start the extra head at zero (`Posterior.extra_zero_init`: a Cholesky
        off-diagonal that starts at 0 makes q start diagonal).
      gated: hidden layers are `GatedDense` (registered as "gated_mlp"); `activation` then only
        picks the initialiser's gain.
      logvar_range: (lo, hi) clips the log-variance head to [lo, hi] (hardtanh); (): linear.
    """

    latent_dim: int
    hidden: Sequence[int] = (512, 512)
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    extra_dim: int = 0
    extra_zero_init: bool = False
    gated: bool = False
    logvar_range: Sequence[float] = ()

    def __post_init__(self):
        _as_tuple(self, "hidden", "logvar_range")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        act = get_activation(self.activation)
        h_bf = x.reshape((x.shape[0], -1))
        init = get_kernel_init(self.kernel_init, self.activation)
        for i, width in enumerate(self.hidden):
            h_bf = _hidden_layer(width, gated=self.gated, init=init, act=act,
                                 name=f"hidden_{i}")(h_bf)
        return _gaussian_heads(h_bf, self.latent_dim, self.extra_dim, self.kernel_init,
                               self.extra_zero_init, self.logvar_range)


class Discriminator(nn.Module):
    """The FactorVAE discriminator (Kim & Mnih 2018, appendix): z_bz [B, Z] -> logits [B, 2]
    of "drawn from q(z)" (class 0) against "drawn from prod_j q(z_j)" (class 1).

    `hidden` dense layers with leaky ReLU of slope `negative_slope` (0.2, as the paper's and
    disentanglement_lib's six layers of 1000 units), then a linear layer of two logits.
    Kernels use `get_kernel_init(kernel_init, "leaky_relu")`.
    """

    hidden: Sequence[int] = (1000,) * 6
    negative_slope: float = 0.2
    kernel_init: str = "kaiming_normal"

    def __post_init__(self):
        _as_tuple(self, "hidden")
        super().__post_init__()

    @nn.compact
    def __call__(self, z_bz: Array) -> Array:
        h_bf = z_bz
        init = get_kernel_init(self.kernel_init, "leaky_relu")
        for i, width in enumerate(self.hidden):
            h_bf = nn.Dense(width, kernel_init=init, name=f"hidden_{i}")(h_bf)
            h_bf = jax.nn.leaky_relu(h_bf, self.negative_slope)
        head_init = get_kernel_init(self.kernel_init, "linear")
        return nn.Dense(2, kernel_init=head_init, name="logits")(h_bf)


class MLPDecoder(nn.Module):
    """Fully connected decoder: z_bz [B, Z] -> [B, *output_shape], no final activation.

    `hidden` is the encoder's list and is applied in reverse, so the same config builds a
    mirrored pair. Hidden kernels use `get_kernel_init(kernel_init, activation)`; the output
    layer uses the "linear" gain.

    Attributes:
      output_shape: shape of one output, e.g. (H, W, C * P) for P likelihood parameters.
      hidden: hidden widths of the mirrored encoder, input side first.
      activation: name for `get_activation`.
      kernel_init: name for `get_kernel_init`.
      gated: hidden layers are `GatedDense`, as in `MLPEncoder`.
    """

    output_shape: Sequence[int]
    hidden: Sequence[int] = (512, 512)
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    gated: bool = False

    def __post_init__(self):
        _as_tuple(self, "output_shape", "hidden")
        super().__post_init__()

    @nn.compact
    def __call__(self, z_bz: Array) -> Array:
        act = get_activation(self.activation)
        h_bf = z_bz
        init = get_kernel_init(self.kernel_init, self.activation)
        for i, width in enumerate(reversed(self.hidden)):
            h_bf = _hidden_layer(width, gated=self.gated, init=init, act=act,
                                 name=f"hidden_{i}")(h_bf)
        out_bf = nn.Dense(
            math.prod(self.output_shape),
            kernel_init=get_kernel_init(self.kernel_init, "linear"),
            name="output",
        )(h_bf)
        return out_bf.reshape((z_bz.shape[0],) + tuple(self.output_shape))


class ConvEncoder(nn.Module):
    """Convolutional Gaussian encoder: x_bhwc [B, H, W, C] -> (mean_bz, logvar_bz), each [B, Z].

    Layer i is a 'SAME' convolution with `features[i]` channels and stride `strides[i]`
    (downsampling by striding, no pooling) followed by `activation`; then flatten, the optional
    dense `hidden` layers, and two linear dense heads. The last feature map has shape
    `self.feature_shape((H, W, C))`.

    Attributes:
      latent_dim: Z.
      features: channels of each conv layer.
      kernel_size: square kernel size of every conv layer.
      strides: int for every layer, or one int per layer.
      activation: name for `get_activation`.
      kernel_init: name for `get_kernel_init` (heads use the "linear" gain).
      hidden: widths of dense layers between the flattened feature map and the heads.
      extra_dim, extra_zero_init: as in `MLPEncoder`.
      gated: conv and dense layers are `GatedConv` / `GatedDense` (registered as
        "gated_conv"); `activation` then only picks the initialiser's gain. `kernel_size` may
        then also be one size per layer (the VampPrior code's 7, 3, 5, 3, 3).
      logvar_range: as in `MLPEncoder`.
    """

    latent_dim: int
    features: Sequence[int] = (32, 64)
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 2
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    hidden: Sequence[int] = ()
    extra_dim: int = 0
    extra_zero_init: bool = False
    gated: bool = False
    logvar_range: Sequence[float] = ()

    def __post_init__(self):
        _as_tuple(self, "features", "kernel_size", "strides", "hidden", "logvar_range")
        super().__post_init__()

    def feature_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        """(h, w, c) of the last conv feature map for one input of shape (H, W, C)."""
        return conv_feature_shape(input_shape, self.features, 1, self.strides)

    @nn.compact
    def __call__(self, x_bhwc: Array) -> tuple[Array, Array]:
        h_bf = conv_trunk(x_bhwc, features=self.features, kernel_size=self.kernel_size,
                          strides=self.strides, activation=self.activation,
                          kernel_init=self.kernel_init, gated=self.gated, hidden=self.hidden)
        return _gaussian_heads(h_bf, self.latent_dim, self.extra_dim, self.kernel_init,
                               self.extra_zero_init, self.logvar_range)


def conv_trunk(x_bhwc: Array, *, features: Sequence[int], kernel_size: int | Sequence[int],
               strides: int | Sequence[int], activation: str, kernel_init: str, gated: bool,
               hidden: Sequence[int] = ()) -> Array:
    """The conv stack and dense `hidden` layers of `ConvEncoder` (and of the x branch of
    `ConditionalEncoder`), called inside a compact `__call__`, whose module owns the layers
    conv_i and hidden_i: x [B, H, W, C] -> flattened features [B, F]."""
    act = get_activation(activation)
    init = get_kernel_init(kernel_init, activation)
    n = len(features)
    strides = _per_layer(strides, n, "strides")
    kernels = _per_layer(kernel_size, n, "kernel_size")
    h_bhwc = x_bhwc
    for i, (channels, k, stride) in enumerate(zip(features, kernels, strides)):
        if gated:
            h_bhwc = GatedConv(channels, k, stride, kernel_init=init, name=f"conv_{i}")(h_bhwc)
        else:
            h_bhwc = act(nn.Conv(channels, kernel_size=(k, k), strides=(stride, stride),
                                 padding="SAME", kernel_init=init, name=f"conv_{i}")(h_bhwc))
    h_bf = h_bhwc.reshape((h_bhwc.shape[0], -1))
    for i, width in enumerate(hidden):
        h_bf = _hidden_layer(width, gated=gated, init=init, act=act, name=f"hidden_{i}")(h_bf)
    return h_bf


class ConditionalEncoder(nn.Module):
    """The network of q(z_l | x, z_{l+1}) in the VampPrior paper's hierarchy (Tomczak &
    Welling 2018, section 3.3 and its code's `q_z1_layers_x / _z2 / _joint`):

        h_x = trunk(x)                  [B, F]      (dense `x_hidden`, or the conv stack
                                                     `features` when given, as `ConvEncoder`)
        h_z = layer(z_{l+1})            [..., B, F]  (one layer of the trunk's width F)
        h   = joint layers([h_x, h_z])  [..., B, hidden[-1]]
        -> (mean, logvar[, extra]) of q(z_l | ...)   [..., B, Z_l]

    x [B, H, W, C] is passed through the trunk once and broadcast against z [..., B, Z_{l+1}]
    (K samples of z share one pass over x). Layers are `GatedDense` / `GatedConv` with
    `gated`, else dense / conv + `activation`. `logvar_range`: as in `MLPEncoder`.
    """

    latent_dim: int
    hidden: Sequence[int] = (300,)
    x_hidden: Sequence[int] = (300,)
    features: Sequence[int] = ()
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    extra_dim: int = 0
    extra_zero_init: bool = False
    gated: bool = True
    logvar_range: Sequence[float] = ()

    def __post_init__(self):
        _as_tuple(self, "hidden", "x_hidden", "features", "kernel_size", "strides",
                  "logvar_range")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, z_bz: Array):
        act = get_activation(self.activation)
        init = get_kernel_init(self.kernel_init, self.activation)
        if self.features:
            h_x = conv_trunk(x, features=self.features, kernel_size=self.kernel_size,
                             strides=self.strides, activation=self.activation,
                             kernel_init=self.kernel_init, gated=self.gated)
        else:
            h_x = x.reshape((x.shape[0], -1))
            for i, width in enumerate(self.x_hidden):
                h_x = _hidden_layer(width, gated=self.gated, init=init, act=act,
                                    name=f"x_hidden_{i}")(h_x)
        h_z = _hidden_layer(h_x.shape[-1], gated=self.gated, init=init, act=act,
                            name="z_hidden")(z_bz)
        h = jnp.concatenate([jnp.broadcast_to(h_x, h_z.shape), h_z], axis=-1)
        for i, width in enumerate(self.hidden):
            h = _hidden_layer(width, gated=self.gated, init=init, act=act,
                              name=f"hidden_{i}")(h)
        return _gaussian_heads(h, self.latent_dim, self.extra_dim, self.kernel_init,
                               self.extra_zero_init, self.logvar_range)


class SkipDecoder(nn.Module):
    """A decoder of several latent groups: z [N, sum(latent_splits)] -> [N, *output_shape], the
    network of p(x | z_1, ..., z_L) in the VampPrior paper's hierarchy (its code's
    `p_x_layers_z1 / _z2 / _joint`), and with one group its gated conv decoder:

        h_l = layer_l(z_l)                 each of width `branch_width`
        h   = joint layers([h_1, ..., h_L])  widths `hidden`
        out = dense output                 (no `features`), or, with `features`:
              h reshaped to (H, W, C) of the output's image (the last hidden width must be
              H * W * C), the 3x3 stride-1 convolutions `features`, a 1x1 output convolution.

    Layers are `GatedDense` / `GatedConv` with `gated`; the output layer is linear.
    """

    output_shape: Sequence[int]
    latent_splits: Sequence[int]
    branch_width: int = 300
    hidden: Sequence[int] = (300,)
    features: Sequence[int] = ()
    image_channels: int = 1
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    gated: bool = True

    def __post_init__(self):
        _as_tuple(self, "output_shape", "latent_splits", "hidden", "features")
        super().__post_init__()

    @nn.compact
    def __call__(self, z_bz: Array) -> Array:
        if z_bz.shape[-1] != sum(self.latent_splits):
            raise ValueError(f"z has {z_bz.shape[-1]} units; the decoder reads the groups "
                             f"{self.latent_splits}")
        act = get_activation(self.activation)
        init = get_kernel_init(self.kernel_init, self.activation)
        head_init = get_kernel_init(self.kernel_init, "linear")
        cuts = np.cumsum(self.latent_splits)[:-1].tolist()
        h = jnp.concatenate([
            _hidden_layer(self.branch_width, gated=self.gated, init=init, act=act,
                          name=f"branch_{i}")(part)
            for i, part in enumerate(jnp.split(z_bz, cuts, axis=-1))], axis=-1)
        for i, width in enumerate(self.hidden):
            h = _hidden_layer(width, gated=self.gated, init=init, act=act, name=f"hidden_{i}")(h)
        n = z_bz.shape[0]
        if not self.features:
            out = nn.Dense(math.prod(self.output_shape), kernel_init=head_init, name="output")(h)
            return out.reshape((n,) + tuple(self.output_shape))
        image = tuple(self.output_shape[:2]) + (self.image_channels,)
        if h.shape[-1] != math.prod(image):
            raise ValueError(f"the last hidden layer ({h.shape[-1]} units) must reshape to the "
                             f"image {image}: set its width to {math.prod(image)}")
        h = h.reshape((n,) + image)
        for i, channels in enumerate(self.features):
            if self.gated:
                h = GatedConv(channels, 3, 1, kernel_init=init, name=f"conv_{i}")(h)
            else:
                h = act(nn.Conv(channels, (3, 3), padding="SAME", kernel_init=init,
                                name=f"conv_{i}")(h))
        return nn.Conv(self.output_shape[-1], (1, 1), kernel_init=head_init, name="output")(h)


class ConvDecoder(nn.Module):
    """Convolutional decoder mirroring `ConvEncoder`: z_bz [B, Z] -> [B, *output_shape].

    Takes the encoder's configuration and runs it backwards: dense layers `reversed(hidden)`,
    a dense projection to the encoder's last feature map `conv_feature_shape(...)` (reshaped to
    [B, h, w, features[-1]]), then one `ConvTranspose` per encoder conv layer in reverse order,
    each 'SAME' with that layer's stride and producing the channels of that layer's input
    (`features[i - 1]`, and `output_shape[-1]` for the first layer). When the encoder rounded an
    odd size up (7 -> 4), the transposed conv returns the even size (8), and
    `_mirror_crop_start` rows are dropped at the start and the rest at the end, which makes each
    decoder layer the geometric transpose of its encoder layer. Every layer but the last is
    followed by `activation`; the output has none (logits or likelihood parameters).

    Attributes:
      output_shape: (H, W, C_out) with C_out = C * P for P likelihood parameters per pixel.
      features: the ENCODER's conv channels, input side first; mirrored here.
      kernel_size: square kernel size of every transposed conv.
      strides: the encoder's strides (int or one per layer).
      activation: name for `get_activation`.
      kernel_init: name for `get_kernel_init` (output layer uses the "linear" gain).
      hidden: the encoder's dense hidden widths; applied in reverse.
    """

    output_shape: Sequence[int]
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    strides: int | Sequence[int] = 2
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    hidden: Sequence[int] = ()

    def __post_init__(self):
        _as_tuple(self, "output_shape", "features", "strides", "hidden")
        super().__post_init__()

    @nn.compact
    def __call__(self, z_bz: Array) -> Array:
        if len(self.output_shape) != 3:
            raise ValueError(f"output_shape must be (H, W, C), got {self.output_shape}")
        act = get_activation(self.activation)
        init = get_kernel_init(self.kernel_init, self.activation)
        n_layers = len(self.features)
        strides = _per_layer(self.strides, n_layers, "strides")
        sizes = _conv_spatial_sizes(
            self.output_shape[:2], n_layers, self.kernel_size, strides, "SAME"
        )
        h, w = sizes[-1]

        h_bf = z_bz
        for i, width in enumerate(reversed(self.hidden)):
            h_bf = act(nn.Dense(width, kernel_init=init, name=f"hidden_{i}")(h_bf))
        h_bf = act(nn.Dense(h * w * self.features[-1], kernel_init=init, name="project")(h_bf))
        h_bhwc = h_bf.reshape((z_bz.shape[0], h, w, self.features[-1]))

        out_channels = (self.output_shape[-1],) + tuple(self.features[:-1])
        for j, layer in enumerate(reversed(range(n_layers))):
            is_last = layer == 0
            h_bhwc = ConvTranspose(
                out_channels[layer],
                kernel_size=(self.kernel_size, self.kernel_size),
                strides=(strides[layer], strides[layer]),
                padding="SAME",
                kernel_init=get_kernel_init(self.kernel_init, "linear") if is_last else init,
                name=f"deconv_{j}",
            )(h_bhwc)
            target_h, target_w = sizes[layer]
            top = _mirror_crop_start(target_h, self.kernel_size, strides[layer])
            left = _mirror_crop_start(target_w, self.kernel_size, strides[layer])
            h_bhwc = h_bhwc[:, top : top + target_h, left : left + target_w, :]
            if not is_last:
                h_bhwc = act(h_bhwc)
        return h_bhwc


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLPEncoder, "gated_mlp": functools.partial(MLPEncoder, gated=True),
    "conv": ConvEncoder, "gated_conv": functools.partial(ConvEncoder, gated=True)}
DECODERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLPDecoder, "gated_mlp": functools.partial(MLPDecoder, gated=True),
    "conv": ConvDecoder}
# The gated conv decoder (`SkipDecoder` with `features`) is built by `model.build_model`, which
# knows the latent groups it reads.


def make_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Builds the encoder registered as `name` in `ENCODERS` with keyword arguments `kwargs`."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid names: {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)


def make_decoder(name: str, **kwargs: Any) -> nn.Module:
    """Builds the decoder registered as `name` in `DECODERS` with keyword arguments `kwargs`."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; valid names: {sorted(DECODERS)}")
    return DECODERS[name](**kwargs)


def set_output_bias(decoder: nn.Module, variables, bias_f) -> Any:
    """`variables` of `decoder` with the bias of its output layer replaced by `bias_f`.

    For decoders whose last layer is dense, with one output unit per data value
    (`MLPDecoder`, also the p(x | z_1) network of a model of several layers): that layer computes
    out_f = sum_j h_j W_jf + bias_f, so `bias_f` [F] (F = prod(output_shape), in the order of
    `out.reshape(B, -1)`) is what the decoder outputs when its last hidden layer is zero. Used
    to start the likelihood at the data's pixel means (`losses.data_mean_output_bias`).
    Every other leaf is returned unchanged. A convolutional decoder has one bias per channel,
    not per pixel, and is refused.
    """
    if isinstance(decoder, MLPDecoder) or (isinstance(decoder, SkipDecoder)
                                           and not decoder.features):
        path = ("params", "output")
    else:
        raise ValueError(
            f"an output bias per data value needs a dense output layer (MLPDecoder); "
            f"{type(decoder).__name__} has one bias per channel"
        )
    layer = variables
    for name in path:
        layer = layer[name]
    bias_f = jnp.asarray(bias_f, layer["bias"].dtype)
    if bias_f.shape != layer["bias"].shape:
        raise ValueError(
            f"output bias of shape {bias_f.shape} for a decoder with {layer['bias'].shape[0]} "
            f"outputs (output_shape={tuple(decoder.output_shape)})"
        )

    def replace(tree, names):
        tree = dict(tree)
        tree[names[0]] = replace(tree[names[0]], names[1:]) if len(names) > 1 else bias_f
        return tree

    return replace(variables, path + ("bias",))
