"""Tests for vae_jax.models: shapes, parameter counts, initialisers, sub-pixel ConvTranspose."""

import itertools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax import lax

from vae_jax import models

LATENT_DIM = 3
BATCH = 2
IMAGE_SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]


def _dense_params(n_in, n_out):
    return n_in * n_out + n_out


def _conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def _n_params(module, x):
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


def _random_variables(module, x, seed=0):
    """Variables shaped as `module.init` makes them, drawn by numpy: N(0, 0.1^2).

    Compiling the modules' initialisers for every shape would dominate the test time; the
    initialisers themselves are tested below.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.tree.map(
        lambda leaf: 0.1 * rng.standard_normal(leaf.shape).astype(np.float32), shapes
    )


def _small_config(name):
    if name == "mlp":
        return {"hidden": (16, 8)}
    # Three stride-2 layers take 28 -> 14 -> 7 -> 4 (an odd intermediate size) and 8 -> 1.
    return {"features": (4, 8, 8), "kernel_size": 3, "strides": 2, "hidden": (8,)}


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("image_shape", IMAGE_SHAPES)
def test_encoder_decoder_shapes_and_round_trip(name, image_shape):
    n_params_per_pixel = 2  # e.g. a Gaussian likelihood: output_shape = (H, W, C * 2)
    config = _small_config(name)
    encoder = models.make_encoder(name, latent_dim=LATENT_DIM, **config)
    output_shape = image_shape[:2] + (image_shape[2] * n_params_per_pixel,)
    decoder = models.make_decoder(name, output_shape=output_shape, **config)
    x_bhwc = jnp.zeros((BATCH,) + image_shape)
    z_bz = jnp.zeros((BATCH, LATENT_DIM))
    enc_vars = _random_variables(encoder, x_bhwc)
    dec_vars = _random_variables(decoder, z_bz)

    @jax.jit  # one compilation instead of one per operation keeps the test fast
    def round_trip(enc_vars, dec_vars, x_bhwc):
        mean_bz, logvar_bz = encoder.apply(enc_vars, x_bhwc)
        return mean_bz, logvar_bz, decoder.apply(dec_vars, mean_bz)

    mean_bz, logvar_bz, out_bhwc = round_trip(enc_vars, dec_vars, x_bhwc)
    chex.assert_shape([mean_bz, logvar_bz], (BATCH, LATENT_DIM))
    chex.assert_shape(out_bhwc, (BATCH,) + output_shape)
    chex.assert_tree_all_finite((mean_bz, logvar_bz, out_bhwc))


@pytest.mark.parametrize(
    "image_shape, strides, expected_hwc",
    [
        ((28, 28, 1), 2, (4, 4, 8)),  # 28 -> 14 -> 7 -> 4
        ((32, 32, 3), 2, (4, 4, 8)),
        ((8, 8, 1), 2, (1, 1, 8)),
        ((7, 9, 2), (2, 1, 2), (2, 3, 8)),  # 7 -> 4 -> 4 -> 2, 9 -> 5 -> 5 -> 3
    ],
)
def test_conv_feature_shape_matches_real_intermediate(image_shape, strides, expected_hwc):
    encoder = models.ConvEncoder(latent_dim=LATENT_DIM, features=(4, 6, 8), strides=strides)
    assert encoder.feature_shape(image_shape) == expected_hwc
    assert models.conv_feature_shape(image_shape, (4, 6, 8), 3, strides) == expected_hwc

    x_bhwc = jax.ShapeDtypeStruct((BATCH,) + image_shape, jnp.float32)
    _, state = jax.eval_shape(
        lambda x: encoder.init_with_output(jax.random.key(0), x, capture_intermediates=True), x_bhwc
    )
    (last_feature_map,) = state["intermediates"]["conv_2"]["__call__"]
    assert last_feature_map.shape == (BATCH,) + expected_hwc


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_feature_shape_matches_flax_conv_stack(padding):
    image_shape, features, kernel_size, strides = (30, 23, 2), (3, 5, 4), 3, (2, 1, 2)
    h_bhwc = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
    for channels, stride in zip(features, strides):
        conv = nn.Conv(channels, (kernel_size, kernel_size), strides=stride, padding=padding)
        h_bhwc, _ = jax.eval_shape(conv.init_with_output, jax.random.key(0), h_bhwc)
    expected = models.conv_feature_shape(image_shape, features, kernel_size, strides, padding)
    assert h_bhwc.shape[1:] == expected


# ----------------------------------------------------------------------------------------------
# Parameter counts, by hand
# ----------------------------------------------------------------------------------------------


def test_parameter_counts():
    z = LATENT_DIM
    cases = [
        # MLP encoder on 3x4x1 (12 inputs), hidden (5,), two heads.
        (
            models.MLPEncoder(latent_dim=z, hidden=(5,)),
            jnp.zeros((1, 3, 4, 1)),
            _dense_params(12, 5) + 2 * _dense_params(5, z),
        ),
        # MLP decoder mirrors hidden (5, 7): z -> 7 -> 5 -> 3 * 4 * 2.
        (
            models.MLPDecoder(output_shape=(3, 4, 2), hidden=(5, 7)),
            jnp.zeros((1, z)),
            _dense_params(z, 7) + _dense_params(7, 5) + _dense_params(5, 24),
        ),
        # Conv encoder on 8x8x1: 8 -> 4 -> 2, feature map 2 * 2 * 6 = 24, hidden 5.
        (
            models.ConvEncoder(latent_dim=z, features=(4, 6), kernel_size=3, hidden=(5,)),
            jnp.zeros((1, 8, 8, 1)),
            _conv_params(3, 1, 4)
            + _conv_params(3, 4, 6)
            + _dense_params(24, 5)
            + 2 * _dense_params(5, z),
        ),
        # Conv decoder to 8x8x2: z -> 5 -> 24 (2x2x6), deconv 6 -> 4, deconv 4 -> 2.
        (
            models.ConvDecoder(output_shape=(8, 8, 2), features=(4, 6), kernel_size=3, hidden=(5,)),
            jnp.zeros((1, z)),
            _dense_params(z, 5)
            + _dense_params(5, 24)
            + _conv_params(3, 6, 4)
            + _conv_params(3, 4, 2),
        ),
    ]
    for module, x, expected in cases:
        assert _n_params(module, x) == expected, module


# ----------------------------------------------------------------------------------------------
# Initialisers
# ----------------------------------------------------------------------------------------------

FAN_IN, FAN_OUT = 1024, 256  # 262,144 weights: the sample std is within ~0.2% of the truth.
STD_RTOL = 0.02


def _dense_kernel(kernel_init):
    layer = nn.Dense(FAN_OUT, kernel_init=kernel_init)
    variables = jax.jit(layer.init)(jax.random.key(0), jnp.zeros((1, FAN_IN)))
    return np.asarray(variables["params"]["kernel"])


@pytest.mark.parametrize(
    "name, activation, expected_std",
    [
        ("kaiming_normal", "relu", math.sqrt(2.0 / FAN_IN)),
        ("he_normal", "relu", math.sqrt(2.0 / FAN_IN)),
        ("kaiming_normal", "tanh", (5.0 / 3.0) / math.sqrt(FAN_IN)),
        ("kaiming_normal", "linear", 1.0 / math.sqrt(FAN_IN)),
        ("kaiming_normal", "leaky_relu", math.sqrt(2.0 / (1.0 + 0.01**2) / FAN_IN)),
        ("lecun_normal", "relu", 1.0 / math.sqrt(FAN_IN)),
        ("glorot_normal", "relu", math.sqrt(2.0 / (FAN_IN + FAN_OUT))),
        ("xavier_normal", "tanh", math.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    ],
)
def test_normal_initialiser_std(name, activation, expected_std):
    kernel = _dense_kernel(models.get_kernel_init(name, activation))
    assert abs(kernel.mean()) < 0.02 * expected_std
    np.testing.assert_allclose(kernel.std(), expected_std, rtol=STD_RTOL)


@pytest.mark.parametrize(
    "name, activation, expected_bound",
    [
        ("kaiming_uniform", "relu", math.sqrt(6.0 / FAN_IN)),
        ("he_uniform", "tanh", (5.0 / 3.0) * math.sqrt(3.0 / FAN_IN)),
        ("glorot_uniform", "relu", math.sqrt(6.0 / (FAN_IN + FAN_OUT))),
        ("xavier_uniform", "relu", math.sqrt(6.0 / (FAN_IN + FAN_OUT))),
    ],
)
def test_uniform_initialiser_bound(name, activation, expected_bound):
    kernel = _dense_kernel(models.get_kernel_init(name, activation))
    # U(-b, b): the extremes of 262,144 draws lie within b * 1e-4 of +-b; std = b / sqrt(3).
    assert np.abs(kernel).max() <= expected_bound
    assert np.abs(kernel).max() > 0.999 * expected_bound
    np.testing.assert_allclose(kernel.std(), expected_bound / math.sqrt(3.0), rtol=STD_RTOL)


def test_conv_initialiser_uses_receptive_field_fan_in():
    fan_in = 3 * 3 * 64
    conv = nn.Conv(128, (3, 3), kernel_init=models.get_kernel_init("kaiming_normal", "relu"))
    kernel = jax.jit(conv.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 64)))["params"]["kernel"]
    np.testing.assert_allclose(np.std(kernel), math.sqrt(2.0 / fan_in), rtol=STD_RTOL)


def test_models_use_activation_gain_in_hidden_layers_and_unit_gain_in_heads():
    encoder = models.MLPEncoder(latent_dim=FAN_OUT, hidden=(FAN_IN,), kernel_init="kaiming_normal")
    params = jax.jit(encoder.init)(jax.random.key(0), jnp.zeros((1, FAN_IN)))["params"]
    np.testing.assert_allclose(
        np.std(params["hidden_0"]["kernel"]), math.sqrt(2.0 / FAN_IN), rtol=STD_RTOL
    )
    for head in ("mean", "logvar"):
        np.testing.assert_allclose(
            np.std(params[head]["kernel"]), 1.0 / math.sqrt(FAN_IN), rtol=STD_RTOL
        )


def test_activations_match_reference_formulas():
    x = np.linspace(-4.0, 4.0, 101)
    expected = {
        "relu": np.maximum(x, 0.0),
        "leaky_relu": np.where(x > 0, x, 0.01 * x),
        "elu": np.where(x > 0, x, np.expm1(x)),
        "gelu": 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0))),
        "silu": x * scipy.special.expit(x),
        "tanh": np.tanh(x),
        "sigmoid": scipy.special.expit(x),
        "linear": x,
    }
    for name, reference in expected.items():
        actual = models.get_activation(name)(jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(actual, reference, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------------------------
# ConvTranspose against flax.linen.ConvTranspose and a float64 loop
# ----------------------------------------------------------------------------------------------


def _assert_matches_flax(kernel_size, strides, padding, c_in, features, in_spatial, use_bias=True):
    """Forward and vjp (input, kernel, bias) of ours equal Flax's on the same parameters."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH,) + in_spatial + (c_in,)).astype(np.float32)
    kwargs = dict(
        features=features,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
    )
    reference, ours = nn.ConvTranspose(**kwargs), models.ConvTranspose(**kwargs)
    # Same parameter names, shapes and dtypes, so parameter trees are interchangeable.
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(ours.init, jax.random.key(0), x),
        jax.eval_shape(reference.init, jax.random.key(0), x),
    )
    variables = _random_variables(reference, x)
    y_shape = jax.eval_shape(reference.apply, variables, x).shape
    cotangent = rng.standard_normal(y_shape).astype(np.float32)

    @jax.jit
    def forward_and_vjps(variables, x, cotangent):
        y_ref, vjp_ref = jax.vjp(reference.apply, variables, x)
        y_ours, vjp_ours = jax.vjp(ours.apply, variables, x)
        return (y_ours, vjp_ours(cotangent)), (y_ref, vjp_ref(cotangent))

    ours_out, reference_out = forward_and_vjps(variables, x, cotangent)
    chex.assert_trees_all_close(ours_out, reference_out, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kernel, stride, padding, c_in, features, size",
    [
        # The MNIST decoder layers; 6 * 1 and 4 * 2 output channels take the fused path.
        (3, 2, "SAME", 6, 1, 7),
        (3, 2, "SAME", 8, 4, 4),
        (4, 2, "SAME", 3, 2, 5),
        (5, 2, "SAME", 3, 3, 4),
        # 4 * features > 16 takes one convolution per phase.
        (3, 2, "SAME", 8, 16, 4),
        (4, 2, "SAME", 5, 6, 3),
        (5, 2, "SAME", 4, 5, 4),
        (3, 1, "SAME", 4, 3, 5),
        (4, 1, "SAME", 2, 20, 4),
        (3, 2, "VALID", 4, 3, 4),
        (4, 2, "VALID", 3, 7, 5),
        (5, 2, "VALID", 2, 2, 3),
        (5, 1, "VALID", 3, 2, 4),
        (2, 3, "SAME", 3, 2, 4),  # kernel smaller than stride: some phases see no tap
        (3, 3, "VALID", 2, 9, 3),
    ],
)
def test_conv_transpose_matches_flax(kernel, stride, padding, c_in, features, size):
    _assert_matches_flax(
        (kernel, kernel), (stride, stride), padding, c_in, features, (size, size + 1)
    )


