"""Test-set negative log-likelihoods of VAEs with different likelihoods, on a common footing.

    python experiments/likelihood_comparison.py --workdirs /tmp/lik/* --out /tmp/lik/table \
        [--num_importance_samples 100] [--max_examples 1000] [--seed 0]

writes `<out>.json` and `<out>.md` and prints the markdown table. Every number is an
importance-sampled estimate (`vae_jax.model.log_likelihood_estimate`, K samples)
of the log-likelihood of the first N test images, reported as bits per dimension
(bits/dim = -log P / (D ln 2), D = 784 for MNIST). How each model is scored depends on what
its likelihood is a distribution *of* (`footing`):

* "discrete" (discretized_logistic): P(k) is already a probability mass over the 256 levels
  of every pixel, evaluated at x = k / 255. Its bits/dim are directly those of 8-bit data.
* "dequantized" (gaussian, gaussian_learned, continuous_bernoulli): p is a *density* on
  [0, 1]^D (or R^D), so log p(x) at the grid points k / 255 is not a probability and can be
  made arbitrarily large by shrinking the variance onto the grid. Uniform dequantisation
  (Theis et al. 2016, "A note on the evaluation of generative models", Sec. 3.1; Uria et al.
  2013) turns it into a discrete model: split [0, 1] into 256 bins [k/256, (k+1)/256) of width
  1/256 and let P(k) = integral of p over bin k. With x_deq = (k + u) / 256, u ~ U[0, 1)^D,
  p(x_deq) is a density on the bins, and by Jensen's inequality

      log P(k) = log E_u[p(x_deq) / 256^D] >= E_u[log p(x_deq)] - D log 256,

  so -E_u[log p(x_deq)] + D log 256 is an upper bound on the discrete NLL in nats, comparable
  with the discretised logistic. One u per image is drawn (an unbiased estimate of E_u; the
  mean over images averages it), and log p(x_deq) is itself estimated by importance sampling,
  which is biased low: both approximations make the reported bits/dim too high, never too low.
  A uniform density gives exactly log P = -D log 256: 8 bits/dim.
  Runs with the default `data.dequantize=False` were trained on x = k / 255; k/255 lies inside
  bin k (at fraction k/255 of the bin), so the bins are the right partition for them, but
  their densities were fitted to points, not to bins: the bound is honest for the models as
  trained, and loose. Runs with `data.dequantize=True` (the `*_dequantized` variants of
  `mnist_likelihoods.py`) were trained on x_deq = (k + u) / 256 itself, so their training
  objective is this bound (in expectation over u) and the same evaluation scores them; the
  table marks them "trained dequantised".
  The table also gives `grid_nll_nats`, -log p(x) at the grid points k / 255 without
  dequantisation: for the k / 255 runs the number such a model reports about itself, which is
  not a likelihood of 8-bit data and not comparable with anything (it can be negative).
* "binary" (bernoulli with binarization "dynamic" or "static"): a Bernoulli on binarised
  digits models a *different data set*, one bit per pixel of a random binarisation
  (`vae_jax.evaluate.binarize_once`, seed 0, of the test images). Its bits/dim measure
  information about 784 binary pixels, not about 784 8-bit intensities: the binarised copy has
  thrown the grey levels away, so its number is not comparable with the others and is reported
  in a separate row.

Results of the MNIST runs are recorded in `experiments/mnist_likelihoods.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

from vae_jax import losses

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DISCRETE = ("discretized_logistic",)


def footing(likelihood: str, binarization: str) -> str:
    """How a run is scored: "discrete", "dequantized", or "binary" (see the module docstring)."""
    if likelihood == "bernoulli":
        if binarization == "none":
            raise ValueError("a Bernoulli likelihood on grayscale data (binary cross-entropy with "
                             "fractional targets) is not a normalised likelihood; no NLL exists")
        return "binary"
    if likelihood in DISCRETE:
        return "discrete"
    if likelihood in losses.DENSITY_LIKELIHOODS:
        return "dequantized"
    raise ValueError(f"no comparison defined for likelihood {likelihood!r}")


def dequantize(levels_nhwc: np.ndarray, u_nhwc: np.ndarray, num_levels: int = 256) -> np.ndarray:
    """x_deq = (k + u) / num_levels in [k / num_levels, (k + 1) / num_levels), float32.

    Args:
      levels_nhwc: integer levels k in 0 .. num_levels - 1.
      u_nhwc: uniform noise in [0, 1), same shape.
    """
    x = ((levels_nhwc.astype(np.float64) + u_nhwc) / num_levels).astype(np.float32)
    # float32 rounding must not push the top bin onto 1.0.
    return np.minimum(x, np.nextafter(np.float32(1.0), np.float32(0.0)))


def bits_per_dim(log_mass_b, num_dims: int) -> float:
    """-mean_b log P(x_b) / (D ln 2)."""
    return float(-np.mean(np.asarray(log_mass_b, dtype=np.float64)) / (num_dims * math.log(2.0)))


def _log_likelihoods(params, x_nhwc, key, *, vae, num_samples, mesh, batch_size):
    """Importance-sampled log p(x_b) [N] (K = num_samples) of a restored model."""
    from vae_jax import evaluate, parallel

    program = evaluate.make_nll_program(mesh, vae, num_samples=num_samples, chunk_size=100)
    return evaluate.run_in_batches(program, parallel.replicate(params, mesh), x_nhwc,
                                   parallel.replicate(key, mesh), mesh, batch_size=batch_size)


def compare_workdir(workdir, *, num_samples: int = 100, max_examples: int = 1000,
                    seed: int = 0, batch_size: int = 100) -> dict:
    """The row of one training run: its test-set bits/dim on its footing."""
    import jax
    import ml_collections

    from vae_jax import evaluate, input_pipeline, model, parallel

    workdir = pathlib.Path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    kind = footing(config.model.likelihood, config.data.binarization)
    data = input_pipeline.load_dataset(
        config.data.name, data_dir=config.data.data_dir, download=config.data.download,
        validation_size=int(config.data.validation_size), binarization="none",
        seed=config.data.seed, train_in_memory=False)
    levels_nhwc = data.test[:max_examples]
    num_dims = math.prod(data.image_shape)
    vae = model.build_model(config.model, data.image_shape, num_levels=data.num_levels)
    params, step = evaluate.restore_eval_params(config, workdir, vae, data.image_shape)
    mesh = parallel.make_mesh(jax.devices()[:1])
    deq_key, nll_key = jax.random.split(jax.random.key(seed))
    args = dict(vae=vae, num_samples=num_samples, mesh=mesh, batch_size=batch_size)
    start = time.perf_counter()
    grid_x = levels_nhwc.astype(np.float32) * np.float32(data.scale)
    row = {"workdir": str(workdir), "variant": workdir.name, "likelihood": config.model.likelihood,
           "binarization": config.data.binarization, "footing": kind,
           # .get: runs recorded before the field existed trained without it.
           "dequantize": bool(config.data.get("dequantize", False)),
           "checkpoint_step": step, "num_examples": int(len(levels_nhwc)),
           "num_importance_samples": num_samples, "seed": seed}
    if kind == "binary":
        x = evaluate.binarize_once(levels_nhwc, data.scale, seed)
        log_mass_b = _log_likelihoods(params, x, nll_key, **args)
    elif kind == "discrete":
        log_mass_b = _log_likelihoods(params, grid_x, nll_key, **args)
    else:
        u = np.random.default_rng(seed).random(levels_nhwc.shape)
        x_deq = dequantize(levels_nhwc, u, data.num_levels)
        log_density_b = _log_likelihoods(params, x_deq, nll_key, **args)
        log_mass_b = losses.dequantized_log_mass_bound(log_density_b, num_dims,
                                                       data.num_levels)
        grid_b = _log_likelihoods(params, grid_x, nll_key, **args)
        row["grid_nll_nats"] = float(-np.mean(grid_b, dtype=np.float64))
    summary = evaluate.nll_summary(log_mass_b, num_dims)
    row.update(summary)
    row["bits_per_dim_stderr"] = summary["nll_stderr_nats"] / (num_dims * math.log(2.0))
    row["eval_seconds"] = round(time.perf_counter() - start, 1)
    return row


_FOOTING_TEXT = {
    "discrete": "8-bit, exact discrete",
    "dequantized": "8-bit, dequantised bound",
    "binary": "binarised copy (not comparable)",
}


def markdown_table(rows: list[dict]) -> str:
    """Comparable (8-bit) rows first, by bits/dim; the binary rows after them."""
    order = sorted(rows, key=lambda r: (r["footing"] == "binary", r["bits_per_dim"]))
    lines = ["| variant | likelihood | data / footing | NLL (nats) | bits/dim | "
             "-log p at grid k/255 (nats) |",
             "|---|---|---|---|---|---|"]
    for r in order:
        grid = f"{r['grid_nll_nats']:.1f}" if "grid_nll_nats" in r else "-"
        lines.append(
            f"| {r['variant']} | {r['likelihood']} | {_FOOTING_TEXT[r['footing']]}"
            f"{', trained dequantised' if r.get('dequantize') else ''} | "
            f"{r['nll_nats']:.1f} ± {r['nll_stderr_nats']:.1f} | "
            f"{r['bits_per_dim']:.3f} ± {r['bits_per_dim_stderr']:.3f} | {grid} |")
    first = rows[0]
    lines.append("")
    lines.append(f"First {first['num_examples']} test images, K = "
                 f"{first['num_importance_samples']} importance samples, seed {first['seed']}; "
                 "± one standard error over images.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdirs", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="writes <out>.json and <out>.md")
    parser.add_argument("--num_importance_samples", type=int, default=100)
    parser.add_argument("--max_examples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for workdir in args.workdirs:
        if not (pathlib.Path(workdir) / "config.json").is_file():
            print(f"skipping {workdir}: no config.json", file=sys.stderr)
            continue
        rows.append(compare_workdir(workdir, num_samples=args.num_importance_samples,
                                    max_examples=args.max_examples, seed=args.seed,
                                    batch_size=args.batch_size))
        print(f"{rows[-1]['variant']}: {rows[-1]['bits_per_dim']:.4f} bits/dim "
              f"({rows[-1]['footing']}, {rows[-1]['eval_seconds']} s)", file=sys.stderr)
    if not rows:
        sys.exit("no training runs among --workdirs")
    table = markdown_table(rows)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
