"""Every (prior, posterior, num_layers, objective) the model interface offers either trains and
evaluates, or is refused with a ValueError saying why before anything is written (issue 13).

The refusal rules are restated here, independently of `objectives.check_objective` and
`model.build_model`, so a rule that disappears or appears there fails a test. The whole cross
product (144 combinations, and free bits with each) is checked for acceptance or refusal, which
is cheap: nothing compiles.

Compilation dominates an end-to-end run (10-20 s of CPU each: the training chunk, the
validation program, the pictures, the NLL and per-example programs), so the compiled runs are
a covering set rather than all 76 allowed (prior, posterior, layers, objective) cells: every
objective once (an objective only changes the training loss); every prior and every posterior
at one layer; each learned prior with a non-diagonal posterior (mixture x full_covariance,
vamp x iaf); each non-diagonal posterior with two layers (two diagonal layers are
tests/test_train.py's); and the closed-form KL without per-dimension terms (standard_normal x
full_covariance). vamp x iaf with info_vae_mmd is the device-count test's model, and
factor_vae (the one objective with a network and an optimiser of its own) trains, resumes and
evaluates in its own device-count test.
"""

import functools
import itertools
import shutil

import chex
import jax
import numpy as np
import pytest

from tests.test_train import load_config, max_abs_diff, params_of, read_jsonl
from vae_jax import evaluate, input_pipeline, train
from vae_jax import model as model_lib

PRIORS = ("standard_normal", "mixture", "vamp")
POSTERIORS = ("diagonal", "full_covariance", "iaf")
NUM_LAYERS = (1, 2)
OBJECTIVES = ("elbo", "iwae", "capacity", "beta_tc", "dip_vae_i", "dip_vae_ii", "info_vae_mmd",
              "factor_vae")


def refusal_reason(prior, posterior, num_layers, objective, free_bits=0.0):
    """A regex the error must match when the combination is refused by design, else None."""
    if prior == "vamp" and num_layers != 1:
        return r"vamp.*num_layers=1"
    if objective in ("beta_tc", "dip_vae_i", "dip_vae_ii") and (
            posterior != "diagonal" or num_layers != 1):
        return rf"{objective}.*diagonal.*num_layers=1"
    if objective == "beta_tc" and prior != "standard_normal":
        return r"beta_tc.*factorised N\(0, I\).*model.prior='standard_normal'"
    if objective == "info_vae_mmd" and num_layers != 1:
        return r"info_vae_mmd.*num_layers=1"
    if free_bits > 0 and (objective != "elbo" or num_layers != 1 or posterior != "diagonal"
                          or prior != "standard_normal"):
        return r"free_bits.*'elbo'.*one layer.*'diagonal'.*'standard_normal'"
    return None


def combination_config(prior, posterior, num_layers, objective, **overrides):
    """A two-step digits run of the named combination, as small as the parts allow."""
    settings = {
        "model.prior": prior, "model.posterior": posterior, "model.num_layers": num_layers,
        "objective.name": objective, "model.latent_dim": 3, "model.hidden": (16,),
        "model.iaf_steps": 1, "objective.discriminator_hidden": (16, 16),
        "data.validation_size": 64, "run.batch_size": 16, "run.eval_batch_size": 32,
        "run.num_steps": 2, "run.steps_per_dispatch": 1, "run.log_every": 2,
        "run.eval_every": 2, "run.checkpoint_every": 2, "run.num_image_examples": 4,
    }
    if prior != "standard_normal":
        settings["model.prior_components"] = 4
    if objective == "iwae":
        settings["objective.num_samples"] = 2
    settings.update(overrides)
    return load_config("digits", **settings)


ALL = list(itertools.product(PRIORS, POSTERIORS, NUM_LAYERS, OBJECTIVES))
REFUSED = [c for c in ALL if refusal_reason(*c)]
FREE_BITS = list(itertools.product(PRIORS, POSTERIORS, NUM_LAYERS, ("elbo", "iwae")))
FREE_BITS_REFUSED = [c for c in FREE_BITS if refusal_reason(*c, free_bits=0.5)]

