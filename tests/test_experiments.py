"""Every experiment config, and every variant it documents, still builds and trains (issue 13).

Each `experiments/*.py` with a `get_config` is run on the embedded digits (8x8, 17 grey levels)
with its own likelihood, binarisation, model, objective and optimiser, and smaller widths
(`shrink`). Every config and variant goes through `train.set_up_run`, which raises every error a
config can cause (field values, the model's and the objective's combinations, the data's
support, the optimiser and schedules, the initial parameters) and compiles no training or
evaluation program (cheap). Then every file and every variant trains two steps, except the
files where `NOT_TRAINED_HERE` says which test trains the same programs. Every conv
experiment fits 8x8 ('SAME' stride-2 layers go 8 -> 4 -> 2 -> 1), so none needs mocked MNIST;
the sprites experiments train on the sprites themselves (embedded, rendered on demand).
"""

import inspect
import math
import pathlib
import re

import chex
import jax
import pytest

from tests.test_train import params_of, read_jsonl
from vae_jax import train
from vae_jax.provenance import load_experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = REPO / "experiments"
EMBEDDED = ("digits", "sprites")  # data sets that need no download
NAMES = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py")
               if re.search(r"^def get_config\(", p.read_text(), re.MULTILINE))

# Files not trained here, and where the same programs are trained.
NOT_TRAINED_HERE = {
    "digits": "tests/test_train.py trains it end to end",
    "mnist_mlp": "digits' programs (checked below)",
    "bench_burda": "mnist_vae_burda:1layer's programs with its defaults (checked below)",
    "bench_conv": "mnist_conv's programs (checked below)",
    "mnist_conv_beta": "mnist_conv's programs but for beta's value (checked below)",
    "bench_pytorch_example": "test_bench_pytorch_example_trains_with_a_shorter_last_chunk",
    "fashion_mnist_bernoulli": "tests/test_likelihood_experiment.py, on mocked Fashion-MNIST",
    "fashion_mnist_gaussian": "tests/test_likelihood_experiment.py, on mocked Fashion-MNIST",
    "fashion_mnist_gaussian_learned": "tests/test_likelihood_experiment.py, mocked data",
    "fashion_mnist_logistic": "tests/test_likelihood_experiment.py, on mocked Fashion-MNIST",
}
# name -> (the config it shares programs with, the fields allowed to differ). bench_burda
# differs from mnist_vae_burda:1layer only in taking the defaults (zero output bias, constant
# learning rate, eps) that most trained configs take.
SAME_PROGRAMS = {
    "mnist_mlp": (("digits", None), set()),
    "bench_burda": (("mnist_vae_burda", "1layer"),
                    {"model.decoder_bias_init", "optim.lr_schedule", "optim.eps"}),
    "bench_conv": (("mnist_conv", None), set()),
    "mnist_conv_beta": (("mnist_conv", None), {"objective.beta"}),
}


def variants(module):
    """[None] for a file whose get_config takes no variant, else its VARIANTS (names)."""
    if not inspect.signature(module.get_config).parameters:
        return [None]
    return list(module.VARIANTS)


def default_variant(module):
    parameters = inspect.signature(module.get_config).parameters
    return parameters["variant"].default if parameters else None


def experiment_config(name, variant=None):
    module = load_experiment(name)
    return shrink(module.get_config() if variant is None else module.get_config(variant))


def shrink(config):
    """Two steps on embedded data (the digits in place of a TFDS data set), with every width
    small and every layer kept."""
    if config.data.name not in EMBEDDED:
        config.data.update(name="digits", data_dir=None, download=False)
    config.data.validation_size = 64
    m = config.model
    m.hidden = (16,) * len(m.hidden)
    m.latent_dim = min(m.latent_dim, 4)
    m.upper_latent_dims = tuple(min(z, 2) for z in m.upper_latent_dims)
    m.upper_hidden = tuple((8,) * len(h) for h in m.upper_hidden)
    m.features = (4,) * len(m.features)
    m.conv_hidden = (16,) * len(m.conv_hidden)
    m.iaf_hidden = (8,) * len(m.iaf_hidden)
    if m.prior_components:
        m.prior_components = min(m.prior_components, 4)
    config.run.update(num_steps=2, batch_size=16, eval_batch_size=32, steps_per_dispatch=1,
                      log_every=2, eval_every=2, checkpoint_every=2, num_image_examples=4)
    return config


