"""Tests of the training system: end to end, device-count invariance, resume, guards, errors."""

import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from tests.conftest import xla_flags
from vae_jax import input_pipeline, losses, provenance, train
from vae_jax import model as model_lib
from vae_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name="digits", **overrides):
    """The config of experiments/<name>.py with `overrides` by dotted name, as on the command
    line: `load_config("digits", **{"model.hidden": (64,), "run.num_steps": 40})`."""
    config = provenance.experiment_config(name)
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        # An unlocked ConfigDict would silently add a misspelt or renamed field.
        if last not in target:
            raise KeyError(f"{key!r} is not a config field")
        target[last] = value
    return config


def tiny_digits(**overrides):
    """A few steps of the quickstart config: small enough for a 2-core CI machine."""
    defaults = {"run.num_steps": 40, "run.steps_per_dispatch": 10, "run.log_every": 10,
                "run.eval_every": 20, "run.checkpoint_every": 20, "model.hidden": (64,),
                "run.num_image_examples": 8}
    defaults.update(overrides)
    return load_config("digits", **defaults)


def params_of(result):
    return jax.device_get(result.state.params)


def max_abs_diff(tree_a, tree_b):
    return max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b))
    )


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def read_tensorboard_tags(directory):
    """Scalar and image tags in the event files, read with TensorFlow's own event parser."""
    import tensorflow as tf

    tags = set()
    for event_file in pathlib.Path(directory).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def run_main(workdir, *flags, env=None, **kwargs):
    cmd = [sys.executable, "-m", "vae_jax.main", "--config", str(REPO / "experiments/digits.py"),
           "--workdir", str(workdir), "--quiet", *flags]
    full_env = dict(os.environ, XLA_FLAGS=xla_flags(2),
                    **(env or {}))
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300, **kwargs)


SMALL_FLAGS = ("--config.run.num_steps=40", "--config.run.steps_per_dispatch=10",
               "--config.run.log_every=10", "--config.run.eval_every=20",
               "--config.run.checkpoint_every=20", "--config.model.hidden=(64,)")


ELBO_KEYS = ("loss", "recon_nats", "kl_nats", "elbo_nats")


def check_workdir(workdir, num_steps, image_hw, latent_dim=None, objective_keys=ELBO_KEYS,
                  kl_per_dim=True):
    """Every output file of a finished run: parses, opens, restores. `kl_per_dim`: whether the
    model's KL has per-dimension terms (one diagonal layer against N(0, I)); else they must be
    absent, not wrong."""
    workdir = pathlib.Path(workdir)
    config = json.loads((workdir / "config.json").read_text())
    latent_dim = latent_dim or config["model"]["latent_dim"]
    assert config["run"]["num_steps"] == num_steps
    metrics = read_jsonl(workdir / "metrics.jsonl")
    assert metrics[-1]["step"] == num_steps
    for key in ("step", *objective_keys, "beta", "learning_rate", "grad_norm", "skipped_updates",
                "examples_per_sec"):
        assert all(np.isfinite(m[key]) for m in metrics), key
    evals = read_jsonl(workdir / "eval_metrics.jsonl")
    assert evals[-1]["step"] == num_steps and evals[-1]["val_elbo_nats"] < 0
    if kl_per_dim:
        per_dim = evals[-1]["val_kl_per_dim_nats"]
        assert len(per_dim) == latent_dim
        assert sum(per_dim) == pytest.approx(evals[-1]["val_kl_nats"], rel=1e-4)
    else:
        assert "val_kl_per_dim_nats" not in evals[-1]
    assert 0 <= evals[-1]["val_active_units"] <= latent_dim
    pngs = sorted((workdir / "images").glob("*.png"))
    assert len(pngs) == 2 * len(evals)
    assert {p.name.split("_")[0] for p in pngs} == {"reconstructions", "samples"}
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
    tags = read_tensorboard_tags(workdir / "tensorboard")
    assert {"validation/val_elbo_nats", "reconstructions", "samples"} <= tags
    assert {f"train/{key}" for key in objective_keys} <= tags
    assert (workdir / "checkpoints" / str(num_steps)).is_dir()
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == num_steps