# Each objective once with the device-count test's info_vae_mmd; see the module docstring.
RUN = [
    ("standard_normal", "diagonal", 1, "beta_tc"),
    ("standard_normal", "full_covariance", 1, "elbo"),
    ("standard_normal", "iaf", 2, "iwae"),
    ("mixture", "diagonal", 1, "dip_vae_ii"),
    ("mixture", "full_covariance", 2, "capacity"),
    ("vamp", "diagonal", 1, "dip_vae_i"),
]


def _id(combination):
    return "-".join(map(str, combination))


def test_the_rules_leave_something_to_refuse_and_the_runs_cover_every_part():
    # Guards the parametrisations below against a typo that would empty or skew them.
    assert len(REFUSED) == 68 and len(FREE_BITS_REFUSED) == 35
    assert not any(refusal_reason(*c) for c in RUN)
    # and the device-count tests (InfoVAE; FactorVAE, which also resumes and evaluates)
    covered = [*RUN, ("vamp", "iaf", 1, "info_vae_mmd"),
               ("standard_normal", "diagonal", 1, "factor_vae")]
    for parts, axis in zip(zip(*covered), (PRIORS, POSTERIORS, NUM_LAYERS, OBJECTIVES)):
        assert set(parts) == set(axis)


@pytest.fixture(scope="module")
def digits():
    return input_pipeline.load_dataset("digits", validation_size=64, binarization="dynamic")


@pytest.mark.parametrize("combination", ALL, ids=_id)
def test_the_model_and_objective_are_built_or_refused_by_the_rules(combination, digits):
    config = combination_config(*combination)
    reason = refusal_reason(*combination)

    def build():
        vae = model_lib.build_model(config.model, digits.image_shape,
                                    num_levels=digits.num_levels)
        return train.make_loss_fn(config, vae, dataset_size=digits.num_train)

    if reason:
        with pytest.raises(ValueError, match=reason):
            build()
    else:
        assert callable(build())


@pytest.mark.parametrize("combination", REFUSED, ids=_id)
def test_a_refused_combination_writes_nothing(combination, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=refusal_reason(*combination)):
        train.train_and_evaluate(combination_config(*combination), workdir, quiet=True,
                                 devices=jax.devices()[:1])
    assert not workdir.exists()


@pytest.mark.parametrize("combination", FREE_BITS_REFUSED, ids=_id)
def test_free_bits_outside_the_plain_elbo_is_refused_and_writes_nothing(combination, tmp_path):
    workdir = tmp_path / "run"
    config = combination_config(*combination, **{"objective.free_bits": 0.5})
    with pytest.raises(ValueError, match=refusal_reason(*combination, free_bits=0.5)):
        train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    assert not workdir.exists()


def _numbers(tree):
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in _numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def check_evaluation(workdir, prior, posterior, num_layers):
    """`evaluate_workdir` of a finished run on a few examples: every number it returns finite."""
    numbers = evaluate.evaluate_workdir(workdir, num_importance_samples=3, chunk_size=2,
                                        write_plots=False, max_examples=8, iwae_ks=(1, 3),
                                        devices=jax.devices()[:1])
    assert (numbers["prior"], numbers["posterior"]) == (prior, posterior)
    assert len(numbers["latent_dims"]) == num_layers and set(numbers["iwae_bounds"]) == {"1", "3"}
    values = _numbers(numbers)
    assert len(values) > 10 and np.all(np.isfinite(values))
    # Nats per binary 8x8 image: a positive NLL and a negative ELBO, whatever the model.
    assert numbers["nll_nats"] > 0 and numbers["elbo_nats"] < 0


@pytest.mark.parametrize("combination", RUN, ids=_id)
def test_an_allowed_combination_trains_two_steps_and_evaluates(combination, tmp_path):
    workdir = tmp_path / "run"
    result = train.train_and_evaluate(combination_config(*combination), workdir, quiet=True,
                                      devices=jax.devices()[:1])
    assert int(jax.device_get(result.state.step)) == 2
    chex.assert_tree_all_finite(params_of(result))
    assert np.isfinite(result.last_metrics["loss"])
    assert np.isfinite(result.validation["val_elbo_nats"])
    check_evaluation(workdir, *combination[:3])