def test_conv_transpose_matches_flax_other_layouts():
    _assert_matches_flax((3, 4), (2, 1), "SAME", 3, 2, (5, 4))  # anisotropic kernel and stride
    _assert_matches_flax((3,), (2,), "SAME", 3, 5, (6,))  # 1-D
    _assert_matches_flax((3, 3), (2, 2), ((2, 1), (1, 2)), 3, 2, (4, 4))  # explicit padding
    _assert_matches_flax((3, 3), (2, 2), "SAME", 3, 2, (4, 4), use_bias=False)


def _conv_transpose_loops(x, w, strides, pads, cotangent):
    """float64 loops over y[o] = sum_{i, t : s * i = o + t - p_lo} x[i] w[t], and its vjp."""
    _, n_h, n_w, _ = x.shape
    k_h, k_w = w.shape[:2]
    out_h, out_w = cotangent.shape[1:3]
    y = np.zeros(cotangent.shape)
    grad_x, grad_w = np.zeros(x.shape), np.zeros(w.shape)
    for i, j, t, u in itertools.product(range(n_h), range(n_w), range(k_h), range(k_w)):
        o = strides[0] * i + pads[0][0] - t
        p = strides[1] * j + pads[1][0] - u
        if 0 <= o < out_h and 0 <= p < out_w:
            y[:, o, p] += x[:, i, j] @ w[t, u]
            grad_x[:, i, j] += cotangent[:, o, p] @ w[t, u].T
            grad_w[t, u] += x[:, i, j].T @ cotangent[:, o, p]
    return y, grad_x, grad_w


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "kernel, stride, pads",
    [
        (3, 2, ((2, 1), (2, 1))),  # what 'SAME' resolves to
        (4, 2, ((-1, 0), (2, 2))),  # negative padding crops
        (3, 3, ((4, 4), (5, 0))),  # padding beyond kernel - 1
        (5, 2, ((6, 0), (0, 6))),
    ],
)
def test_sub_pixel_conv_transpose_matches_float64_loops(kernel, stride, pads, fused):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 4, 5, 3)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, 3, 2)).astype(np.float32)
    out_shape = [(n - 1) * stride + 1 + lo + hi - kernel + 1 for n, (lo, hi) in zip((4, 5), pads)]
    cotangent = rng.standard_normal((BATCH, *out_shape, 2)).astype(np.float32)
    expected = _conv_transpose_loops(
        x.astype(np.float64),
        w.astype(np.float64),
        (stride, stride),
        pads,
        cotangent.astype(np.float64),
    )

    def conv_transpose(x, w):
        return models.sub_pixel_conv_transpose(x, w, (stride, stride), pads, fused=fused)

    @jax.jit
    def forward_and_vjp(x, w, cotangent):
        y, vjp = jax.vjp(conv_transpose, x, w)
        return (y,) + vjp(cotangent)

    for actual, reference in zip(forward_and_vjp(x, w, cotangent), expected):
        np.testing.assert_allclose(actual, reference, atol=2e-5)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (4, 2), (5, 2), (3, 3), (5, 3), (3, 1)])