@pytest.mark.slow
def test_end_to_end_digits_through_the_entry_point(tmp_path):
    workdir = tmp_path / "digits"
    proc = run_main(workdir, *SMALL_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final: step=40" in proc.stdout
    check_workdir(workdir, 40, (8, 8))

    # The checkpoint restores into the model the config describes.
    config = tiny_digits()
    data = input_pipeline.load_dataset("digits", validation_size=150)
    vae = train.make_model(config, data.image_shape)
    optimizer = train.make_optimizer(config)
    fresh = train.init_state(jax.random.key(1), vae, data.image_shape, optimizer, ema=False)
    checkpoints = workdir_lib.Checkpoints(workdir / "checkpoints", keep=3)
    restored = checkpoints.restore_latest(fresh)
    checkpoints.close()
    assert int(restored.step) == 40
    assert max_abs_diff(restored.params, fresh.params) > 1e-3

    # Rerunning the finished command resumes at the end and trains nothing more.
    proc = run_main(workdir, *SMALL_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_jsonl(workdir / "metrics.jsonl")) == 4


@pytest.mark.slow
def test_end_to_end_real_mnist(tmp_path, mnist_data_dir):
    config = load_config("mnist_mlp", **{
        "run.num_steps": 20, "run.steps_per_dispatch": 10, "run.log_every": 10,
        "run.eval_every": 20, "run.checkpoint_every": 20, "model.hidden": (64,),
        "run.num_image_examples": 8, "data.data_dir": mnist_data_dir,
    })
    result = train.train_and_evaluate(config, tmp_path / "mnist", quiet=True)
    check_workdir(tmp_path / "mnist", 20, (28, 28))
    # 20 steps of Adam from initialisation: the ELBO is already far above a uniform
    # Bernoulli's 784 log 2 = 543 nats.
    assert -543 < result.validation["val_elbo_nats"] < 0


@pytest.mark.slow
def test_streaming_path_on_real_mnist(tmp_path, mnist_data_dir):
    # A memory budget below MNIST's 47 MB sends the training set through tf.data.
    config = load_config("mnist_mlp", **{
        "run.num_steps": 20, "run.steps_per_dispatch": 10, "run.log_every": 10,
        "run.eval_every": 20, "run.checkpoint_every": 20, "model.hidden": (64,),
        "run.num_image_examples": 8, "data.data_dir": mnist_data_dir,
        "data.max_device_bytes": 10**6,
    })
    result = train.train_and_evaluate(config, tmp_path / "stream", quiet=True,
                                      devices=jax.devices()[:2])
    metrics = read_jsonl(tmp_path / "stream" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [10, 20]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert -543 < result.validation["val_elbo_nats"] < 0


def test_one_device_and_eight_devices_follow_the_same_trajectory(tmp_path):
    assert len(jax.devices()) == 8
    results = {}
    for n in (1, 8):
        config = tiny_digits(**{"run.num_steps": 30, "run.eval_every": 30,
                                "run.checkpoint_every": 30, "objective.free_bits": 0.1})
        results[n] = train.train_and_evaluate(
            config, tmp_path / f"d{n}", quiet=True, devices=jax.devices()[:n]
        )
    losses_1 = [m["loss"] for m in read_jsonl(tmp_path / "d1" / "metrics.jsonl")]
    losses_8 = [m["loss"] for m in read_jsonl(tmp_path / "d8" / "metrics.jsonl")]
    np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5)
    assert max_abs_diff(params_of(results[1]), params_of(results[8])) < 1e-5
    assert results[1].validation["val_elbo_nats"] == pytest.approx(
        results[8].validation["val_elbo_nats"], rel=1e-5)


def test_the_loop_traces_the_step_once(tmp_path, monkeypatch):
    # Several chunks across several epochs (digits: 21 steps per epoch), with evaluation and
    # checkpoints in between: the step function is traced once, when the chunk compiles.
    monkeypatch.setattr(train, "train_step", chex.assert_max_traces(train.train_step, n=1))
    config = tiny_digits(**{"run.num_steps": 60, "run.eval_every": 30,
                            "run.checkpoint_every": 30})
    train.train_and_evaluate(config, tmp_path / "w", quiet=True, devices=jax.devices()[:2])


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_parameters(tmp_path):
    flags = ("--config.run.num_steps=1000", "--config.run.steps_per_dispatch=50",
             "--config.run.log_every=50", "--config.run.eval_every=1000",
             "--config.run.checkpoint_every=100", "--config.run.keep_checkpoints=2")
    reference = run_main(tmp_path / "reference", *flags)
    assert reference.returncode == 0, reference.stderr[-3000:]

    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vae_jax.main", "--config", str(REPO / "experiments/digits.py"),
           "--workdir", str(workdir), "--quiet", *flags]
    env = dict(os.environ, XLA_FLAGS=xla_flags(2))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (workdir / "checkpoints" / "200").exists() and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < 1000

    resumed = run_main(workdir, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The steps logged after the last checkpoint before the kill are dropped on resume: each
    # step appears once, in order, as in the uninterrupted run.
    steps = [row["step"] for row in read_jsonl(workdir / "metrics.jsonl")]
    assert steps == [row["step"] for row in read_jsonl(tmp_path / "reference" / "metrics.jsonl")]
    assert steps == list(range(50, 1001, 50))

    def final_params(path):
        config = tiny_digits(**{"model.hidden": (256, 256)})
        data = input_pipeline.load_dataset("digits", validation_size=150)
        vae = train.make_model(config, data.image_shape)
        state = train.init_state(jax.random.key(0), vae, data.image_shape,
                                 train.make_optimizer(config), ema=False)
        checkpoints = workdir_lib.Checkpoints(path / "checkpoints", keep=2)
        state = checkpoints.restore_latest(state)
        checkpoints.close()
        assert int(state.step) == 1000
        return state

    a, b = final_params(tmp_path / "reference"), final_params(workdir)
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state)),
                    jax.tree.leaves((b.params, b.opt_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_validation_summary_counts_active_units():
    # Posterior means over 1,000 examples: dims 0-1 vary (variance 1 and 0.02), dim 2 varies
    # below the 0.01 threshold (variance 0.005), dim 3 is constant: 2 active units.
    rng = np.random.default_rng(0)
    means = rng.standard_normal((1000, 4)) * np.sqrt([1.0, 0.02, 0.005, 0.0]) + 0.3
    kl = rng.uniform(0, 2, size=(1000, 4))
    totals = {"elbo": -50.0 * 1000, "recon": 40.0 * 1000, "kl": kl.sum(),
              "kl_per_dim": kl.sum(0), "mean": means.sum(0), "mean_sq": (means**2).sum(0),
              "count": 1000.0}
    summary = train.validation_summary(totals)
    assert summary["val_active_units"] == 2
    np.testing.assert_allclose(summary["val_kl_per_dim_nats"], kl.mean(0), rtol=1e-12)
    assert summary["val_elbo_nats"] == -50.0 and summary["val_recon_nats"] == 40.0


@pytest.mark.parametrize("scanned", [False, True])  # the select and the lax.cond form
def test_non_finite_gradients_are_skipped_and_counted(scanned):
    optimizer = train.make_optimizer(tiny_digits())
    params = {"w": jnp.ones(3)}
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=train.init_skip_state(optimizer, params), ema_params=params)

    def loss_fn(params, x, key, *, step, beta, example_ids, axis_name):
        # x = 255 makes the scaled input 1: a log(0) in the loss, so infinite gradients.
        loss = jnp.sum(params["w"]) * jnp.mean(jnp.log1p(-x))
        return loss, {"loss": loss}

    step = jax.jit(lambda s, b, k: train.train_step(
        s, b, k, loss_fn=loss_fn, optimizer=optimizer, beta_schedule=optax.constant_schedule(1.),
        lr_schedule=optax.constant_schedule(1e-3), scale=1 / 255, binarize=False, ema_decay=0.5,
        scanned=scanned))
    bad = jnp.full((4, 2, 2, 1), 255, jnp.uint8)
    good = jnp.zeros((4, 2, 2, 1), jnp.uint8).at[:, 0].set(100)
    key = jax.random.key(0)
    state, metrics = step(state, bad, key)
    np.testing.assert_array_equal(state.params["w"], np.ones(3))  # untouched
    np.testing.assert_array_equal(state.ema_params["w"], np.ones(3))
    assert int(metrics["skipped_updates"]) == 1 and int(metrics["consecutive_skips"]) == 1
    state, metrics = step(state, bad, key)
    assert int(metrics["consecutive_skips"]) == 2
    state, metrics = step(state, good, key)
    assert int(metrics["skipped_updates"]) == 2 and int(metrics["consecutive_skips"]) == 0
    # Adam's first step moves every weight by the learning rate, against the gradient's sign
    # (d loss / d w = mean(log1p(-x)) < 0, so w grows).
    np.testing.assert_allclose(state.params["w"], np.ones(3) + 1e-3, rtol=1e-5)
    np.testing.assert_allclose(state.ema_params["w"], np.ones(3) + 0.5e-3, rtol=1e-5)
    assert int(state.step) == 3


def test_an_ema_changes_what_is_validated_not_the_training_iterates(tmp_path):
    # What the `*_ema` rows of experiments/mnist_vampprior.py rely on: with the same seed, a run
    # with an EMA trains through the same parameters bit for bit (the scanned steps included),
    # and only its validation passes (and checkpoints' ema_params) differ.
    runs = {}
    for decay in (0.0, 0.9):
        workdir = tmp_path / f"ema{decay}"
        result = train.train_and_evaluate(tiny_digits(**{"optim.ema_decay": decay}), workdir,
                                          quiet=True, devices=jax.devices()[:1])
        runs[decay] = (result, read_jsonl(workdir / "metrics.jsonl"),
                       read_jsonl(workdir / "eval_metrics.jsonl"))
    (plain, plain_rows, plain_val), (ema, ema_rows, ema_val) = runs[0.0], runs[0.9]
    assert max_abs_diff(params_of(plain), params_of(ema)) == 0.0
    assert [r["loss"] for r in plain_rows] == [r["loss"] for r in ema_rows]
    assert plain.state.ema_params is None
    assert max_abs_diff(params_of(ema), jax.device_get(ema.state.ema_params)) > 0
    assert [r["step"] for r in plain_val] == [r["step"] for r in ema_val] == [20, 40]
    assert all(a["val_elbo_nats"] != b["val_elbo_nats"] for a, b in zip(plain_val, ema_val))


@pytest.mark.parametrize("log_every", [10, 40])
def test_run_stops_after_too_many_non_finite_updates(tmp_path, log_every):
    # A learning rate of 1e30 poisons the parameters at the first update; every gradient after it
    # is NaN. With log_every=40 the first checkpoint (step 20) comes before any log line: the
    # guard must stop the run there too, before the poisoned parameters are saved.
    config = tiny_digits(**{"optim.learning_rate": 1e30, "optim.max_consecutive_skips": 3,
                            "run.log_every": log_every})
    with pytest.raises(FloatingPointError, match="consecutive updates had non-finite"):
        train.train_and_evaluate(config, tmp_path / "nan", quiet=True, devices=jax.devices()[:1])
    assert not list((tmp_path / "nan" / "checkpoints").glob("[0-9]*"))


def test_a_run_that_is_not_whole_dispatches_ends_with_a_shorter_chunk(tmp_path):
    # 45 steps at 10 per dispatch: four chunks of 10 and one of 5, the same 45 updates in the
    # same order as 5 per dispatch makes them.
    tail = train.train_and_evaluate(
        tiny_digits(**{"run.num_steps": 45, "run.eval_every": 40, "run.checkpoint_every": 40}),
        tmp_path / "tail", quiet=True, devices=jax.devices()[:1])
    whole = train.train_and_evaluate(
        tiny_digits(**{"run.num_steps": 45, "run.steps_per_dispatch": 5, "run.log_every": 5,
                       "run.eval_every": 40, "run.checkpoint_every": 40}),
        tmp_path / "whole", quiet=True, devices=jax.devices()[:1])
    assert int(tail.state.step) == 45 and tail.last_metrics["step"] == 45
    assert (tmp_path / "tail" / "checkpoints" / "45").is_dir()
    assert max_abs_diff(params_of(tail), params_of(whole)) < 1e-6


# ---------------------------------------------------------------------------- bad input


# A failed start leaves no workdir behind, so the corrected command is not refused as a
# "different config".


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset"):
        train.train_and_evaluate(tiny_digits(**{"data.name": "no_such_dataset"}), tmp_path / "w",
                                 quiet=True)
    assert not (tmp_path / "w").exists()


def test_unknown_model_and_likelihood_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown encoder 'transformer'.*"
                                         r"\['conv', 'gated_conv', 'gated_mlp', 'mlp'\]"):
        train.train_and_evaluate(tiny_digits(**{"model.encoder": "transformer"}), tmp_path / "w",
                                 quiet=True)
    with pytest.raises(ValueError, match=r"unknown likelihood 'poisson'.*'bernoulli'"):
        train.train_and_evaluate(tiny_digits(**{"model.likelihood": "poisson"}), tmp_path / "w",
                                 quiet=True)
    assert not (tmp_path / "w").exists()


