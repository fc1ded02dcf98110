"""Test set-up shared by every test module.

Eight fake CPU devices are requested before JAX is imported anywhere, so multi-device code
(`jax.shard_map` over a 1-D mesh) is exercised on an ordinary CPU. Single-device behaviour is
tested on a mesh over `jax.devices()[:1]`.

The suite is bound by XLA compile time, not by running the programs (tiny shapes, a few steps),
so the tests compile at XLA's backend optimisation level 0, without LLVM's expensive passes: on
2 cores (AMD EPYC) `pytest -n 2` went from 19.7 to 12.5 minutes. The programs compute the same
functions; every numerical test compares against an independent reference with a tolerance,
and the tests that compare two runs bit for bit compile both with the same flags (subprocesses
take theirs from `xla_flags`).

Many tests compile the same programs (the tiny configs, the end-to-end runs in subprocesses), so
the run shares one JAX persistent compilation cache between the pytest-xdist workers and every
subprocess: a fresh directory per run, made by the first process and removed by it at the end,
so a run never reads what an earlier one compiled. `tests/test_train.py` on 2 cores went from 155
to 120 s with it (AMD EPYC). A cached executable is looked up by a hash of the program, the
compile options, the XLA flags and the JAX version, so it is the one a compile would give.
"""

import os
import pathlib
import shutil
import tempfile

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(device_count: int | None) -> str:
    """XLA_FLAGS for a test process: `device_count` fake CPU devices (None: the machine's own),
    compiled fast (see above). Subprocesses that need their own device count take it here."""
    if device_count is None:
        return FAST_COMPILE_FLAGS
    return f"--xla_force_host_platform_device_count={device_count} {FAST_COMPILE_FLAGS}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# xdist workers (and subprocesses) inherit the directory from the process that made it.
_OWN_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_COMPILATION_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vae_jax-tests-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real MNIST in TFDS format lives beside the repository on CI and development machines.
SHARED_TFDS_DIR = REPO_ROOT.parent / "shared" / "data" / "tfds"


def pytest_unconfigure(config):
    if _OWN_COMPILATION_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def mnist_data_dir():
    """The pre-populated TFDS data_dir holding real MNIST; skips when it is absent."""
    if not (SHARED_TFDS_DIR / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_TFDS_DIR} (a fresh clone has no ../shared)")
    return str(SHARED_TFDS_DIR)
