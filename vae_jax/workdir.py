"""Everything a run writes into its workdir: config, checkpoints, metrics, TensorBoard, pictures.

    workdir/
      config.json          the resolved config; a rerun with a different one is refused
      checkpoints/<step>/  orbax checkpoints of the TrainState (the last `keep_checkpoints`)
      metrics.jsonl        one JSON object per logging step (training metrics)
      eval_metrics.jsonl   one JSON object per evaluation (validation ELBO terms)
      tensorboard/         TensorBoard event files: the same scalars, plus image summaries
      images/              reconstructions_<step>.png (inputs above outputs), samples_<step>.png
      final_metrics.json   the last training and validation metrics of the run

Only process 0 writes files; every process takes part in checkpointing (orbax needs them all).
"""

from __future__ import annotations

import datetime
import json
import math
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from vae_jax import losses


class WorkdirConfigMismatch(RuntimeError):
    """The workdir belongs to a run with a different config."""


class CheckpointRestoreError(RuntimeError):
    """A checkpoint exists but cannot be restored into the current model."""


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Writes JSON atomically: a crash mid-write never leaves a truncated file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    tmp.replace(path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_workdir_config(
    workdir: pathlib.Path, config: ml_collections.ConfigDict, *, allow_config_change: bool
) -> bool:
    """Refuses a workdir whose config.json differs from `config`; True if it differs.

    Reads only: nothing is written, so a refused run leaves the workdir as it was.
    """
    path = workdir / "config.json"
    if not path.exists():
        return False
    old = _flatten(json.loads(path.read_text()))
    new = _flatten(json.loads(config.to_json_best_effort(sort_keys=True)))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed and not allow_config_change:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise WorkdirConfigMismatch(
            f"{workdir} holds a run with a different config ({details}). Nothing was "
            "changed. Use another --workdir, or pass --allow_config_change to resume this "
            "run's checkpoints under the new config."
        )
    return bool(changed)


def record_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json (process 0), keeping a differing old one as config.previous-<time>.json."""
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    config_json = json.loads(config.to_json_best_effort(sort_keys=True))
    if path.exists():
        if json.loads(path.read_text()) == config_json:
            return
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path.replace(workdir / f"config.previous-{stamp}.json")
    write_json(path, config_json)


class Checkpoints:
    """Orbax checkpoints of the TrainState in `directory`, keeping the last `keep`."""

    def __init__(self, directory: pathlib.Path, *, keep: int):
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def restore_latest(self, state):
        """The latest checkpoint restored into `state`'s structure and shardings, or `state`.

        A checkpoint that cannot be read or does not fit the model raises
        `CheckpointRestoreError`; the checkpoint is left where it is.
        """
        step = self.manager.latest_step()
        if step is None:
            return state
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises many types; all mean the same to the user
            self.close()
            raise CheckpointRestoreError(
                f"could not restore the checkpoint at {self.directory / str(step)} "
                f"({type(err).__name__}: {str(err)[:500]}). It was left in place; move it away "
                "(or use another --workdir) to start afresh, or fix the config to match it."
            ) from err
        return restored

    def save(self, step: int, state) -> None:
        """Saves (asynchronously; `close` waits) unless this step is already saved."""
        if self.manager.latest_step() == step:
            return
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def summarise(pending: list, step: int, elapsed_s: float, num_examples: int) -> dict:
    """Mean of the per-step metrics since the last log, plus throughput."""
    stacked = {k: np.concatenate([np.asarray(m[k]).reshape(-1) for m in pending]) for k in pending[0]}
    out = {k: float(np.mean(v)) for k, v in stacked.items()}
    for k in ("skipped_updates", "consecutive_skips"):
        if k in stacked:
            out[k] = int(stacked[k][-1])
    out["step"] = int(step)
    out["examples_per_sec"] = num_examples / max(elapsed_s, 1e-9)
    return out


class MetricsLogger:
    """metrics.jsonl, TensorBoard scalars and images, and a tqdm progress bar."""

    def __init__(self, workdir, *, enabled: bool, quiet: bool, total_steps: int, initial_step: int):
        self.enabled = enabled
        self.workdir = pathlib.Path(workdir)
        self.writer = None
        self.bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm.auto import tqdm

        self.writer = SummaryWriter(str(self.workdir / "tensorboard"))
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            disable=quiet or not sys.stderr.isatty(),
            unit="step",
            dynamic_ncols=True,
        )

    def _append(self, name: str, record: dict) -> None:
        with open(self.workdir / name, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        self._append("metrics.jsonl", metrics)
        for key, value in metrics.items():
            if key != "step" and math.isfinite(value):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.2f}", ex_per_s=f"{metrics['examples_per_sec']:.0f}"
        )

    def log_eval(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        self._append("eval_metrics.jsonl", {"step": int(step), **metrics})
        for key, value in metrics.items():
            if isinstance(value, list):  # one curve per latent dimension
                for i, v in enumerate(value):
                    self.writer.add_scalar(f"validation/{key}/{i}", v, step)
            else:
                self.writer.add_scalar(f"validation/{key}", value, step)

    def log_images(self, images: dict, step: int) -> None:
        if not self.enabled:
            return
        for name, image in images.items():
            self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.bar.close()


def image_grid(images_nhwc: np.ndarray, rows: int) -> np.ndarray:
    """Tiles [N, H, W, C] images in [0, 1] into one uint8 [rows*H, cols*W, C] picture."""
    n, h, w, c = images_nhwc.shape
    cols = -(-n // rows)
    grid = np.zeros((rows * h, cols * w, c), np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = images_nhwc[i]
    return (np.clip(grid, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def save_png(path: pathlib.Path, grid_hwc: np.ndarray) -> None:
    """Saves a uint8 [H, W, C] picture (grayscale when C = 1), upscaled for small images."""
    image = Image.fromarray(grid_hwc[..., 0] if grid_hwc.shape[-1] == 1 else grid_hwc)
    scale = max(1, 256 // max(grid_hwc.shape[:2]))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)


class Pictures:
    """Reconstructions (input above output) and prior samples, as PNG files and TB images."""

    def __init__(self, workdir, *, encoder, decoder, likelihood, image_shape, sample_prior,
                 examples, enabled: bool, num_samples: int = 64):
        """`sample_prior(decoder_params, key, num_samples) -> z [N, Z]` draws the decoder's input
        from the prior (`train.make_prior_sampler`: ancestral for the two-layer model)."""
        self.directory = pathlib.Path(workdir) / "images"
        self.enabled = enabled
        self.examples = np.asarray(examples, np.float32)  # [n, H, W, C] in [0, 1]
        self.num_samples = num_samples
        self.last_images = {}

        def reconstruct(params, x):
            mean_bz, _ = encoder.apply(params["encoder"], x)
            out = decoder.apply(params["decoder"], mean_bz)
            return losses.likelihood_mean(likelihood, out)

        def sample(params, key):
            z = sample_prior(params["decoder"], key, num_samples)
            return losses.likelihood_mean(likelihood, decoder.apply(params["decoder"], z))

        self._reconstruct = jax.jit(reconstruct)
        self._sample = jax.jit(sample)

    def write(self, params, step: int, key) -> None:
        """Writes reconstructions_<step>.png and samples_<step>.png."""
        recon = np.asarray(jax.device_get(self._reconstruct(params, jnp.asarray(self.examples))))
        samples = np.asarray(jax.device_get(self._sample(params, key)))
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        pairs = np.concatenate([self.examples, recon], axis=0)
        self.last_images = {
            "reconstructions": image_grid(pairs, rows=2 * max(1, len(self.examples) // 16)),
            "samples": image_grid(samples, rows=int(math.sqrt(self.num_samples))),
        }
        for name, grid in self.last_images.items():
            save_png(self.directory / f"{name}_{step:07d}.png", grid)