def test_missing_data_dir(tmp_path):
    config = tiny_digits(**{"data.name": "mnist", "data.data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(input_pipeline.DatasetNotFoundError, match="nowhere"):
        train.train_and_evaluate(config, tmp_path / "w", quiet=True)
    assert not (tmp_path / "w").exists()


def test_pixels_outside_the_likelihood_support(tmp_path):
    # Dynamic binarisation makes {0, 1} data, which only Bernoulli-type likelihoods model.
    with pytest.raises(ValueError, match="dynamic binarisation"):
        train.train_and_evaluate(tiny_digits(**{"model.likelihood": "gaussian"}), tmp_path / "w",
                                 quiet=True)
    assert not (tmp_path / "w").exists()


def test_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=60 .* 8 devices"):
        train.train_and_evaluate(tiny_digits(**{"run.batch_size": 60}), tmp_path / "w",
                                 quiet=True)
    assert not (tmp_path / "w").exists()


def test_mismatched_workdir_is_refused_and_left_alone(tmp_path):
    workdir = tmp_path / "w"
    train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20}), workdir, quiet=True,
                             devices=jax.devices()[:1])
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(workdir_lib.WorkdirConfigMismatch, match="model.latent_dim: 8 -> 4"):
        train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20, "model.latent_dim": 4}),
                                 workdir, quiet=True, devices=jax.devices()[:1])
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert before == after


def test_corrupt_checkpoint_is_a_clear_error_and_left_in_place(tmp_path):
    workdir = tmp_path / "w"
    train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20}), workdir, quiet=True,
                             devices=jax.devices()[:1])
    ckpt = workdir / "checkpoints" / "20"
    for f in ckpt.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f.parent.name) + f.name:
            f.write_bytes(b"garbage")
    files_before = sorted(p.relative_to(workdir) for p in ckpt.rglob("*"))
    with pytest.raises(workdir_lib.CheckpointRestoreError,
                       match="corrupt.*checkpoints/20.*differs from its checksum.*nothing was "
                             "moved"):
        train.train_and_evaluate(tiny_digits(**{"run.num_steps": 40}), workdir, quiet=True,
                                 devices=jax.devices()[:1], allow_config_change=True)
    assert sorted(p.relative_to(workdir) for p in ckpt.rglob("*")) == files_before


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    workdir = tmp_path / "w"
    train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20}), workdir, quiet=True,
                             devices=jax.devices()[:1])
    config_before = (workdir / "config.json").read_text()
    with pytest.raises(workdir_lib.CheckpointRestoreError, match="left in place"):
        train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20, "model.hidden": (32,)}),
                                 workdir, quiet=True, devices=jax.devices()[:1],
                                 allow_config_change=True)
    assert (workdir / "checkpoints" / "20").is_dir()
    # The failed run did not record its config: the original command still resumes.
    assert (workdir / "config.json").read_text() == config_before
    assert not list(workdir.glob("config.previous-*"))


