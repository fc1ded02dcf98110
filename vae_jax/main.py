"""Command line: train a VAE from an experiment config.

    python -m vae_jax.main --config experiments/mnist_mlp.py --workdir runs/mnist_mlp \
        --config.latent_dim=32

(or the console script `vae-jax-train` with the same flags). Rerunning the same command resumes
from the latest checkpoint in the workdir. Multi-host: pass --coordinator_address,
--num_processes and --process_id on every host (or set the standard JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID variables); the same command then trains across all of them.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir whose config.json differs from this config (the old one is kept).",
)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and TFDS log every step of every checkpoint at INFO; keep the console readable.
        logging.set_verbosity(logging.WARNING)
    from vae_jax import parallel, train

    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    import jax

    logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(),
                 jax.process_count())
    from vae_jax import input_pipeline
    from vae_jax import workdir as workdir_lib

    try:
        result = train.train_and_evaluate(
            _CONFIG.value,
            _WORKDIR.value,
            allow_config_change=_ALLOW_CONFIG_CHANGE.value,
            quiet=_QUIET.value,
        )
    except train.TrainingInterrupted as stop:
        _exit_with(str(stop), 128 + stop.signum)
    # Failures a user can act on end with one line that names the cause (the last line printed),
    # not a traceback; anything else is a bug and keeps its traceback.
    except (FloatingPointError, train.DataSupportError, input_pipeline.DatasetNotFoundError,
            workdir_lib.WorkdirLocked, workdir_lib.WorkdirConfigMismatch,
            workdir_lib.CheckpointRestoreError, workdir_lib.CheckpointSaveError) as err:
        _exit_with(f"error: {err}", 1)
    if jax.process_index() == 0:
        summary = {**result.last_metrics, **result.validation}
        keys = ("step", "loss", "recon_nats", "kl_nats", "val_elbo_nats", "examples_per_sec")
        print("final: " + ", ".join(f"{k}={summary[k]:.4g}" for k in keys if k in summary))
        if "normalised_likelihood" in summary:
            print("note: a Bernoulli cross-entropy of grey levels (allow_grey_level_bernoulli): "
                  "a non-normalised loss, not a likelihood; its ELBO is not a bound on log p(x)")
        print(f"pictures: {os.path.join(_WORKDIR.value, 'images')}")


def _exit_with(message: str, code: int):
    """Prints `message` as the last line and exits at once. The run's files are closed by now;
    skipping the interpreter's teardown keeps orbax's asyncio tasks of a failed save (a full
    disk) from printing "Task exception was never retrieved" tracebacks after the cause.

    Orbax's threads of a failed save may still be printing tracebacks at this moment ("Event
    loop is closed"), and sys.stderr is not thread-safe: a half-written line of theirs could
    run into ours. So file descriptor 2 is pointed at /dev/null first (later writes of other
    threads go nowhere) and the message goes to the real stderr on a line of its own."""
    sys.stdout.flush()
    try:
        sys.stderr.flush()
    except ValueError:  # stderr closed: the message still goes to file descriptor 2
        pass
    stderr_fd = os.dup(2)
    devnull_fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull_fd, 2)
    os.write(stderr_fd, f"\n{message}\n".encode())
    os._exit(code)


def run():
    """Console-script entry point (`vae-jax-train`)."""
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
