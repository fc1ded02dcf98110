"""Time one training gradient of experiment variants: ms per step and images/s of the step alone.

    python benchmarks/experiment_step.py experiments/mnist_vampprior.py:standard \
        experiments/mnist_vampprior.py:vamp

For each `file:variant`, builds the model and loss as training does (`train.make_model`,
`train.make_loss_fn`, fast paths as `run.cpu_fast_paths` says) and times the jitted gradient of
the loss on one batch of `run.batch_size` random binary images: the median over `--windows`
windows of `--steps` calls, after one compiling call. No optimiser, data pipeline or logging:
what it measures is the model's forward and backward pass (a VampPrior's pseudo-inputs through
the encoder, its component table). Prints the CPU model with the table.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vae_jax import fastpath, provenance, train  # noqa: E402


def time_gradient(spec: str, *, steps: int, windows: int) -> tuple[float, int]:
    """(median ms per gradient, batch size) of the variant `spec` = "file:variant"."""
    config = provenance.experiment_config(spec)
    image_shape = (28, 28, 1)
    vae = train.make_model(config, image_shape)
    with fastpath.switched(config.run.cpu_fast_paths):
        params = vae.init(jax.random.key(0), image_shape)
        loss_fn = train.make_loss_fn(config, vae)
        batch = config.run.batch_size
        x = (jax.random.uniform(jax.random.key(1), (batch, *image_shape)) > 0.5).astype(
            jnp.float32)

        def loss(params, key):
            return loss_fn(params, x, key, step=0, beta=1.0, example_ids=None,
                           axis_name=None)[0]

        gradient = jax.jit(jax.grad(loss))
        key = jax.random.key(2)
        jax.block_until_ready(gradient(params, key))
        times = []
        for _ in range(windows):
            start = time.perf_counter()
            for _ in range(steps):
                out = gradient(params, key)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - start) / steps)
    return 1e3 * statistics.median(times), batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="experiments/<file>.py:<variant>")
    parser.add_argument("--steps", type=int, default=20, help="calls per timing window")
    parser.add_argument("--windows", type=int, default=7)
    args = parser.parse_args()
    print(f"CPU: {provenance.machine()}, jax {jax.__version__}, backend {jax.default_backend()}")
    print("| variant | ms per gradient | images/s |")
    print("| --- | --- | --- |")
    for spec in args.variants:
        ms, batch = time_gradient(spec, steps=args.steps, windows=args.windows)
        print(f"| `{spec}` | {ms:.1f} | {batch / ms * 1e3:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