def test_a_run_recorded_before_a_field_existed_resumes_with_its_default(tmp_path):
    """config.json of an older run lacks a field added since: the run trained with the field's
    default, so the same command resumes it; a value other than the default is a change."""
    workdir = tmp_path / "w"
    train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20}), workdir, quiet=True,
                             devices=jax.devices()[:1])
    path = workdir / "config.json"
    stored = json.loads(path.read_text())
    del stored["model"]["logvar_range"], stored["run"]["keep_best"]
    path.write_text(json.dumps(stored))
    config = tiny_digits(**{"run.num_steps": 20})
    result = train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    assert int(result.state.step) == 20
    assert json.loads(path.read_text()) == stored  # not rewritten, nothing kept aside
    assert not list(workdir.glob("config.previous-*"))
    with pytest.raises(workdir_lib.WorkdirConfigMismatch) as refused:
        train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20,
                                                "model.logvar_range": (-6.0, 2.0)}),
                                 workdir, quiet=True, devices=jax.devices()[:1])
    assert str(refused.value).count(" -> ") == 1
    assert "model.logvar_range: [] -> [-6.0, 2.0]" in str(refused.value)


def test_allowed_config_change_keeps_the_old_config(tmp_path):
    workdir = tmp_path / "w"
    train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20}), workdir, quiet=True,
                             devices=jax.devices()[:1])
    result = train.train_and_evaluate(tiny_digits(**{"run.num_steps": 40}), workdir, quiet=True,
                                      devices=jax.devices()[:1], allow_config_change=True)
    assert int(result.state.step) == 40  # resumed at 20, trained 20 more
    (previous,) = workdir.glob("config.previous-*.json")
    assert json.loads(previous.read_text())["run"]["num_steps"] == 20
    assert json.loads((workdir / "config.json").read_text())["run"]["num_steps"] == 40


def test_console_script_is_installed():
    script = pathlib.Path(sys.executable).parent / "vae-jax-train"
    if not script.exists():
        pytest.skip(f"package not installed into {script.parent} (run pip install -e .)")
    # Without the required flags, absl prints the usage and exits with status 1.
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Flag --config must have a value other than None" in proc.stderr
    proc = subprocess.run([str(script), "--helpfull"], capture_output=True, text=True, timeout=120)
    assert "--workdir" in proc.stdout and "allow_config_change" in proc.stdout


# ---------------------------------------------------------------------------- two stochastic layers


def tiny_two_layer_digits(**overrides):
    """The quickstart config with two stochastic layers (Z = 6, 3), tiny widths."""
    defaults = {"model.num_layers": 2, "model.latent_dim": 6, "model.upper_latent_dims": (3,),
                "model.hidden": (32,), "model.upper_hidden": ((16,),), "run.num_steps": 20,
                "run.eval_every": 10, "run.checkpoint_every": 20}
    defaults.update(overrides)
    return tiny_digits(**defaults)


@pytest.mark.parametrize("objective, num_samples", [("elbo", 1), ("iwae", 3)])
def test_two_layer_model_end_to_end_on_digits(tmp_path, objective, num_samples):
    config = tiny_two_layer_digits(**{"objective.name": objective,
                                      "objective.num_samples": num_samples})
    result = train.train_and_evaluate(config, tmp_path / "w", quiet=True,
                                      devices=jax.devices()[:2])
    # The validation pass reports both layers, [z1, z2].
    keys = ELBO_KEYS if objective == "elbo" else ("loss", "iwae_nats")
    check_workdir(tmp_path / "w", 20, (8, 8), latent_dim=6 + 3, objective_keys=keys,
                  kl_per_dim=False)
    assert -64 * np.log(2) * 2 < result.validation["val_elbo_nats"] < 0
    params = params_of(result)
    assert len(params["upper_encoders"]) == 1 and len(params["upper_priors"]) == 1


def test_two_layer_loss_is_the_model_s_objective():
    """The training loss of a two-layer config is the named objective of the built model:
    the ELBO is E_q[log w] on the model's own draw, the IWAE bound its logsumexp."""
    config = tiny_two_layer_digits()
    vae = train.make_model(config, (8, 8, 1))
    params = vae.init(jax.random.key(0), (8, 8, 1))
    x = (np.random.default_rng(0).random((4, 8, 8, 1)) < 0.5).astype(np.float32)
    key = jax.random.key(1)
    loss, metrics = train.make_loss_fn(config, vae)(params, x, key, beta=0.5,
                                                    example_ids=jnp.arange(4))
    w = vae.log_weights(params, x, key, num_samples=1, example_ids=jnp.arange(4)).weights
    recon = -np.asarray(w.log_px_z, np.float64)[0]
    kl = np.asarray(w.log_qz - w.log_pz, np.float64)[0]
    assert float(loss) == pytest.approx(np.mean(recon) + 0.5 * np.mean(kl), rel=1e-5)
    assert "kl_per_dim" not in metrics["per_example"]  # not defined for two layers
    chex.assert_shape(metrics["per_example"]["mean"], (4, 9))
    config.objective.name, config.objective.num_samples = "iwae", 5
    loss, _ = train.make_loss_fn(config, vae)(params, x, key)
    log_w = np.asarray(vae.log_weights(params, x, key, num_samples=5).weights.log_w, np.float64)
    expected = -np.mean(np.logaddexp.reduce(log_w, axis=0) - np.log(5))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_two_layer_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown encoder 'mlp2'"):
        train.train_and_evaluate(tiny_digits(**{"model.encoder": "mlp2"}), tmp_path / "w",
                                 quiet=True)
    with pytest.raises(ValueError,
                       match=r"free_bits=0.5 needs the ELBO with a closed-form KL per latent "
                             r"dimension.*set objective.free_bits=0"):
        train.train_and_evaluate(tiny_two_layer_digits(**{"objective.free_bits": 0.5}),
                                 tmp_path / "w", quiet=True)
    with pytest.raises(ValueError, match=r"model.upper_latent_dims=\(3, 2\) gives 2 sizes"):
        train.make_model(tiny_two_layer_digits(**{"model.upper_latent_dims": (3, 2)}),
                         (8, 8, 1))
    assert not (tmp_path / "w").exists()


def test_layer_sizes_follow_the_stated_rule():
    # Z_l halves upward, and the networks between layers have two hidden layers of 2 Z_l.
    config = tiny_digits(**{"model.num_layers": 3, "model.latent_dim": 10})
    dims, hidden = model_lib.layer_sizes(config.model)
    assert dims == (10, 5, 2) and hidden == ((10, 10), (4, 4))
    burda = provenance.load_experiment("mnist_vae_burda")
    assert model_lib.layer_sizes(burda.get_config("2layer").model) == ((100, 50), ((100, 100),))


