"""Forward + backward throughput of `flax.linen.ConvTranspose` vs `vae_jax.models.ConvTranspose`.

Purpose: XLA differentiates `flax.linen.ConvTranspose` (a convolution with input dilation) on a
slow path on CPU (jax-ml/jax#31662, openxla/xla#34273). `vae_jax.models.ConvTranspose`
computes the same function with one stride-1 convolution and a depth-to-space step. This script
times `jax.value_and_grad` with respect to the input and the parameters, jitted, for the two
upsampling layers of the MNIST convolutional decoder (features (32, 64), kernel 3, stride 2)
and one wider layer.

Command:
    /work/venv/bin/python benchmarks/conv_transpose.py [--batch 128] [--windows 7]

Each figure is the median over `--windows` timing windows of images per second, a window being
`--steps` calls with `block_until_ready` on the last; compilation and one warm-up window are
excluded.
"""

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import models

LAYERS = (
    # (name, input [H, W, C_in], output channels)
    ("14x14x32 -> 28x28x1", (14, 14, 32), 1),
    ("7x7x64 -> 14x14x32", (7, 7, 64), 32),
    # Not in the MNIST decoder: the output-resolution layer of a wider decoder (32x32 RGB style).
    ("14x14x32 -> 28x28x32", (14, 14, 32), 32),
)


def images_per_second(layer: nn.Module, x_bhwc: jax.Array, *, steps: int, windows: int) -> float:
    """Median images/s of jitted value_and_grad (w.r.t. input and params) of sum(y^2)."""
    params = layer.init(jax.random.key(0), x_bhwc)

    def loss(params, x_bhwc):
        return jnp.sum(layer.apply(params, x_bhwc) ** 2)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    jax.block_until_ready(step(params, x_bhwc))  # compile
    rates = []
    for window in range(windows + 1):
        start = time.perf_counter()
        for _ in range(steps):
            out = step(params, x_bhwc)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - start
        if window > 0:  # the first window is warm-up
            rates.append(steps * x_bhwc.shape[0] / elapsed)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="calls per timing window")
    parser.add_argument("--windows", type=int, default=7)
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, batch {args.batch}")
    print(f"{'layer':<22} {'flax.linen (img/s)':>19} {'vae_jax (img/s)':>16} {'speed-up':>9}")
    for name, input_hwc, features in LAYERS:
        x_bhwc = jax.random.normal(jax.random.key(1), (args.batch,) + input_hwc)
        rates = []
        for cls in (nn.ConvTranspose, models.ConvTranspose):
            layer = cls(features=features, kernel_size=(3, 3), strides=(2, 2), padding="SAME")
            rates.append(images_per_second(layer, x_bhwc, steps=args.steps, windows=args.windows))
        print(f"{name:<22} {rates[0]:>19,.0f} {rates[1]:>16,.0f} {rates[1] / rates[0]:>8.1f}x")


if __name__ == "__main__":
    main()
