"""Test set-up shared by every test module.

Eight fake CPU devices are requested before JAX is imported anywhere, so multi-device code
(`jax.shard_map` over a 1-D mesh) is exercised on an ordinary CPU. Single-device behaviour is
tested on a mesh over `jax.devices()[:1]`.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real MNIST in TFDS format lives beside the repository on CI and development machines.
SHARED_TFDS_DIR = REPO_ROOT.parent / "shared" / "data" / "tfds"


@pytest.fixture(scope="session")
def mnist_data_dir():
    """The pre-populated TFDS data_dir holding real MNIST; skips when it is absent."""
    if not (SHARED_TFDS_DIR / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_TFDS_DIR} (a fresh clone has no ../shared)")
    return str(SHARED_TFDS_DIR)
