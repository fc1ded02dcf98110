"""Multi-host training for real: 2 processes x 2 CPU devices on 127.0.0.1 (gloo collectives).

The same run as 1 process x 4 devices must end with the same parameters: each process feeds
only its rows, `jax.make_array_from_process_local_data` assembles the global arrays, and the
randomness depends on global example positions only.
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import xla_flags
from tests.test_train import tiny_digits
from vae_jax import input_pipeline, train
from vae_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ("--config", str(REPO / "experiments" / "digits.py"), "--quiet",
         "--config.run.num_steps=40", "--config.run.steps_per_dispatch=10",
         "--config.run.log_every=10", "--config.run.eval_every=20",
         "--config.run.checkpoint_every=20", "--config.model.hidden=(64,)")
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, local_devices, extra=()):
    env = dict(os.environ, XLA_FLAGS=xla_flags(local_devices))
    cmd = [sys.executable, "-m", "vae_jax.main", *FLAGS, "--workdir", str(workdir), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(procs):
    """Waits for every process (bounded in time); kills them all on timeout or failure."""
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
    return outputs


def restore_params(workdir):
    config = tiny_digits()
    data = input_pipeline.load_dataset("digits", validation_size=150)
    vae = train.make_model(config, data.image_shape)
    state = train.init_state(jax.random.key(7), vae, data.image_shape,
                             train.make_optimizer(config), ema=False)
    checkpoints = workdir_lib.Checkpoints(pathlib.Path(workdir) / "checkpoints", keep=3)
    state = checkpoints.restore_latest(state)
    checkpoints.close()
    assert int(state.step) == 40
    return jax.device_get(state.params)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    port = free_port()
    multi = [
        launch(tmp_path / "2x2", 2, ("--coordinator_address", f"127.0.0.1:{port}",
                                     "--num_processes", "2", "--process_id", str(i)))
        for i in range(2)
    ]
    out_multi = finish(multi)
    (out_single,) = finish([launch(tmp_path / "1x4", 4)])
    assert "final: step=40" in out_multi[0] and "final: step=40" in out_single
    assert "process 1 of 2" not in out_multi[0]  # only process 0 reports

    a, b = restore_params(tmp_path / "2x2"), restore_params(tmp_path / "1x4")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
