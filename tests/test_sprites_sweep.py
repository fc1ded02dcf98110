"""experiments/sprites_sweep.py: the table (median and range over seeds), the figure and the
choice of the best run, on made-up metric rows."""

import numpy as np

from vae_jax.provenance import load_experiment

sweep = load_experiment("sprites_sweep")


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for variant, level in (("beta_vae_1", 0.2), ("factor_vae_30", 0.6)):
        for seed in range(3):
            row = {"variant": variant, "seed": seed, "workdir": f"{variant}_seed{seed}"}
            row.update({m: float(level + 0.1 * seed + 0.01 * rng.uniform())
                        for m in sweep.METRICS})
            rows.append(row)
    return rows


def test_the_table_gives_median_and_range_over_seeds_and_the_figure_is_written(tmp_path):
    rows = _rows()
    table = sweep.summarise(rows, ["beta_vae_1", "dip_vae_ii", "factor_vae_30"], tmp_path)
    lines = table.splitlines()
    # header, rule, one row per metric; columns for the variants with runs (not dip_vae_ii)
    assert len(lines) == 2 + len(sweep.METRICS)
    assert lines[0] == "| metric | `beta_vae_1` (3) | `factor_vae_30` (3) |"
    mig = [r["mig"] for r in rows if r["variant"] == "factor_vae_30"]
    assert lines[2] == "| mig | " + " | ".join(
        f"{np.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
        for v in ([r["mig"] for r in rows if r["variant"] == "beta_vae_1"], mig)) + " |"
    assert (tmp_path / "sweep_metrics.png").stat().st_size > 1000


def test_the_best_run_has_the_best_median_rank():
    rows = _rows()
    assert sweep.best_run(rows)["workdir"] == "factor_vae_30_seed2"
