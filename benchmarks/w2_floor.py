"""How fast can any XLA program run W2's training step on this machine? A measured floor.

W2 (the Burda et al. VAE, 784-200-200-50 tanh, batch 20, Adam) must reach 2.5x the fastest
PyTorch. This script times stripped-down steps that keep only the work every implementation of
that step has to do, scanned 50 steps per dispatch exactly like vae_jax's training loop:

  gemm_sgd:  the step's seventeen matrix products (six forward, six weight gradients, five
             input gradients, at W2's exact shapes, with biases) on a linear model, no sampling,
             no tanh, no likelihood, updated with plain SGD (3 memory passes over the 425k
             parameters);
  gemm_adam: the same, updated with vae_jax's Adam (`fastpath.scale_by_adam`, then the learning
             rate; at least 7 passes: parameters, gradients, two
             moments; XLA:CPU's three fusions per parameter make 10).

The real step does everything in gemm_adam plus the noise, the binarisation, the tanh layers
and the Bernoulli likelihood, so its images/s cannot exceed gemm_adam's. Compare the figures with
the W2 row of `benchmarks/run.py` (same machine, quiet).

Command:
    python benchmarks/w2_floor.py [--steps 20000]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import fastpath, parallel

BATCH = 20
STEPS_PER_DISPATCH = 50
# (fan_in, fan_out) of every dense layer of W2's VAE; the encoder's two heads are one 200 x 100.
LAYERS = ((784, 200), (200, 200), (200, 100), (50, 200), (200, 200), (200, 784))


def init_params(key):
    keys = jax.random.split(key, len(LAYERS))
    return [{"w": jax.random.normal(k, shape) / np.sqrt(shape[0]),
             "b": jnp.zeros(shape[1])} for k, shape in zip(keys, LAYERS)]


def linear_loss(params, x_bd):
    """A linear encoder/decoder with W2's shapes: every matrix product of the real step."""
    h = x_bd
    for layer in params[:3]:
        h = h @ layer["w"] + layer["b"]
    z = h[:, :50]  # the mean head
    for layer in params[3:]:
        z = z @ layer["w"] + layer["b"]
    return jnp.mean(jnp.sum(z * x_bd, axis=-1)) + jnp.mean(h[:, 50:])


def make_program(optimizer):
    def step(carry, x_bd):
        params, opt_state = carry
        grads = jax.grad(linear_loss)(params, x_bd)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=parallel.compiler_options())
    def run(carry, x_sbd):
        carry, _ = jax.lax.scan(step, carry, x_sbd)
        return carry

    return run


def images_per_sec(optimizer, steps: int, repeats: int = 3) -> tuple[float, list[float]]:
    params = init_params(jax.random.key(0))
    carry = (params, optimizer.init(params))
    x_sbd = jax.random.bernoulli(jax.random.key(1), 0.13, (STEPS_PER_DISPATCH, BATCH, 784))
    x_sbd = x_sbd.astype(jnp.float32)
    run = make_program(optimizer)
    carry = jax.block_until_ready(run(carry, x_sbd))  # compile and warm up
    rates = []
    dispatches = max(1, steps // STEPS_PER_DISPATCH)
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(dispatches):
            carry = run(carry, x_sbd)
        jax.block_until_ready(carry)
        rates.append(dispatches * STEPS_PER_DISPATCH * BATCH / (time.perf_counter() - start))
    return float(np.median(rates)), rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="steps per timed window")
    args = parser.parse_args()
    vae_jax_adam = optax.chain(fastpath.scale_by_adam(), optax.scale_by_learning_rate(1e-3))
    for name, optimizer in (("gemm_sgd", optax.sgd(1e-3)), ("gemm_adam", vae_jax_adam)):
        median, rates = images_per_sec(optimizer, args.steps)
        print(f"{name:10s} {median:9.0f} images/s  (windows: "
              + ", ".join(f"{r:.0f}" for r in rates) + ")", flush=True)


if __name__ == "__main__":
    main()