def test_burda_learning_rate_schedule():
    """Burda et al. 2015, section 5: 3^i epochs at 1e-3 * 10^(-i/7), i = 0 .. 7."""
    config = tiny_digits(**{"optim.lr_schedule": "burda", "optim.learning_rate": 1e-3})
    steps_per_epoch = 7
    schedule = train.make_lr_schedule(config, steps_per_epoch=steps_per_epoch)
    epoch_starts = np.cumsum([0] + [3**i for i in range(8)])  # 0, 1, 4, 13, ..., 3280
    assert epoch_starts[-1] == 3280
    for i in range(8):
        for epoch in (epoch_starts[i], epoch_starts[i + 1] - 1):
            for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
                assert float(schedule(step)) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-5)
    assert float(schedule(10**7)) == pytest.approx(1e-4, rel=1e-5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train.make_lr_schedule(config)


def test_compressed_burda_schedule_keeps_the_rates_and_shortens_the_stages():
    config = tiny_digits(**{"optim.lr_schedule": "burda", "optim.learning_rate": 1e-3,
                            "optim.burda_epoch_scale": 0.3})
    # round(0.3 * 3^i), at least 1: 1, 1, 3, 8, 24, 73, 219, 656 epochs (985 in all).
    assert train.burda_stage_epochs(0.3) == [1, 1, 3, 8, 24, 73, 219, 656]
    schedule = train.make_lr_schedule(config, steps_per_epoch=5)
    first_epochs = np.cumsum([0, 1, 1, 3, 8, 24, 73, 219])
    for i, epoch in enumerate(first_epochs):
        assert float(schedule(epoch * 5)) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-5)
        if i:
            assert float(schedule(epoch * 5 - 1)) == pytest.approx(
                1e-3 * 10 ** (-(i - 1) / 7), rel=1e-5)


def test_adam_hyperparameters_come_from_the_config():
    config = tiny_digits(**{"optim.b1": 0.5, "optim.b2": 0.9, "optim.eps": 1e-4,
                            "optim.learning_rate": 0.1})
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([1.0, -2.0, 1e-5])}
    expected = optax.adam(0.1, b1=0.5, b2=0.9, eps=1e-4)
    got_opt = train.make_optimizer(config)
    got, _ = got_opt.update(grads, got_opt.init(params), params)
    want, _ = expected.update(grads, expected.init(params), params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)


@pytest.mark.parametrize("name, variants", [
    ("mnist_vae_burda", ("1layer", "2layer", "1layer_short", "2layer_short")),
    ("mnist_iwae_burda", ("1layer_k5", "1layer_k50", "2layer_k5", "2layer_k50",
                          "1layer_k5_short", "1layer_k50_short", "2layer_k5_short",
                          "2layer_k50_short")),
])
def test_burda_experiment_configs(name, variants):
    module = provenance.load_experiment(name)
    for variant in variants:
        config = module.get_config(variant)
        train.validate_config(config, num_devices=1)
        assert config.run.batch_size == 20 and config.optim.lr_schedule == "burda"
        short = variant.endswith("_short")
        assert config.run.num_epochs == (985 if short else 3280) and config.optim.eps == 1e-4
        assert config.optim.burda_epoch_scale == (0.3 if short else 1.0)
        assert config.model.decoder_bias_init == "data_mean"
        steps_per_epoch = (60000 - config.data.validation_size) // config.run.batch_size  # 2,750
        assert config.run.num_epochs * steps_per_epoch % config.run.steps_per_dispatch == 0
        vae = train.make_model(config, (28, 28, 1))
        assert vae.num_layers == (2 if variant.startswith("2layer") else 1)
        assert (config.objective.name == "iwae") == ("_k" in variant)
        if "_k" in variant:
            assert config.objective.num_samples == int(
                variant.removesuffix("_short").split("_k")[1])
        if vae.num_layers == 1:
            assert (vae.encoder.latent_dim, vae.encoder.hidden) == (50, (200, 200))
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("3layer")


# ---------------------------------------------------------------------------- dequantised data


def test_preprocess_dequantizes_each_example_from_its_own_key():
    levels_bhwc = np.random.default_rng(0).integers(0, 17, (4, 8, 8, 1)).astype(np.uint8)
    key = jax.random.key(5)
    dequantize = functools.partial(train.preprocess, scale=1 / 16, binarize=False,
                                   dequantize_levels=17)
    whole = np.asarray(dequantize(levels_bhwc, key, example_ids=jnp.arange(4)))
    # Two devices' halves of the batch, each knowing its examples' global positions.
    halves = [dequantize(levels_bhwc[i:i + 2], key, example_ids=jnp.arange(i, i + 2))
              for i in (0, 2)]
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    k = levels_bhwc.astype(np.float32)
    assert np.all(k / 17 <= whole) and np.all(whole < (k + 1) / 17)
    # Without dequantisation the levels go to the grid k / (L - 1).
    scaled = train.preprocess(levels_bhwc, key, scale=1 / 16, binarize=False,
                              example_ids=jnp.arange(4))
    np.testing.assert_array_equal(scaled, k / 16)


DENSITIES = "['gaussian', 'gaussian_learned', 'continuous_bernoulli']"


@pytest.mark.parametrize("overrides, message", [
    # digits.py itself: Bernoulli on dynamically binarised digits.
    ({}, "data.dequantize=True with data.binarization='dynamic'"),
    ({"data.binarization": "static", "model.likelihood": "continuous_bernoulli"},
     "data.dequantize=True with data.binarization='static'"),
    ({"data.binarization": "none"},
     f"data.dequantize=True with likelihood='bernoulli'.*{re.escape(DENSITIES)}"),
    ({"data.binarization": "none", "model.likelihood": "discretized_logistic"},
     "data.dequantize=True with likelihood='discretized_logistic'"
     f".*{re.escape(DENSITIES)}"),
])
def test_dequantize_needs_grayscale_data_and_a_density(tmp_path, overrides, message):
    config = tiny_digits(**{"data.dequantize": True, **overrides})
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, tmp_path / "w", quiet=True)
    assert not (tmp_path / "w").exists()
    for likelihood in ("gaussian", "gaussian_learned", "continuous_bernoulli"):
        train.validate_config(tiny_digits(**{
            "model.likelihood": likelihood, "data.dequantize": True,
            "data.binarization": "none"}), num_devices=1)


