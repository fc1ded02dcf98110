"""One figure comparing how the KL term behaved in several runs (`mnist_kl_behaviour.py`).

Four panels, one line per workdir (labelled by the workdir's name):
  total KL over steps: validation KL(q(z|x) || p(z)) in nats per example (markers), with the
    training-batch KL from metrics.jsonl as a thin line of the same colour;
  active units over steps: latent dimensions with Var_x(E_q[z_i|x]) > 0.01;
  beta over steps: the KL weight the training loss used;
  final KL per dimension: the last evaluation's per-dimension KL, sorted in decreasing order
    (log scale), so collapsed dimensions show up as the tail near zero.

Usage:
    python experiments/kl_behaviour_figure.py --workdirs runs/kl/no_warmup \
        runs/kl/linear_warmup runs/kl/cyclical runs/kl/free_bits --out runs/kl/kl_behaviour.png
"""

import argparse
import pathlib

import numpy as np
from matplotlib.figure import Figure

from vae_jax.plots import series
from vae_jax.workdir import read_jsonl

LINESTYLES = ("-", "--", "-.", ":")


def kl_behaviour_figure(workdirs, out, *, labels=None) -> pathlib.Path:
    """Writes the four-panel comparison of `workdirs` to `out` (PNG) and returns its path."""
    workdirs = [pathlib.Path(w) for w in workdirs]
    labels = labels or [w.name for w in workdirs]
    fig = Figure(figsize=(12.0, 8.0), dpi=100, layout="constrained")
    ax_kl, ax_au, ax_beta, ax_dims = fig.subplots(2, 2).ravel()

    for i, (workdir, label) in enumerate(zip(workdirs, labels)):
        # Runs often coincide (beta = 1, all units active): distinct dashes keep each visible.
        style = dict(color=f"C{i}", linestyle=LINESTYLES[i % len(LINESTYLES)])
        train = read_jsonl(workdir / "metrics.jsonl")
        evals = read_jsonl(workdir / "eval_metrics.jsonl")
        ax_kl.plot(*series(train, "kl_nats"), color=style["color"], lw=0.8, alpha=0.4)
        ax_kl.plot(*series(evals, "val_kl_nats"), marker=".", label=label, **style)
        ax_au.plot(*series(evals, "val_active_units"), marker=".", label=label, **style)
        ax_beta.plot(*series(train, "beta"), label=label, **style)
        kl_per_dim = np.sort(np.asarray(evals[-1]["val_kl_per_dim_nats"], np.float64))[::-1]
        active = evals[-1].get("val_active_units")
        ax_dims.plot(np.arange(1, len(kl_per_dim) + 1), kl_per_dim, marker=".",
                     label=f"{label} ({active} active)" if active is not None else label,
                     **style)

    ax_kl.set(title="total KL (validation; thin: training batches)", xlabel="step",
              ylabel="KL (nats / example)")
    ax_au.set(title="active units (Var_x E[z_i|x] > 0.01)", xlabel="step", ylabel="active units")
    ax_beta.set(title="KL weight beta (mean over each logging window)", xlabel="step",
                ylabel="beta")
    ax_dims.set(title="final KL per latent dimension, sorted", xlabel="rank",
                ylabel="KL (nats / example)", yscale="log")
    for ax in (ax_kl, ax_au, ax_beta, ax_dims):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", nargs="+", required=True,
                        help="run directories holding metrics.jsonl and eval_metrics.jsonl")
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    print(kl_behaviour_figure(args.workdirs, args.out))


if __name__ == "__main__":
    main()
