"""Training and evaluating the embedded digits needs neither TensorFlow nor TFDS.

GPU machines often have JAX and no TensorFlow. The test runs in a subprocess in which
`tensorflow`, `tensorflow_datasets` and all their submodules cannot be imported (blocked before
anything else is imported), so the block cannot leak into other tests, and a dependency that
imports TensorFlow on the digits path fails the run.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

from tests.conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys

    BLOCKED = ("tensorflow", "tensorflow_datasets")
    # None in sys.modules is Python's documented import blocker: `import tensorflow` (and any
    # submodule, through its parent) raises ModuleNotFoundError, and
    # `importlib.util.find_spec("tensorflow")` returns None, as when it is not installed.
    # (A sys.meta_path finder that raises cannot do the second: etils' probe
    # `find_spec("tensorflow")`, on orbax's checkpoint path, would raise instead of
    # answering "not installed".)
    for name in BLOCKED:
        sys.modules[name] = None
    try:
        import tensorflow  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("the block does not work")

    import importlib.util
    import math
    import pathlib

    import jax

    from vae_jax import evaluate, train
    from vae_jax.provenance import experiment_config

    config = experiment_config("experiments/digits.py")
    config.data.validation_size = 64
    config.model.update(hidden=(16,), latent_dim=3)
    config.run.update(batch_size=16, eval_batch_size=32, num_steps=4, steps_per_dispatch=2,
                      log_every=2, eval_every=4, checkpoint_every=4, num_image_examples=4)
    workdir = pathlib.Path(sys.argv[1])
    result = train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    assert int(result.state.step) == 4 and math.isfinite(result.validation["val_elbo_nats"])
    numbers = evaluate.evaluate_workdir(workdir, num_importance_samples=3, chunk_size=2,
                                        max_examples=8, write_plots=True, iwae_ks=(1, 3),
                                        devices=jax.devices()[:1])
    assert math.isfinite(numbers["nll_nats"]) and math.isfinite(numbers["elbo_nats"])
    assert (workdir / "eval.json").is_file() and any((workdir / "plots").rglob("*.png"))
    loaded = sorted(m for m, module in sys.modules.items()
                    if m.split(".")[0] in BLOCKED and module is not None)
    assert not loaded, loaded
    print("trained and evaluated without TensorFlow")
''')


def test_digits_train_and_evaluate_without_tensorflow(tmp_path):
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained and evaluated without TensorFlow" in proc.stdout