@pytest.mark.slow
def test_dequantized_training_end_to_end_on_digits(tmp_path):
    config = tiny_digits(**{"run.num_steps": 300, "run.steps_per_dispatch": 50,
                            "run.log_every": 100, "run.eval_every": 150,
                            "run.checkpoint_every": 300, "model.likelihood": "gaussian_learned",
                            "data.binarization": "none", "data.dequantize": True})
    workdir = tmp_path / "dequantized"
    result = train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    metrics = read_jsonl(workdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [100, 200, 300]
    for key in ELBO_KEYS + ("grad_norm",):
        assert all(np.isfinite(m[key]) for m in metrics), key
    assert metrics[-1]["skipped_updates"] == 0
    evals = read_jsonl(workdir / "eval_metrics.jsonl")
    assert [e["step"] for e in evals] == [150, 300]
    # The validation ELBO is of y = (k + u) / 17 on 8 x 8 digits; by Theis et al. (2016)
    # bits/dim <= -E_u log p(y) / (D ln 2) + log2 L, with the ELBO standing in for log p(y).
    num_dims, num_levels = 64, 17
    for e in evals:
        assert np.isfinite(e["val_elbo_nats"])
        by_hand = -e["val_elbo_nats"] / (num_dims * math.log(2.0)) + math.log2(num_levels)
        assert e["val_bits_per_dim"] == pytest.approx(by_hand, rel=1e-12)
    # Better than the uniform distribution over the 17 levels, log2 17 = 4.09 bits/dim.
    assert evals[-1]["val_bits_per_dim"] < math.log2(num_levels)
    assert result.validation["val_bits_per_dim"] == evals[-1]["val_bits_per_dim"]
    assert json.loads((workdir / "config.json").read_text())["data"]["dequantize"] is True


# ---------------------------------------------------------------------------- output bias


def test_data_mean_output_bias_starts_the_decoder_at_the_pixel_means(tmp_path):
    """With model.decoder_bias_init='data_mean' the run's decoder starts with output logits equal to
    logit(mean pixel) of the training split (float64 numpy). End to end with the two-layer
    decoder and a zero learning rate, so the parameters the run saves are the initial ones
    (`set_output_bias` on both MLP decoders is tested in test_models)."""
    data = input_pipeline.load_dataset("digits", validation_size=0.1, binarization="dynamic")
    mean_f = np.clip(data.train.reshape(len(data.train), -1).mean(0, dtype=np.float64) / 16,
                     1e-3, 1 - 1e-3)
    expected_f = np.log(mean_f / (1 - mean_f))
    config = tiny_digits(**{"model.decoder_bias_init": "data_mean"})
    np.testing.assert_allclose(train.initial_output_bias(config, data), expected_f, rtol=1e-5,
                               atol=1e-6)
    assert train.initial_output_bias(tiny_digits(), data) is None
    config = tiny_two_layer_digits(**{
        "model.decoder_bias_init": "data_mean", "optim.learning_rate": 0.0,
        "run.num_steps": 10, "run.eval_every": 10, "run.checkpoint_every": 10})
    result = train.train_and_evaluate(config, tmp_path / "w", quiet=True)
    bias_f = params_of(result)["decoder"]["params"]["output"]["bias"]
    np.testing.assert_allclose(bias_f, expected_f, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"model.decoder_bias_init": "mean"}, r"unknown decoder_bias_init 'mean'"),
    ({"model.decoder_bias_init": "data_mean", "model.encoder": "conv", "model.decoder": "conv"},
     r"'conv' decoder has one bias per channel"),
    ({"model.decoder_bias_init": "data_mean", "model.likelihood": "discretized_logistic",
      "data.binarization": "none"}, r"defined for \['bernoulli', 'gaussian'\]"),
])
def test_output_bias_config_errors(tmp_path, overrides, message):
    config = tiny_digits(**overrides)
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, tmp_path / "w", quiet=True)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("optimizer, reference", [
    ("adam", lambda schedule: optax.adam(schedule)),
    ("adamw", lambda schedule: optax.adamw(schedule, weight_decay=1e-4)),
])
def test_make_optimizer_has_optax_state_layout_and_updates(optimizer, reference):
    """The state tree of `make_optimizer` equals optax's (so checkpoints of either load into
    the other), and 20 steps of updates agree to float32 rounding."""
    config = tiny_digits(**{"optim.name": optimizer, "optim.weight_decay": 1e-4,
                            "optim.learning_rate": 1e-3})
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    ours = train.make_optimizer(config)
    theirs = optax.chain(reference(train.make_lr_schedule(config)))
    ours_state, theirs_state = ours.init(params), theirs.init(params)
    assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)
    rng = np.random.default_rng(1)
    for _ in range(20):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        got, ours_state = ours.update(grads, ours_state, params)
        want, theirs_state = theirs.update(grads, theirs_state, params)
        for key in params:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------------------- failing early