ALL = [(name, variant) for name in NAMES for variant in variants(load_experiment(name))]
TRAINED = [(name, variant) for name, variant in ALL if name not in NOT_TRAINED_HERE]


def _id(name_variant):
    name, variant = name_variant
    return name if variant is None else f"{name}:{variant}"


def test_every_file_is_trained_here_or_says_where():
    assert len(NAMES) >= 19
    assert set(NOT_TRAINED_HERE) <= set(NAMES)
    assert set(SAME_PROGRAMS) <= set(NOT_TRAINED_HERE)
    assert {name for name, _ in TRAINED} | set(NOT_TRAINED_HERE) == set(NAMES)
    from tests.test_likelihood_experiment import FASHION_FILES

    assert {n for n in NOT_TRAINED_HERE if n.startswith("fashion_mnist_")} == set(FASHION_FILES)


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if inspect.signature(load_experiment(n).get_config).parameters])
def test_a_file_with_variants_lists_them_and_refuses_others(name):
    module = load_experiment(name)
    assert len(module.VARIANTS) > 1 and default_variant(module) in module.VARIANTS
    for variant in module.VARIANTS:
        assert variant in module.__doc__ or variant.removesuffix("_short") in module.__doc__, (
            f"{name}.py does not document its variant {variant!r}")
    with pytest.raises(ValueError, match="variant"):
        module.get_config("no_such_variant")


@pytest.mark.parametrize("name_variant", ALL, ids=_id)
def test_every_config_and_variant_is_accepted_on_the_digits(name_variant):
    config = experiment_config(*name_variant)
    setup = train.set_up_run(config, devices=jax.devices()[:1])
    assert setup.num_steps == 2
    chex.assert_tree_all_finite(setup.initial_state.params)


def _program_fields(config):
    """The shrunk config's fields that shape the compiled programs, by dotted name."""
    groups = config.to_dict()
    flat = {f"{group}.{key}": value for group in ("model", "objective", "optim")
            for key, value in groups[group].items()}
    return flat | {f"data.{key}": groups["data"][key] for key in ("binarization", "dequantize")}


@pytest.mark.parametrize("name", sorted(SAME_PROGRAMS))
def test_a_file_not_trained_here_shares_the_programs_of_one_that_is(name):
    other, may_differ = SAME_PROGRAMS[name]
    mine, theirs = _program_fields(experiment_config(name)), _program_fields(
        experiment_config(*other))
    assert {key for key in mine if mine[key] != theirs[key]} == may_differ


@pytest.mark.parametrize("name_variant", TRAINED, ids=_id)
def test_an_experiment_trains_two_steps_on_embedded_data(name_variant, tmp_path):
    config = experiment_config(*name_variant)
    result = train.train_and_evaluate(config, tmp_path / "run", quiet=True,
                                      devices=jax.devices()[:1])
    assert int(jax.device_get(result.state.step)) == 2
    chex.assert_tree_all_finite(params_of(result))
    assert math.isfinite(result.last_metrics["loss"])
    assert math.isfinite(result.validation["val_elbo_nats"])
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 2


def test_bench_pytorch_example_trains_with_a_shorter_last_chunk(tmp_path):
    # Its own config (steps_per_dispatch=100, batch 128, one hidden layer of 400) on the
    # digits for 150 steps: one chunk of 100 steps and a last one of 50, logged after each.
    config = load_experiment("bench_pytorch_example").get_config()
    assert config.run.steps_per_dispatch == 100
    config.data.update(name="digits", data_dir=None, validation_size=64)
    config.run.update(num_steps=150, log_every=100)
    result = train.train_and_evaluate(config, tmp_path / "run", quiet=True,
                                      devices=jax.devices()[:1])
    assert int(jax.device_get(result.state.step)) == 150
    assert [row["step"] for row in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [100, 150]
    assert (tmp_path / "run" / "checkpoints" / "150").is_dir()
    chex.assert_tree_all_finite(params_of(result))