def test_one_and_eight_devices_follow_the_same_trajectory_with_vamp_and_iaf(tmp_path):
    # InfoVAE's MMD compares the codes of the global batch with prior draws keyed by example,
    # so it also checks that the objective's collectives make the result device-count free.
    assert len(jax.devices()) == 8
    results = {}
    for n in (1, 8):
        config = combination_config("vamp", "iaf", 1, "info_vae_mmd", **{
            "run.num_steps": 4, "run.log_every": 1, "run.eval_every": 4,
            "run.checkpoint_every": 4})
        results[n] = train.train_and_evaluate(config, tmp_path / f"d{n}", quiet=True,
                                              devices=jax.devices()[:n])
    # The tolerances of tests/test_train.py's device-count test.
    losses_1, losses_8 = ([m["loss"] for m in read_jsonl(tmp_path / f"d{n}" / "metrics.jsonl")]
                          for n in (1, 8))
    assert len(losses_1) == 4
    np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5)
    assert max_abs_diff(params_of(results[1]), params_of(results[8])) < 1e-5
    assert results[1].validation["val_elbo_nats"] == pytest.approx(
        results[8].validation["val_elbo_nats"], rel=1e-5)
    # The eight-device checkpoint evaluates on one device.
    check_evaluation(tmp_path / "d8", "vamp", "iaf", 1)


def test_factor_vae_resumes_exactly_and_does_not_depend_on_the_device_count(tmp_path):
    # The discriminator and its optimiser state live in the TrainState (params["objective"],
    # the second part of the optimiser), so they are checkpointed, restored and averaged over
    # the devices like the model's; its permutations act on the global batch.
    assert len(jax.devices()) == 8
    config = combination_config("standard_normal", "diagonal", 1, "factor_vae", **{
        "run.num_steps": 4, "run.log_every": 1, "run.eval_every": 4,
        "run.checkpoint_every": 2, "objective.factor_gamma": 5.0})
    results = {n: train.train_and_evaluate(config, tmp_path / f"d{n}", quiet=True,
                                           devices=jax.devices()[:n]) for n in (1, 8)}
    rows = {n: read_jsonl(tmp_path / f"d{n}" / "metrics.jsonl") for n in (1, 8)}
    for key in ("loss", "discriminator_loss", "total_correlation_nats"):
        np.testing.assert_allclose([m[key] for m in rows[1]], [m[key] for m in rows[8]],
                                   rtol=1e-5, atol=1e-6)
    assert max_abs_diff(params_of(results[1]), params_of(results[8])) < 1e-5
    disc_1 = params_of(results[1])["objective"]["discriminator"]
    initial = train.set_up_run(config, devices=jax.devices()[:1]).initial_state
    assert max_abs_diff(disc_1, initial.params["objective"]["discriminator"]) > 1e-6

    # Kill after the checkpoint of step 2 (its step-4 checkpoint gone): rerunning the command
    # resumes at step 2 and ends at the same parameters, discriminator included.
    workdir = tmp_path / "d1"
    shutil.rmtree(workdir / "checkpoints" / "4")
    (workdir / "checkpoint_checksums" / "4.json").unlink()
    resumed = train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    assert int(jax.device_get(resumed.state.step)) == 4
    assert max_abs_diff(params_of(resumed), params_of(results[1])) == 0.0
    assert [m["step"] for m in read_jsonl(workdir / "metrics.jsonl")] == [1, 2, 3, 4]
    check_evaluation(workdir, "standard_normal", "diagonal", 1)


