"""vae_jax measured through its real entry points, and XLA's matmul rate at the workloads' shapes.

Training workloads run `vae_jax.train.train_and_evaluate(config, workdir, quiet=True)` and read
`examples_per_sec` of every logging window from `metrics.jsonl`. Evaluation and checkpoints are
moved to the last step (after the last window closes), so no window contains them. W4 runs
`evaluate.make_nll_program` through `evaluate.run_in_batches`, as `python -m vae_jax.evaluate`
does, timing each global batch.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import workloads

from vae_jax import evaluate, input_pipeline, model, parallel, provenance, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(w: workloads.Workload, data_dir: str):
    config = provenance.experiment_config(REPO_ROOT / w.config)
    config.data.data_dir = data_dir
    return config


def write_cache(data_dir: str, cache_path: str) -> dict:
    """The train and test uint8 rows vae_jax trains on, for the PyTorch side (no TFDS there)."""
    data = input_pipeline.load_dataset("mnist", data_dir=data_dir, validation_size=5000)
    np.savez(cache_path, train=data.train, test=data.test)
    return {"num_train": int(len(data.train)), "num_test": int(len(data.test))}


def train_windows(w: workloads.Workload, data_dir: str, *, window_steps: int, num_windows: int,
                  steps_per_dispatch: int | None = None) -> dict:
    """One `train_and_evaluate` run of 1 + num_windows logging windows."""
    config = load_config(w, data_dir)
    k = steps_per_dispatch or config.run.steps_per_dispatch
    window_steps = max(k, window_steps // k * k)
    num_steps = window_steps * (1 + num_windows)
    config.run.steps_per_dispatch = k
    config.run.num_steps = num_steps
    config.run.log_every = window_steps
    config.run.eval_every = num_steps
    config.run.checkpoint_every = num_steps
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir, quiet=True)
        total = time.perf_counter() - start
        rows = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
    rows = [r for r in rows if "examples_per_sec" in r]
    images = window_steps * config.run.batch_size
    if any(not np.isfinite(r["loss"]) for r in rows):
        raise FloatingPointError(f"non-finite loss in the vae_jax {w.name} run")
    return {
        "window_seconds": [images / r["examples_per_sec"] for r in rows],
        "window_images": images,
        "run_seconds": total,
        "steps_per_dispatch": k,
        "final_loss": rows[-1]["loss"],
    }


def nll_windows(w: workloads.Workload, data_dir: str, cache_path: str, *, start: int, stop: int,
                num_samples: int, chunk_size: int) -> dict:
    """`make_nll_program` (randomly initialised W2 model) over test images [start, stop)."""
    config = load_config(w, data_dir)
    test_u8 = np.load(cache_path)["test"][start:stop]
    x_nhwc = (test_u8 > 127).astype(np.float32)
    vae = model.build_model(config.model, x_nhwc.shape[1:])
    mesh = parallel.make_mesh()
    program = evaluate.make_nll_program(mesh, vae, num_samples=num_samples,
                                        chunk_size=chunk_size)
    params = parallel.replicate(vae.init(jax.random.key(0), x_nhwc.shape[1:]), mesh)
    key = parallel.replicate(jax.random.key(1), mesh)
    times, total = [], 0.0
    for s in range(0, len(x_nhwc), w.batch_size):
        t = time.perf_counter()
        log_px = evaluate.run_in_batches(program, params, x_nhwc[s:s + w.batch_size], key, mesh,
                                         batch_size=w.batch_size)
        total += float(np.sum(log_px))
        times.append(time.perf_counter() - t)
    if not np.isfinite(total):
        raise FloatingPointError("non-finite log p(x) in the vae_jax NLL run")
    return {"window_seconds": times, "window_images": w.batch_size}


def gemm_rates(shapes, *, min_seconds=0.2) -> list[float]:
    """Seconds per float32 `jnp.dot` at each (m, k, n): one jitted loop of dependent products.

    Iteration i multiplies (a + i) by b, so XLA cannot hoist the product out of the loop (the
    [m, k] add is negligible next to the 2 m k n FLOPs); one dispatch covers every repetition.
    """

    @jax.jit
    def loop(a, b, reps):
        def body(i, acc):
            return acc + jnp.dot(a + i.astype(jnp.float32), b)[0, 0]
        return jax.lax.fori_loop(0, reps, body, jnp.float32(0))

    out = []
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        loop(a, b, 1).block_until_ready()
        reps, elapsed = 1, 0.0
        while elapsed < min_seconds:
            reps *= 4
            t = time.perf_counter()
            loop(a, b, reps).block_until_ready()
            elapsed = time.perf_counter() - t
        out.append(elapsed / reps)
    return out
