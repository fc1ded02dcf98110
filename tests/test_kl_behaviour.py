"""experiments/mnist_kl_behaviour.py builds four configs that differ only in the KL treatment,
and experiments/kl_behaviour_figure.py draws a PNG from workdirs' metric files."""

import json

import numpy as np
import pytest
from PIL import Image

from vae_jax import train
from vae_jax.provenance import load_experiment

EXPERIMENT = load_experiment("mnist_kl_behaviour")
FIGURE = load_experiment("kl_behaviour_figure")
KL_FIELDS = ("kl_schedule", "kl_warmup_steps", "kl_cycle_steps", "kl_cycle_ratio",
             "kl_num_cycles", "free_bits", "beta")  # of the objective group


def without_kl_fields(config) -> dict:
    tree = config.to_dict()
    tree["objective"] = {k: v for k, v in tree["objective"].items() if k not in KL_FIELDS}
    return tree


def beta_at(config, steps):
    schedule = train.make_kl_schedule(config)
    return np.array([float(schedule(step)) for step in steps])


def test_variants_differ_only_in_the_kl_treatment():
    configs = {v: EXPERIMENT.get_config(v) for v in EXPERIMENT.VARIANTS}
    assert set(configs) == {"no_warmup", "linear_warmup", "cyclical", "free_bits"}
    base = without_kl_fields(configs["no_warmup"])
    for config in configs.values():
        assert without_kl_fields(config) == base
        assert config.data.name == "mnist" and config.data.binarization == "dynamic"
        assert config.model.latent_dim == 32 and config.model.likelihood == "bernoulli"
        train.validate_config(config, num_devices=1)
        assert config.run.num_steps % config.run.eval_every == 0  # the run ends on an evaluation
    assert [c.objective.free_bits for c in configs.values()] == [0.0, 0.0, 0.0, 0.25]
    with pytest.raises(ValueError, match="unknown variant"):
        EXPERIMENT.get_config("warmup")


def test_kl_schedules_at_a_few_steps():
    configs = {v: EXPERIMENT.get_config(v) for v in EXPERIMENT.VARIANTS}
    num_steps = configs["no_warmup"].run.num_steps
    warmup = 10 * 429  # ten epochs of 55,000 examples in batches of 128
    steps = [0, warmup // 2, warmup, num_steps - 1]
    np.testing.assert_allclose(beta_at(configs["no_warmup"], steps), [1, 1, 1, 1])
    np.testing.assert_allclose(beta_at(configs["free_bits"], steps), [1, 1, 1, 1])
    np.testing.assert_allclose(beta_at(configs["linear_warmup"], steps), [0, 0.5, 1, 1],
                               atol=1e-6)
    # Fu et al. (2019): T = 1,600 steps, beta = min(1, (step mod T) / (0.5 T)).
    cyclical = configs["cyclical"]
    assert cyclical.objective.kl_cycle_steps * cyclical.objective.kl_num_cycles == num_steps
    cycle_steps = [0, 400, 800, 1200, 1600, 2000, 4800 + 400, num_steps - 1, num_steps]
    np.testing.assert_allclose(beta_at(cyclical, cycle_steps),
                               [0, 0.5, 1, 1, 0, 0.5, 0.5, 1, 1], atol=1e-6)


def write_fake_workdir(workdir, *, seed, latent_dim=4, num_evals=3):
    rng = np.random.default_rng(seed)
    workdir.mkdir(parents=True)
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(50, 50 * 2 * num_evals + 1, 50):
            f.write(json.dumps({"step": step, "kl_nats": float(rng.uniform(0, 30)),
                                "beta": min(1.0, step / 200), "loss": 100.0}) + "\n")
    with open(workdir / "eval_metrics.jsonl", "w") as f:
        for step in range(100, 100 * num_evals + 1, 100):
            kl_per_dim = rng.uniform(1e-3, 5, latent_dim)
            f.write(json.dumps({"step": step, "val_kl_nats": float(kl_per_dim.sum()),
                                "val_active_units": int(rng.integers(0, latent_dim + 1)),
                                "val_elbo_nats": -100.0,
                                "val_kl_per_dim_nats": kl_per_dim.tolist()}) + "\n")


def test_figure_script_writes_a_png(tmp_path):
    workdirs = [tmp_path / "runs" / name for name in ("no_warmup", "free_bits")]
    for seed, workdir in enumerate(workdirs):
        write_fake_workdir(workdir, seed=seed)
    out = tmp_path / "figs" / "kl.png"
    FIGURE.main(["--workdirs", *map(str, workdirs), "--out", str(out)])
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 400