@pytest.mark.parametrize("overrides, message", [
    ({"optim.learning_rate": -1.0},
     r"optim.learning_rate=-1.0 is out of range: it must be >= 0"),
    ({"optim.learning_rate": float("nan")}, r"optim.learning_rate=nan is out of range"),
    ({"run.num_steps": -50}, r"run.num_steps=-50 is out of range: it must be >= 0"),
    ({"run.num_steps": -5}, r"run.num_steps=-5 is out of range"),
    ({"optim.ema_decay": 1.0}, r"optim.ema_decay=1.0 is out of range: it must be in \[0, 1\)"),
    ({"optim.b2": 1.5}, r"optim.b2=1.5 is out of range"),
    ({"model.hidden": (64, 0)},
     r"model.hidden=\(64, 0\) is out of range: it must be widths >= 1"),
    ({"objective.kl_cycle_ratio": 0.0},
     r"objective.kl_cycle_ratio=0.0 is out of range: it must be in \(0, 1\]"),
    ({"run.keep_checkpoints": 0}, r"run.keep_checkpoints=0 is out of range"),
    ({"data.validation_size": -0.1}, r"data.validation_size=-0.1 is out of range"),
    ({"run.num_steps": 0, "run.num_epochs": 0}, r"run.num_steps=0 and run.num_epochs=0"),
])
def test_numeric_fields_out_of_range_are_refused_before_anything_is_written(
        tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(tiny_digits(**overrides), tmp_path / "w", quiet=True)
    assert not (tmp_path / "w").exists()


def test_every_numeric_default_is_in_range():
    from vae_jax import config_defaults

    train.check_numeric_ranges(config_defaults.default_config())
    for name in train.NUMERIC_RANGES:  # every entry names a real field
        value = config_defaults.default_config()
        for part in name.split("."):
            value = value[part]


def test_run_that_diverged_before_its_first_checkpoint_does_not_block_the_fix(tmp_path):
    workdir = tmp_path / "w"
    diverging = tiny_digits(**{"optim.learning_rate": 1e30, "optim.max_consecutive_skips": 2,
                               "run.steps_per_dispatch": 1, "run.log_every": 20,
                               "run.eval_every": 40, "run.checkpoint_every": 40})
    with pytest.raises(FloatingPointError) as failure:
        train.train_and_evaluate(diverging, workdir, quiet=True, devices=jax.devices()[:1])
    message = str(failure.value)
    # The message names no checkpoint folder, since none exists.
    assert "No checkpoint was written" in message and "checkpoints/" not in message
    assert not train.has_checkpoint(workdir)
    # The corrected command runs, and the failed run's config is kept beside the new one.
    train.train_and_evaluate(tiny_digits(), workdir, quiet=True, devices=jax.devices()[:1])
    assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 1e-3
    previous = list(workdir.glob("config.previous-*.json"))
    assert len(previous) == 1
    assert json.loads(previous[0].read_text())["optim"]["learning_rate"] == 1e30


def test_divergence_stops_within_the_limit_and_is_recorded(tmp_path):
    # A learning rate of 1e30 makes the activations overflow after step 1, so steps 2, 3, ...
    # have non-finite gradients: the 4th skip in a row (step 5) exceeds the limit of 3. The
    # logging boundary (step 40) is far away; the run must not wait for it.
    workdir = tmp_path / "w"
    config = tiny_digits(**{"optim.learning_rate": 1e30, "optim.max_consecutive_skips": 3,
                            "run.steps_per_dispatch": 1, "run.log_every": 40,
                            "run.eval_every": 40, "run.checkpoint_every": 40})
    with pytest.raises(FloatingPointError, match=r"at step 5; stopping"):
        train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["diverged_at_step"] == 5
    # Checked one dispatch behind: at most one step past the limit ran.
    assert rows[0]["step"] <= 6 and rows[0]["consecutive_skips"] >= 4


def test_divergence_inside_a_scanned_chunk_names_the_step(tmp_path):
    workdir = tmp_path / "w"
    config = tiny_digits(**{"optim.learning_rate": 1e30, "optim.max_consecutive_skips": 3,
                            "run.steps_per_dispatch": 10, "run.log_every": 40,
                            "run.eval_every": 40, "run.checkpoint_every": 40})
    with pytest.raises(FloatingPointError, match=r"at step 5; stopping"):
        train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    assert read_jsonl(workdir / "metrics.jsonl")[-1]["diverged_at_step"] == 5


def test_bernoulli_on_grey_levels_needs_the_named_opt_in(tmp_path):
    grey = {"data.binarization": "none", "run.num_steps": 20}
    with pytest.raises(ValueError,
                       match=r"17 grey levels.*model.allow_grey_level_bernoulli=True"):
        train.train_and_evaluate(tiny_digits(**grey), tmp_path / "w", quiet=True)
    assert not (tmp_path / "w").exists()
    workdir = tmp_path / "opt_in"
    result = train.train_and_evaluate(
        tiny_digits(**grey, **{"model.allow_grey_level_bernoulli": True}), workdir, quiet=True,
        devices=jax.devices()[:1])
    assert result.validation["normalised_likelihood"] == 0.0
    assert all(row["normalised_likelihood"] == 0.0
               for name in ("metrics.jsonl", "eval_metrics.jsonl")
               for row in read_jsonl(workdir / name))
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["normalised_likelihood"] == 0.0
    # Binarised data keep the plain metrics.
    plain = train.train_and_evaluate(tiny_digits(**{"run.num_steps": 20}), tmp_path / "binary",
                                     quiet=True, devices=jax.devices()[:1])
    assert "normalised_likelihood" not in plain.validation


def test_support_violations_count_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 1.5, (4, 5, 5, 1)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    outside = ~np.isfinite(x) | (x < 0) | (x > 1)
    for likelihood in ("bernoulli", "continuous_bernoulli"):
        assert int(losses.support_violations(x, likelihood)) == int(outside.sum())
    assert int(losses.support_violations(x, "gaussian")) == 1  # only the NaN
    grid = np.arange(17, dtype=np.float32) / 16
    assert int(losses.support_violations(grid, "discretized_logistic", num_bins=17)) == 0
    assert int(losses.support_violations(grid + 0.01, "discretized_logistic", num_bins=17)) == 17
    assert int(jax.jit(functools.partial(losses.support_violations, likelihood="bernoulli"))(
        np.clip(x, 0, 1))) == 1


def test_training_batch_outside_the_support_stops_the_run(tmp_path, monkeypatch):
    # A data set whose scale does not fit its levels (here: training rows of 255 with the
    # digits' scale 1/16) passes the start-up check on the validation split; inside the jitted
    # step a Bernoulli would train on intensities near 16. The on-device check stops it.
    load = input_pipeline.load_dataset

    def bad_train_rows(*args, **kwargs):
        data = load(*args, **kwargs)
        train_rows = data.train.copy()
        train_rows[:] = 255
        return dataclasses.replace(data, train=train_rows)

    monkeypatch.setattr(input_pipeline, "load_dataset", bad_train_rows)
    workdir = tmp_path / "w"
    with pytest.raises(train.DataSupportError, match=r"training batch of step 1 had \d+ pixel"):
        train.train_and_evaluate(tiny_digits(), workdir, quiet=True, devices=jax.devices()[:1])
    assert not train.has_checkpoint(workdir)
    assert read_jsonl(workdir / "metrics.jsonl")[-1]["support_violation_at_step"] == 1


def test_preprocess_binarizes_afresh_with_the_intensity_as_frequency():
    # Every pixel of 2,000 examples at intensity 3/16: each key binarises them afresh, and the
    # frequency of ones is the intensity (a fixed key would make static binarisation).
    levels = np.full((2000, 4, 4, 1), 3, np.uint8)
    binarize = functools.partial(train.preprocess, scale=1 / 16, binarize=True,
                                 example_ids=jnp.arange(2000))
    a = np.asarray(binarize(levels, jax.random.key(1)))
    b = np.asarray(binarize(levels, jax.random.key(2)))
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert np.mean(a != b) > 0.2  # P(differ) = 2 p (1 - p) = 0.30
    for sample in (a, b):  # 32,000 pixels: the standard error of the frequency is 0.0022
        assert abs(sample.mean() - 3 / 16) < 0.01
    np.testing.assert_array_equal(a, binarize(levels, jax.random.key(1)))


def test_ema_update_weights_the_new_parameters_by_one_minus_decay():
    optimizer = optax.sgd(1.0)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=train.init_skip_state(optimizer, params), ema_params=params)

    def loss_fn(params, x, key, *, step, beta, example_ids, axis_name):
        loss = jnp.sum(params["w"] * jnp.array([1.0, 2.0, -1.0]))
        return loss, {"loss": loss}

    step = jax.jit(lambda s: train.train_step(
        s, jnp.zeros((2, 2, 2, 1), jnp.uint8), jax.random.key(0), loss_fn=loss_fn,
        optimizer=optimizer, beta_schedule=optax.constant_schedule(1.0),
        lr_schedule=optax.constant_schedule(1.0), scale=1 / 255, binarize=False, ema_decay=0.9))
    w = np.array([1.0, -2.0, 3.0])
    ema = w.copy()
    for _ in range(3):
        state, _ = step(state)
        w = w - np.array([1.0, 2.0, -1.0])  # SGD with learning rate 1
        ema = 0.9 * ema + 0.1 * w  # float64 reference
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-6)
    np.testing.assert_allclose(state.ema_params["w"], ema, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_save_the_current_step_and_exit_with_one_line(tmp_path, signum):
    flags = ("--config.run.num_steps=100000", "--config.run.steps_per_dispatch=10",
             "--config.run.log_every=1000", "--config.run.eval_every=100000",
             "--config.run.checkpoint_every=100000", "--config.model.hidden=(64,)")
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "vae_jax.main", "--config", str(REPO / "experiments/digits.py"),
           "--workdir", str(workdir), "--quiet", *flags]
    env = dict(os.environ, XLA_FLAGS=xla_flags(2))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (workdir / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(rf"{signal.Signals(signum).name} at step (\d+): saved checkpoint \d+ to "
                         r"\S+; rerun the same command to resume", last)
    assert match, stderr[-3000:]
    step = int(match.group(1))
    assert step >= 1000 and step % 10 == 0 and (workdir / "checkpoints" / str(step)).is_dir()
    assert "Traceback" not in stderr
    # The window since the last log line is recorded up to the saved step.
    assert read_jsonl(workdir / "metrics.jsonl")[-1]["step"] == step


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_at_once(tmp_path):
    workdir = tmp_path / "w"
    flags = ("--config.run.num_steps=100000", "--config.run.steps_per_dispatch=10",
             "--config.run.log_every=1000", "--config.run.eval_every=100000",
             "--config.run.checkpoint_every=100000", "--config.model.hidden=(64,)")
    cmd = [sys.executable, "-m", "vae_jax.main", "--config", str(REPO / "experiments/digits.py"),
           "--workdir", str(workdir), "--quiet", *flags]
    env = dict(os.environ, XLA_FLAGS=xla_flags(2))
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (workdir / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None
        rows_before = (workdir / "metrics.jsonl").read_text()
        second = run_main(workdir, *flags)
        assert second.returncode == 1
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and f"process {first.pid} on " in last, last
        assert (workdir / "metrics.jsonl").read_text().startswith(rows_before)
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_the_cause_as_its_last_line(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); "
                    "tests/test_workdir.py injects the write error instead")
    try:
        result = run_main(mount / "w", *SMALL_FLAGS)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert re.fullmatch(r"error: No space left on device while writing checkpoint 20 to "
                            r"\S+/checkpoints/20", last), result.stderr[-2000:]
        assert not train.has_checkpoint(mount / "w")
    finally:
        subprocess.run(["umount", str(mount)])


# --------------------------------------------------------------------------- model selection


def test_best_on_validation_counts_passes_since_a_strictly_better_one():
    best = train.BestOnValidation(metric="m", mode="max", patience=2)
    assert [best.update(v, s) for s, v in enumerate([1.0, 2.0, 2.0, 1.5], start=1)] == [
        True, True, False, False]
    assert (best.best_step, best.best_value, best.passes_since_best) == (2, 2.0, 2)
    assert best.exhausted
    lower = train.BestOnValidation.from_rows(
        [{"step": 1, "m": 3.0}, {"step": 2, "m": 1.0}, {"step": 3, "m": 2.0}], metric="m",
        mode="min", patience=0)
    assert (lower.best_step, lower.passes_since_best, lower.exhausted) == (2, 1, False)


def _selection_config(**overrides):
    # Selecting by the HIGHEST reconstruction error makes every later pass worse than the
    # first while the model learns (checked below), so the best is step 5 and patience 3 stops
    # the run at step 20 of 200. The gated MLPs train here too.
    settings = {"run.num_steps": 200, "run.steps_per_dispatch": 5, "run.log_every": 5,
                "run.eval_every": 5, "run.checkpoint_every": 5, "run.keep_checkpoints": 5,
                "run.best_metric": "val_recon_nats", "run.best_mode": "max",
                "run.early_stopping_patience": 3, "model.encoder": "gated_mlp",
                "model.decoder": "gated_mlp", "model.hidden": (32,)}
    settings.update(overrides)
    return tiny_digits(**settings)


@pytest.fixture(scope="module")
def early_stopped_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("early") / "run"
    result = train.train_and_evaluate(_selection_config(), workdir, quiet=True,
                                      devices=jax.devices()[:1])
    return workdir, result


def test_early_stopping_fires_at_the_patience_and_keeps_the_best(early_stopped_run, tmp_path):
    workdir, result = early_stopped_run
    rows = read_jsonl(workdir / "eval_metrics.jsonl")
    recon = [row["val_recon_nats"] for row in rows]
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    assert max(recon[1:]) < recon[0]  # the premise: every later pass is worse by the metric
    assert int(jax.device_get(result.state.step)) == 20
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert (final["early_stopped_at_step"], final["best_step"]) == (20, 5)
    assert final["best_val_recon_nats"] == pytest.approx(recon[0])
    assert json.loads((workdir / "best" / "best.json").read_text()) == {
        "step": 5, "metric": "val_recon_nats", "mode": "max", "value": recon[0]}
    assert (workdir / "checkpoints" / "20").is_dir()

    # The best checkpoint holds the parameters of step 5: those of a run stopped there.
    five = train.train_and_evaluate(_selection_config(**{"run.num_steps": 5}),
                                    tmp_path / "five", quiet=True, devices=jax.devices()[:1])
    from vae_jax import evaluate

    config = _selection_config()
    vae = train.make_model(config, (8, 8, 1))
    params, step = evaluate.restore_eval_params(config, workdir, vae, (8, 8, 1), best=True)
    assert step == 5 and max_abs_diff(params, params_of(five)) == 0.0
    numbers = evaluate.evaluate_workdir(workdir, best=True, num_importance_samples=2,
                                        write_plots=False, out_dir=tmp_path / "eval",
                                        devices=jax.devices()[:1])
    assert numbers["checkpoint_step"] == 5 and numbers["best_checkpoint"]["step"] == 5

    # Rerunning the finished command trains nothing and keeps what the run wrote.
    before = (workdir / "metrics.jsonl").read_text()
    again = train.train_and_evaluate(_selection_config(), workdir, quiet=True,
                                     devices=jax.devices()[:1])
    assert int(jax.device_get(again.state.step)) == 20
    assert (workdir / "metrics.jsonl").read_text() == before
    assert json.loads((workdir / "final_metrics.json").read_text()) == final


def test_a_run_resumed_mid_patience_continues_the_count(early_stopped_run, tmp_path):
    # Killed after the checkpoint of step 10 (one pass since the best): the resumed run stops
    # at step 20 as the uninterrupted one did, not at 25 or 30 as a fresh count would.
    reference_dir, reference = early_stopped_run
    workdir = tmp_path / "killed"
    shutil.copytree(reference_dir, workdir)
    for step in (15, 20):
        shutil.rmtree(workdir / "checkpoints" / str(step))
        (workdir / "checkpoint_checksums" / f"{step}.json").unlink()
    resumed = train.train_and_evaluate(_selection_config(), workdir, quiet=True,
                                       devices=jax.devices()[:1])
    assert int(jax.device_get(resumed.state.step)) == 20
    assert max_abs_diff(params_of(resumed), params_of(reference)) == 0.0
    assert [row["step"] for row in read_jsonl(workdir / "eval_metrics.jsonl")] == [5, 10, 15, 20]
    assert json.loads((workdir / "best" / "best.json").read_text())["step"] == 5


def test_an_unknown_selection_metric_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="run.best_metric='val_loss'.*one of"):
        train.train_and_evaluate(_selection_config(**{"run.best_metric": "val_loss"}),
                                 tmp_path / "w", quiet=True, devices=jax.devices()[:1])
    assert not (tmp_path / "w").exists()


def test_no_image_examples_turns_the_pictures_off(tmp_path):
    config = tiny_digits(**{"run.num_steps": 20, "run.num_image_examples": 0})
    result = train.train_and_evaluate(config, tmp_path / "run", quiet=True,
                                      devices=jax.devices()[:1])
    assert int(jax.device_get(result.state.step)) == 20
    assert not list((tmp_path / "run").glob("images/*.png"))
