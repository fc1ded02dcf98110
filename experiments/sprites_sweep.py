"""The disentanglement sweep: every model of sprites_disentanglement.py with three seeds.

    python experiments/sprites_sweep.py [--runs_dir ../runs/sprites] [--seeds 0,1,2]
        [--variants beta_vae_1,...] [--num_steps N] [--disentanglement_num_train 10000]
        [--disentanglement_num_eval 5000] [--summarise_only]

For each seed and variant, in turn (every variant with seed 0 first): trains
`experiments/sprites_disentanglement.py:<variant>` with `--config.seed=<seed>` into
`<runs_dir>/<variant>_seed<seed>` (its log in `train.log` there; a rerun resumes the run, a
finished one is not touched), then evaluates it with
`python -m vae_jax.evaluate --disentanglement` (skipped when its eval.json already scores the
last checkpoint). Then it writes, into `<runs_dir>`:

    sweep.json         every run's metrics, steps, wall times and commit
    sweep.md           the table: per metric and variant, the median and range over the seeds
    sweep_metrics.png  the figure: one panel per metric, every run a dot, medians as bars

and names the best run by median rank over the metrics (its traversals are
`<workdir>/plots/traversals.png`, rows labelled with the factor each dimension captures).
Killing the sweep and rerunning the same command continues where it stopped.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

from vae_jax import provenance

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "sprites_disentanglement.py"
METRICS = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness_train",
           "dci_informativeness_test", "sap", "modularity", "explicitness_train",
           "explicitness_test", "beta_vae_train_accuracy", "beta_vae_eval_accuracy",
           "factor_vae_train_accuracy", "factor_vae_eval_accuracy")


def _variants():
    sys.path.insert(0, str(CONFIG.parent))
    import sprites_disentanglement

    return list(sprites_disentanglement.VARIANTS)


def _scored_step(workdir: pathlib.Path):
    """The checkpoint step eval.json scored with the disentanglement metrics, or None."""
    path = workdir / "eval.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result["checkpoint_step"] if "disentanglement" in result else None


def _last_step(workdir: pathlib.Path):
    path = workdir / "final_metrics.json"
    return json.loads(path.read_text()).get("step") if path.is_file() else None


def _run(cmd, log: pathlib.Path) -> float:
    start = time.time()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        subprocess.run(list(map(str, cmd)), check=True, stdout=out, stderr=subprocess.STDOUT,
                       cwd=REPO)
    return time.time() - start


def train_and_evaluate(variant: str, seed: int, args) -> dict:
    workdir = args.runs_dir / f"{variant}_seed{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    times_path = workdir / "sweep_times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    overrides = [f"--config.seed={seed}"]
    if args.num_steps:
        overrides.append(f"--config.run.num_steps={args.num_steps}")
    step = _last_step(workdir)
    if step is None or (args.num_steps and step < args.num_steps):
        times["train_s"] = times.get("train_s", 0.0) + _run(
            [sys.executable, "-m", "vae_jax.main", "--config", f"{CONFIG}:{variant}",
             "--workdir", workdir, "--quiet", *overrides], workdir / "train.log")
        times_path.write_text(json.dumps(times))
    if _scored_step(workdir) != _last_step(workdir):
        times["eval_s"] = _run(
            [sys.executable, "-m", "vae_jax.evaluate", "--workdir", workdir,
             "--disentanglement", "--num_importance_samples", args.num_importance_samples,
             "--max_examples", args.nll_examples, "--batch_size", args.eval_batch_size,
             "--disentanglement_num_train", args.disentanglement_num_train,
             "--disentanglement_num_eval", args.disentanglement_num_eval,
             "--seed", seed], workdir / "eval.log")
        times_path.write_text(json.dumps(times))
    result = json.loads((workdir / "eval.json").read_text())
    return {"variant": variant, "seed": seed, "workdir": str(workdir),
            "steps": result["checkpoint_step"], "nll_nats": result["nll_nats"],
            "elbo_nats": result["elbo_nats"], "active_units": result["active_units"],
            **times, **result["disentanglement"]}


def summarise(rows: list, variants: list, out_dir: pathlib.Path) -> str:
    """The table (one row per metric, one column per variant: the median over the seeds and
    their range) as markdown, and the figure."""
    shown = [v for v in variants if any(r["variant"] == v for r in rows)]
    runs = {v: [r for r in rows if r["variant"] == v] for v in shown}
    lines = ["| metric | " + " | ".join(f"`{v}` ({len(runs[v])})" for v in shown) + " |",
             "| --- | " + " | ".join("---" for _ in shown) + " |"]
    for metric in METRICS:
        cells = []
        for variant in shown:
            values = np.array([r[metric] for r in runs[variant]])
            cells.append(f"{np.median(values):.2f} ({values.min():.2f}-{values.max():.2f})")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(2.0 * len(METRICS), 3.4), sharey=True)
    for ax, metric in zip(axes, METRICS):
        for i, variant in enumerate(shown):
            values = [r[metric] for r in rows if r["variant"] == variant]
            ax.bar(i, np.median(values), color="0.85")
            ax.plot([i] * len(values), values, "o", color="C0", markersize=3)
        ax.set_title(metric.replace("_", " "), fontsize=8)
        ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out_dir / "sweep_metrics.png", dpi=120)
    plt.close(fig)
    return "\n".join(lines)


def best_run(rows: list) -> dict:
    """The run with the best median rank over METRICS (rank 0 = highest value)."""
    ranks = np.array([np.argsort(np.argsort([-r[m] for r in rows])) for m in METRICS])
    return rows[int(np.argmin(np.median(ranks, axis=0)))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", type=pathlib.Path,
                        default=REPO.parent / "runs" / "sprites")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=None, help="comma-separated; default: all")
    parser.add_argument("--num_steps", type=int, default=0,
                        help="override run.num_steps (0: the config's)")
    parser.add_argument("--num_importance_samples", type=int, default=50)
    parser.add_argument("--nll_examples", type=int, default=1000)
    # K decoder passes of 64 x 64 images per example: small batches keep the memory bounded.
    parser.add_argument("--eval_batch_size", type=int, default=10)
    parser.add_argument("--disentanglement_num_train", type=int, default=10_000)
    parser.add_argument("--disentanglement_num_eval", type=int, default=5_000)
    parser.add_argument("--summarise_only", action="store_true")
    args = parser.parse_args(argv)
    variants = args.variants.split(",") if args.variants else _variants()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    # Seed by seed, so that an interrupted sweep has every model at least once.
    for seed in seeds:
        for variant in variants:
            workdir = args.runs_dir / f"{variant}_seed{seed}"
            if args.summarise_only and _scored_step(workdir) is None:
                continue
            rows.append(train_and_evaluate(variant, seed, args))
            print(f"{variant} seed {seed}: " + ", ".join(
                f"{m}={rows[-1][m]:.3f}" for m in METRICS), flush=True)
    commit, cpu = provenance.git_commit(), provenance.cpu_model()
    table = summarise(rows, variants, args.runs_dir)
    best = best_run(rows)
    (args.runs_dir / "sweep.json").write_text(json.dumps(
        {"commit": commit, "cpu": cpu, "runs": rows, "best": best["workdir"]}, indent=1))
    (args.runs_dir / "sweep.md").write_text(table + "\n")
    print(table)
    print(f"best run (median rank over the metrics): {best['workdir']}")


if __name__ == "__main__":
    main()
