"""vae_jax.provenance: experiment files by name or path, the CPU and the commit of a record."""

import shutil
import subprocess

import pytest

from vae_jax import provenance


def test_an_experiment_loads_alike_by_name_and_by_path():
    by_name = provenance.experiment_config("mnist_vampprior:hvae_vamp")
    path = provenance.EXPERIMENTS_DIR / "mnist_vampprior.py"
    by_path = provenance.experiment_config(f"{path}:hvae_vamp")
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.model.hierarchy == "vampprior" and by_name.model.prior_components == 500
    module = provenance.load_experiment("mnist_vampprior")
    assert module.STEPS_PER_EPOCH == 500


def test_without_a_variant_the_default_config_is_loaded():
    module = provenance.load_experiment("mnist_vampprior")
    assert (provenance.experiment_config("mnist_vampprior").to_dict()
            == module.get_config().to_dict())


def test_an_unknown_experiment_or_variant_is_refused():
    with pytest.raises(FileNotFoundError, match="mnist_nonexistent.py"):
        provenance.load_experiment("mnist_nonexistent")
    with pytest.raises(ValueError, match="unknown variant"):
        provenance.experiment_config("mnist_vampprior:no_such_variant")


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="no lscpu")
def test_the_cpu_model_is_lscpu_s():
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")]
    assert provenance.cpu_model() == model[0]
    assert provenance.machine().startswith(model[0] + ", ")


def test_the_commit_is_the_checkout_s_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.REPO,
                          capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    commit = provenance.git_commit()
    assert head.stdout.startswith(commit.removesuffix("-dirty"))