def test_mirror_crop_makes_decoder_layer_the_adjoint_of_encoder_layer(kernel, stride):
    """Cropped 'SAME' transposed conv with the flipped kernel == vjp of the 'SAME' encoder conv."""
    rng = np.random.default_rng(0)
    w_enc = rng.standard_normal((kernel, 2, 3)).astype(np.float32)  # [k, C_in, C_out], 1-D
    w_dec = np.flip(w_enc, axis=0).transpose(0, 2, 1)  # flip taps, swap in/out channels
    dimension_numbers = ("NHC", "HIO", "NHC")
    for n_in in (5, 7, 8):
        out_len = -(-n_in // stride)
        cotangent = rng.standard_normal((1, out_len, 3)).astype(np.float32)
        # The encoder conv is linear, so its vjp is its transpose.
        expected = jax.vjp(
            lambda x: lax.conv_general_dilated(
                x, w_enc, (stride,), "SAME", dimension_numbers=dimension_numbers
            ),
            jnp.zeros((1, n_in, 2)),
        )[1](cotangent)[0]
        upsampled = lax.conv_transpose(
            cotangent, w_dec, (stride,), "SAME", dimension_numbers=dimension_numbers
        )
        start = models._mirror_crop_start(n_in, kernel, stride)
        np.testing.assert_allclose(
            upsampled[:, start : start + n_in], expected, atol=1e-5, err_msg=f"n_in={n_in}"
        )


# ----------------------------------------------------------------------------------------------
# Registry, errors, hashability
# ----------------------------------------------------------------------------------------------


def test_registry_builds_the_named_classes():
    assert isinstance(models.make_encoder("mlp", latent_dim=2), models.MLPEncoder)
    assert isinstance(models.make_encoder("conv", latent_dim=2), models.ConvEncoder)
    assert isinstance(models.make_decoder("mlp", output_shape=(2, 2, 1)), models.MLPDecoder)
    assert isinstance(models.make_decoder("conv", output_shape=(2, 2, 1)), models.ConvDecoder)
    assert models.make_encoder("gated_mlp", latent_dim=2).gated
    assert models.make_decoder("gated_mlp", output_shape=(2, 2, 1)).gated
    assert models.make_encoder("gated_conv", latent_dim=2).gated


def test_gated_dense_matches_float64():
    layer = models.GatedDense(5, kernel_init=models.get_kernel_init("kaiming_normal", "relu"))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    variables = layer.init(jax.random.key(0), x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    h = x @ p["h"]["kernel"] + p["h"]["bias"]
    gate = x @ p["gate"]["kernel"] + p["gate"]["bias"]
    want = h * scipy.special.expit(gate)
    np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-5, atol=1e-6)
    # The two maps are drawn independently with the gain of the initialiser asked for.
    assert not np.allclose(p["h"]["kernel"], p["gate"]["kernel"])


def test_gated_mlps_have_two_maps_per_hidden_layer_and_the_same_heads():
    x = jnp.zeros((2, 4, 4, 1))
    for gated in (False, True):
        encoder = models.MLPEncoder(3, hidden=(6, 5), gated=gated)
        decoder = models.MLPDecoder((4, 4, 1), hidden=(6, 5), gated=gated)
        enc = jax.eval_shape(encoder.init, jax.random.key(0), x)["params"]
        dec = jax.eval_shape(decoder.init, jax.random.key(0), jnp.zeros((2, 3)))["params"]
        assert set(enc) == {"hidden_0", "hidden_1", "mean", "logvar"}
        assert set(dec) == {"hidden_0", "hidden_1", "output"}
        per_layer = _n_params(encoder, x) - _dense_params(5, 3) * 2
        hidden = _dense_params(16, 6) + _dense_params(6, 5)
        assert per_layer == (2 * hidden if gated else hidden)
        out = decoder.apply(decoder.init(jax.random.key(1), jnp.zeros((2, 3))), jnp.ones((2, 3)))
        chex.assert_shape(out, (2, 4, 4, 1))


def _conv_same_float64(x_bhwc, kernel_hwio, bias_o, stride):
    """A 'SAME' convolution (TensorFlow's padding: the extra row at the end) by loops."""
    b, h, w, _ = x_bhwc.shape
    k = kernel_hwio.shape[0]
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    xp = np.pad(x_bhwc, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                         (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((b, out_h, out_w, kernel_hwio.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel_hwio)
    return out + bias_o


@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (7, 1), (5, 2)])
def test_gated_conv_matches_float64_loops(kernel, stride):
    layer = models.GatedConv(4, kernel, stride,
                             kernel_init=models.get_kernel_init("kaiming_normal", "relu"))
    x = np.random.default_rng(kernel).normal(size=(2, 9, 8, 3)).astype(np.float32)
    variables = layer.init(jax.random.key(0), x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    x64 = x.astype(np.float64)
    h = _conv_same_float64(x64, p["h"]["kernel"], p["h"]["bias"], stride)
    gate = _conv_same_float64(x64, p["gate"]["kernel"], p["gate"]["bias"], stride)
    got = layer.apply(variables, x)
    chex.assert_shape(got, (2, -(-9 // stride), -(-8 // stride), 4))
    np.testing.assert_allclose(got, h * scipy.special.expit(gate), rtol=1e-4, atol=1e-5)
    assert not np.allclose(p["h"]["kernel"], p["gate"]["kernel"])


def test_gated_conv_encoder_has_per_layer_kernels_and_strides():
    """The VampPrior code's q(z_2 | x) trunk: 32-32-64-64-6, kernels 7, 3, 5, 3, 3, strides
    1, 2, 1, 2, 1: a 7x7x6 feature map (294 units) on 28x28 images."""
    encoder = models.make_encoder("gated_conv", latent_dim=40, features=(32, 32, 64, 64, 6),
                                  kernel_size=(7, 3, 5, 3, 3), strides=(1, 2, 1, 2, 1))
    x = jnp.zeros((2, 28, 28, 1))
    params = jax.eval_shape(encoder.init, jax.random.key(0), x)["params"]
    assert [params[f"conv_{i}"]["h"]["kernel"].shape[0] for i in range(5)] == [7, 3, 5, 3, 3]
    assert set(params["conv_0"]) == {"h", "gate"}
    assert params["mean"]["kernel"].shape == (294, 40)
    assert encoder.feature_shape((28, 28, 1)) == (7, 7, 6)
    mean, logvar = encoder.apply(encoder.init(jax.random.key(0), x), x)
    chex.assert_shape([mean, logvar], (2, 40))


def test_conditional_encoder_passes_x_once_for_k_samples_of_z():
    """q(z_1 | x, z_2) on z [K, B, Z_2] equals K separate calls with x [B] (x broadcast)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
    z_kbz = rng.normal(size=(2, 3, 5)).astype(np.float32)
    for features in ((), (4, 2)):
        encoder = models.ConditionalEncoder(6, hidden=(7,), x_hidden=(8,), features=features,
                                            strides=(1, 2))
        variables = encoder.init(jax.random.key(1), x, z_kbz[0])
        mean_kbz, logvar_kbz = encoder.apply(variables, x, z_kbz)
        chex.assert_shape([mean_kbz, logvar_kbz], (2, 3, 6))
        for k in range(2):
            mean_bz, logvar_bz = encoder.apply(variables, x, z_kbz[k])
            np.testing.assert_allclose(mean_kbz[k], mean_bz, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(logvar_kbz[k], logvar_bz, rtol=1e-5, atol=1e-6)
        # x and z both matter; the z branch has the trunk's width (8, or 2 x 2 x 2 conv units).
        width = 8 if not features else 2 * 2 * 2
        assert variables["params"]["z_hidden"]["h"]["kernel"].shape == (5, width)
        other_z = encoder.apply(variables, x, z_kbz[0] + 1.0)[0]
        other_x = encoder.apply(variables, 1.0 - x, z_kbz[0])[0]
        assert not np.allclose(other_z, mean_kbz[0]) and not np.allclose(other_x, mean_kbz[0])


def test_skip_decoder_reads_each_group_through_its_own_layer():
    """p(x | z_1, z_2): the first layer of group l sees only z_l (a change in z_2 leaves the
    group-1 branch's output alone), both reach the output; the dense form matches a float64
    recomputation, the conv form ends in 28x28 feature maps and a 1x1 output convolution."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5)).astype(np.float32)
    decoder = models.SkipDecoder((3, 3, 2), latent_splits=(2, 3), branch_width=4, hidden=(6,))
    variables = decoder.init(jax.random.key(0), z)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])

    def gated(layer, a):
        return ((a @ layer["h"]["kernel"] + layer["h"]["bias"])
                * scipy.special.expit(a @ layer["gate"]["kernel"] + layer["gate"]["bias"]))

    z64 = z.astype(np.float64)
    h = np.concatenate([gated(p["branch_0"], z64[:, :2]), gated(p["branch_1"], z64[:, 2:])], -1)
    want = gated(p["hidden_0"], h) @ p["output"]["kernel"] + p["output"]["bias"]
    np.testing.assert_allclose(decoder.apply(variables, z), want.reshape(4, 3, 3, 2),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="groups"):
        decoder.apply(variables, z[:, :4])
    conv = models.SkipDecoder((28, 28, 1), latent_splits=(40, 40), branch_width=784,
                              hidden=(784,), features=(64, 64, 64, 64))
    params = jax.eval_shape(conv.init, jax.random.key(0), jnp.zeros((2, 80)))["params"]
    assert params["conv_3"]["h"]["kernel"].shape == (3, 3, 64, 64)
    assert params["output"]["kernel"].shape == (1, 1, 64, 1)
    chex.assert_shape(jax.eval_shape(conv.apply, {"params": params}, jnp.zeros((2, 80))),
                      (2, 28, 28, 1))
    with pytest.raises(ValueError, match="784"):
        models.SkipDecoder((28, 28, 1), latent_splits=(4,), branch_width=300, hidden=(300,),
                           features=(8,)).init(jax.random.key(0), jnp.zeros((1, 4)))


@pytest.mark.parametrize(
    "build, valid_names",
    [
        (lambda: models.make_encoder("resnet", latent_dim=2),
         ["conv", "gated_conv", "gated_mlp", "mlp"]),
        (lambda: models.make_decoder("resnet", output_shape=(2, 2, 1)),
         ["conv", "gated_mlp", "mlp"]),
        (lambda: models.get_activation("swish"), ["gelu", "relu", "silu", "tanh"]),
        (
            lambda: models.get_kernel_init("orthogonal"),
            ["he_normal", "kaiming_uniform", "lecun_normal", "xavier_uniform"],
        ),
        (lambda: models.get_kernel_init("kaiming_normal", activation="swish"), ["relu", "tanh"]),
    ],
)
def test_unknown_names_raise_listing_valid_names(build, valid_names):
    with pytest.raises(ValueError, match="valid names") as error:
        build()
    for name in valid_names:
        assert repr(name) in str(error.value)


def test_modules_are_hashable_static_jit_arguments():
    encoder = models.ConvEncoder(latent_dim=2, features=[4, 4], hidden=[3])
    assert encoder.features == (4, 4) and encoder.hidden == (3,)
    x_bhwc = jnp.zeros((1, 8, 8, 1))
    variables = _random_variables(encoder, x_bhwc)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def encode(variables, x_bhwc):
        return encoder.apply(variables, x_bhwc)

    encode(variables, x_bhwc)
    encode(variables, x_bhwc + 1.0)

    apply = jax.jit(lambda module, variables, x: module.apply(variables, x), static_argnums=0)
    same_encoder = models.ConvEncoder(latent_dim=2, features=(4, 4), hidden=(3,))
    assert hash(same_encoder) == hash(encoder)
    chex.assert_trees_all_close(
        apply(same_encoder, variables, x_bhwc), apply(encoder, variables, x_bhwc)
    )


def test_set_output_bias_adds_the_bias_to_every_output():
    """The output layer is linear in its bias: out(new) - out(old) = bias, for any z, and no
    other parameter moves."""
    decoder = models.MLPDecoder(output_shape=(8, 8, 1), hidden=(16,))
    z_bz = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    variables = _random_variables(decoder, z_bz)
    bias_f = np.random.default_rng(1).normal(size=64).astype(np.float32)
    updated = models.set_output_bias(decoder, variables, bias_f)
    old_bias_f = np.asarray(variables["params"]["output"]["bias"])
    delta_bhwc = decoder.apply(updated, z_bz) - decoder.apply(variables, z_bz)
    chex.assert_shape(delta_bhwc, (3, 8, 8, 1))
    np.testing.assert_allclose(
        delta_bhwc, np.broadcast_to((bias_f - old_bias_f).reshape(1, 8, 8, 1), (3, 8, 8, 1)),
        atol=1e-5,
    )
    old_leaves = jax.tree_util.tree_leaves_with_path(variables)
    new_leaves = dict(jax.tree_util.tree_leaves_with_path(updated))
    changed = [path for path, leaf in old_leaves
               if not np.array_equal(leaf, new_leaves[path])]
    assert len(changed) == 1 and "output" in jax.tree_util.keystr(changed[0])


def test_set_output_bias_refuses_conv_decoders_and_wrong_sizes():
    conv = models.ConvDecoder(output_shape=(8, 8, 1), features=(4,))
    with pytest.raises(ValueError, match="ConvDecoder has one bias per channel"):
        models.set_output_bias(conv, {}, np.zeros(64))
    decoder = models.MLPDecoder(output_shape=(8, 8, 1), hidden=(16,))
    variables = _random_variables(decoder, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"output bias of shape \(63,\).*64 outputs"):
        models.set_output_bias(decoder, variables, np.zeros(63))


@pytest.mark.parametrize("encoder", [
    models.MLPEncoder(3, hidden=(6,), gated=True, logvar_range=(-6.0, 2.0)),
    models.ConvEncoder(3, features=(4,), kernel_size=3, strides=2, gated=True,
                       logvar_range=(-6.0, 2.0)),
])
def test_a_logvar_range_is_hardtanh_of_the_linear_head(encoder):
    """The VampPrior code's hardtanh(-6, 2) log-variance: the linear head clipped to [-6, 2],
    with no gradient outside it; the mean head is untouched."""
    x = np.random.default_rng(0).normal(size=(5, 4, 4, 1)).astype(np.float32)
    variables = encoder.init(jax.random.key(0), x)
    # Scale the head so that some units fall below -6 and some above 2.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 40.0 if "logvar" in jax.tree_util.keystr(path) else a, variables)
    linear = encoder.clone(logvar_range=())
    mean, logvar = encoder.apply(variables, x)
    mean_linear, logvar_linear = (np.asarray(a, np.float64) for a in linear.apply(variables, x))
    assert (logvar_linear < -6).any() and (logvar_linear > 2).any()
    np.testing.assert_array_equal(mean, mean_linear.astype(np.float32))
    np.testing.assert_allclose(logvar, np.clip(logvar_linear, -6.0, 2.0), rtol=1e-6)
    grad = jax.grad(lambda v: encoder.apply(v, x)[1].sum())(variables)
    bias_grad = np.asarray(grad["params"]["logvar"]["bias"])
    inside = ((logvar_linear > -6) & (logvar_linear < 2)).sum(axis=0)  # per unit, over B
    np.testing.assert_allclose(bias_grad, inside)