@pytest.mark.parametrize("prior", ["standard_normal", "mixture", "vamp"])
def test_beta_tc_with_a_learned_prior_is_refused_or_is_the_elbo_at_beta_one(prior, digits):
    # objectives.beta_tc_objective: "At beta = 1 this is the ELBO with the KL estimated through
    # the decomposition". MI + TC + dimension-wise KL = log q(z|x) - log p(z) for the p(z) in
    # the decomposition, so at beta = 1 the loss must be the draw's -(log p(x|z) + log p(z)
    # - log q(z|x)) under the model's own prior, or the combination must be refused.
    config = combination_config(prior, "diagonal", 1, "beta_tc")
    vae = model_lib.build_model(config.model, digits.image_shape, num_levels=digits.num_levels)
    try:
        loss_fn = train.make_loss_fn(config, vae, dataset_size=digits.num_train)
    except ValueError as e:
        assert "prior" in str(e)
        return
    params = vae.init(jax.random.key(0), digits.image_shape)
    x = (digits.train[:16] * digits.scale > 0.5).astype(np.float32)
    key = jax.random.key(1)
    loss, _ = jax.jit(functools.partial(loss_fn, beta=1.0))(params, x, key)
    w = jax.jit(functools.partial(vae.log_weights, num_samples=1))(params, x, key).weights
    negative_elbo = -np.mean(np.asarray(w.log_px_z + w.log_pz - w.log_qz, np.float64))
    assert float(loss) == pytest.approx(negative_elbo, rel=1e-5)


def test_prior_components_with_the_standard_normal_prior_is_refused_clearly(digits):
    # A sweep over priors from an experiment that sets prior_components must not end in a
    # TypeError deep in priors.py: the config error names the field.
    config = combination_config("standard_normal", "diagonal", 1, "elbo",
                                **{"model.prior_components": 4})
    with pytest.raises(ValueError, match=r"model.prior_components=4 sizes a 'mixture' or "
                                         r"'vamp' prior; model.prior='standard_normal'"):
        model_lib.build_model(config.model, digits.image_shape, num_levels=digits.num_levels)


def test_the_vampprior_hierarchy_trains_resumes_and_evaluates_alike_on_one_and_eight_devices(
        tmp_path):
    """Tomczak & Welling's top-down two-level model (gated networks, a VampPrior on z_2, IAF
    posteriors in both layers, the IWAE bound): 1 and 8 devices follow one trajectory, a run
    stopped at its step-2 checkpoint and rerun ends with the uninterrupted run's parameters,
    and the evaluation (NLL, plots of the decoder's input [z_1, z_2]) runs on it."""
    overrides = {"model.hierarchy": "vampprior", "model.encoder": "gated_mlp",
                 "model.decoder": "gated_mlp", "model.upper_latent_dims": (2,),
                 "run.num_steps": 4, "run.log_every": 1, "run.eval_every": 2,
                 "run.checkpoint_every": 2}
    results = {}
    for n in (1, 8):
        config = combination_config("vamp", "iaf", 2, "iwae", **overrides)
        results[n] = train.train_and_evaluate(config, tmp_path / f"d{n}", quiet=True,
                                              devices=jax.devices()[:n])
    losses_1, losses_8 = ([m["loss"] for m in read_jsonl(tmp_path / f"d{n}" / "metrics.jsonl")]
                          for n in (1, 8))
    assert len(losses_1) == 4 and np.all(np.isfinite(losses_1))
    np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5)
    assert max_abs_diff(params_of(results[1]), params_of(results[8])) < 1e-5
    # Resume: drop the step-4 checkpoint and rerun the same command.
    workdir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "d1", workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    (workdir / "checkpoint_checksums" / "4.json").unlink()
    resumed = train.train_and_evaluate(combination_config("vamp", "iaf", 2, "iwae", **overrides),
                                       workdir, quiet=True, devices=jax.devices()[:1])
    assert max_abs_diff(params_of(resumed), params_of(results[1])) == 0.0
    numbers = evaluate.evaluate_workdir(tmp_path / "d8", num_importance_samples=3, chunk_size=2,
                                        write_plots=True, max_examples=8, iwae_ks=(1, 3),
                                        devices=jax.devices()[:1])
    assert numbers["latent_dims"] == [3, 2] and numbers["nll_nats"] > 0
    assert np.all(np.isfinite(_numbers(numbers)))
    assert (tmp_path / "d8" / "plots" / "traversals.png").is_file()
