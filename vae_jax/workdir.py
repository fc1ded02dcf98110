"""Everything a run writes into its workdir: config, checkpoints, metrics, TensorBoard, pictures.

    workdir/
      .lock                the PID, host and purpose of the process using the workdir (flock)
      config.json          the resolved config; a rerun with a different one is refused
      checkpoints/<step>/  orbax checkpoints of the TrainState (the last `keep_checkpoints`)
      checkpoint_checksums/<step>.json   SHA-256 of every file of checkpoints/<step>/
      checkpoints_corrupt/<step>/        checkpoints that failed verification, never deleted
      metrics.jsonl        one JSON object per logging step (training metrics)
      eval_metrics.jsonl   one JSON object per evaluation (validation ELBO terms)
      tensorboard/         TensorBoard event files: the same scalars, plus image summaries
      images/              reconstructions_<step>.png (inputs above outputs), samples_<step>.png
      final_metrics.json   the last training and validation metrics of the run
      best/                with run.keep_best or early stopping: checkpoints/<step>/ (and its
                           checksums) of the best validation pass, and best.json naming it

Only process 0 writes files; every process takes part in checkpointing (orbax needs them all).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import pathlib
import re
import shutil
import socket
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from PIL import Image

from vae_jax import config_defaults


class WorkdirConfigMismatch(RuntimeError):
    """The workdir belongs to a run with a different config."""


class WorkdirLocked(RuntimeError):
    """Another process, or another lock in this one, is using the workdir."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, a lost mount); the message is the cause."""


class CheckpointRestoreError(RuntimeError):
    """No checkpoint could be restored: corrupt, missing, or not fitting the current model."""


class CheckpointNotFound(CheckpointRestoreError, FileNotFoundError):
    """The requested checkpoint step does not exist."""


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
    old = _flatten(config_defaults.with_defaults(json.loads(path.read_text())))
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
    """Writes config.json (process 0), keeping a differing old one as
    config.previous-<time>.json."""
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    config_json = json.loads(config.to_json_best_effort(sort_keys=True))
    if path.exists():
        if config_defaults.with_defaults(json.loads(path.read_text())) == config_json:
            return
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path.replace(workdir / f"config.previous-{stamp}.json")
    write_json(path, config_json)


class WorkdirLock:
    """Exclusive use of a workdir by one process, for the whole of its life.

    Two runs in one workdir overwrite each other's checkpoints and interleave their metrics.
    The lock is an `fcntl.flock` on `workdir/.lock`. The kernel drops it when the holder's file
    is closed, so also when the process crashes or is killed with -9: a lock file left by a dead
    process is free by construction, and acquiring never waits. The file is never deleted
    (after an unlink a newcomer would lock a fresh file of the same name while the holder still
    holds the old one); the holder writes its PID, host, purpose and start time into it, so a
    refused process can say who is in the way, and empties it on release. flock locks belong
    to an open file, not to a process: a second lock taken in the same process is refused too.
    The descriptor is not inherited across exec, but a child forked without exec shares it.

        with workdir_lib.WorkdirLock(workdir, purpose="training"):
            ...
    """

    def __init__(self, workdir, *, purpose: str):
        self.path = pathlib.Path(workdir) / ".lock"
        self.purpose = purpose
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WorkdirLock:
        """Takes the lock at once or raises `WorkdirLocked` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            locked = err.errno in (errno.EAGAIN, errno.EACCES)
            holder = _read_lock_holder(fd) if locked else None
            os.close(fd)
            if not locked:
                raise
            raise WorkdirLocked(self._refusal(holder)) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empties the lock file (it would name a process that no longer holds it) and unlocks."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor of the open file releases the flock

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _refusal(self, holder: dict | None) -> str:
        workdir = self.path.parent
        if not holder:
            who, stop = "another process (it has not written its PID yet)", "stop it"
        else:
            pid, host = holder.get("pid"), holder.get("host")
            who = (f"process {pid} on {host} ({holder.get('purpose')}, since "
                   f"{holder.get('started')})")
            if pid == os.getpid() and host == socket.gethostname():
                who += ", which is this process: the workdir is already locked here"
            stop = f"stop it (kill {pid} on {host})"
        return (
            f"{workdir} is in use by {who}. Two processes in one workdir would overwrite each "
            f"other's checkpoints and metrics, so this {self.purpose} did not start. Wait for "
            f"that one to finish or {stop}, or use another --workdir."
        )


def _read_lock_holder(fd: int) -> dict | None:
    """The holder's details; a holder that has just taken the lock gets a moment to write them."""
    for _ in range(10):
        try:
            holder = json.loads(os.pread(fd, 4096, 0))
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        time.sleep(0.05)
    return None


def file_digests(directory: pathlib.Path) -> dict[str, str]:
    """SHA-256 (hex) of every file under `directory`, keyed by its path relative to it."""
    digests = {}
    for path in sorted(pathlib.Path(directory).rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                digests[path.relative_to(directory).as_posix()] = hashlib.file_digest(
                    f, "sha256").hexdigest()
    return digests


def _short(err: BaseException, *, max_lines: int = 4) -> str:
    """The first lines of an error, without the TensorStore spec that orbax appends (~70 lines
    per array)."""
    text = str(err).split("See full TensorStore details")[0].strip()
    lines = [line[:240] for line in text.splitlines()[:max_lines]]
    return f"{type(err).__name__}: " + "\n    ".join(lines)


def _save_failure_cause(err: BaseException) -> str:
    """What went wrong, in words: 'No space left on device' rather than orbax's RESOURCE_EXHAUSTED
    message of TensorStore paths (it carries the errno as os_error_code='28')."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        code = re.search(r"os_error_code='(\d+)'", str(seen))
        if code:
            return os.strerror(int(code.group(1)))
        seen = seen.__cause__ or seen.__context__
    return _short(err, max_lines=1)


def _key_names(path) -> tuple[str, ...]:
    """A pytree path as names, so that a dataclass field (`.params`) and the dict key orbax
    stores it under (`['params']`) compare equal."""
    return tuple(str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
                 for key in path)


class _DropOrbaxTracebacks(logging.Filter):
    """Orbax logs each failed background write with its traceback, once per writer thread:
    ~340 lines for one full disk. `CheckpointSaveError` says the cause in one line; orbax's
    messages stay, one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


def _join_orbax_threads(timeout_s: float = 60.0) -> None:
    """Waits (at most `timeout_s`) for orbax's writer threads of a failed save to end.

    Orbax reports a failed save as soon as one of its writer threads fails; the others go on
    writing. Left running, one of them fails later (at interpreter exit: "cannot schedule new
    futures after shutdown") and its log line lands after the `CheckpointSaveError`, which
    must be the last thing a dying run prints.
    """
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and \
                type(thread).__module__.startswith("orbax."):
            # threading.Thread.join: orbax's own join re-raises the thread's exception
            threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


class Restored(NamedTuple):
    """What `Checkpoints.restore` did."""

    state: Any  # the restored state, or the given one when there was nothing to restore
    step: int | None  # the checkpoint restored, or None
    warnings: tuple[str, ...]  # corrupt checkpoints moved aside, an unverified restore


class Checkpoints:
    """Orbax checkpoints of the TrainState in `directory`, keeping the last `keep`, verified.

    Orbax (0.12, OCDBT with zstd) keeps no checksum of the array data: a bit flipped in the
    payload of a data file (`<step>/default/ocdbt.process_0/d/<hash>`) restores without any
    error as different numbers (tests/test_workdir.py shows it). So once a save has finished,
    the SHA-256 of every file of the step is recorded in `checkpoint_checksums/<step>.json`,
    beside orbax's directory where orbax never sees it, and `restore` checks a checkpoint
    against it before reading it. A checkpoint that does not match is moved to
    `checkpoints_corrupt/<step>`, out of orbax's directory: left there, orbax would keep
    calling it the latest step, skip a save of the same step, and count it against `keep`.

    Saves run in the background while training goes on, but each one's outcome is awaited
    (`wait`) before the next one starts and at `close`: a failed save stops the run there,
    saying why in one line (`CheckpointSaveError`), not at some later save amid orbax's
    tracebacks. Every process takes part; process 0 writes checksums and moves checkpoints.
    """

    def __init__(self, directory: pathlib.Path, *, keep: int):
        self.directory = pathlib.Path(directory).absolute()
        self.checksums_directory = self.directory.parent / "checkpoint_checksums"
        self.quarantine_directory = self.directory.parent / "checkpoints_corrupt"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler(),  # for item_metadata
        )
        self._pending = None  # the step being written in the background
        self._closed = False
        absl_logger = logging.getLogger("absl")
        if not any(isinstance(f, _DropOrbaxTracebacks) for f in absl_logger.filters):
            absl_logger.addFilter(_DropOrbaxTracebacks())

    def steps(self) -> list[int]:
        """The steps in orbax's directory, oldest first (corrupt ones too, until restored)."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_directory(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def checksums_path(self, step: int) -> pathlib.Path:
        return self.checksums_directory / f"{step}.json"

    def save(self, step: int, state) -> None:
        """Starts writing checkpoint `step` in the background, after waiting for the previous
        save; does nothing if `step` is already saved."""
        self.wait()
        if step in self.manager.all_steps():
            return
        if jax.process_index() == 0:  # left over from an earlier checkpoint of this step
            self.checksums_path(step).unlink(missing_ok=True)
        try:
            started = self.manager.save(step, args=ocp.args.StandardSave(state))
        except Exception as err:  # noqa: BLE001 (orbax raises many types; the cause matters)
            raise self._save_error(step, err) from None
        if started:
            self._pending = step

    def wait(self) -> None:
        """Blocks until the save in progress has finished; records its checksums, or raises
        `CheckpointSaveError` (the partial files are removed) if it failed."""
        step, self._pending = self._pending, None
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            raise self._save_error(step, err) from None
        if step not in self.manager.all_steps():
            raise self._save_error(step, RuntimeError("orbax did not commit it (see the log)"))
        if jax.process_index() != 0:
            return
        if not self.step_directory(step).is_dir():
            raise self._save_error(step, RuntimeError("orbax did not commit it (see the log)"))
        try:
            self.checksums_directory.mkdir(parents=True, exist_ok=True)
            write_json(self.checksums_path(step),
                       {"step": step, "sha256": file_digests(self.step_directory(step))})
        except OSError as err:
            raise CheckpointSaveError(
                f"{_save_failure_cause(err)} while recording the checksums of checkpoint {step} "
                f"in {self.checksums_path(step)}"
            ) from None
        kept = {str(s) for s in self.manager.all_steps()}
        for path in self.checksums_directory.glob("*.json"):
            if path.stem not in kept:  # orbax deleted that checkpoint (keep)
                path.unlink(missing_ok=True)

    def _save_error(self, step: int, err: BaseException) -> CheckpointSaveError:
        _join_orbax_threads()
        if jax.process_index() == 0:  # an unfinished save only takes space (orbax ignores it)
            for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        return CheckpointSaveError(
            f"{_save_failure_cause(err)} while writing checkpoint {step} to "
            f"{self.step_directory(step)}"
        )

    def verify(self, step: int) -> str | None:
        """None if checkpoint `step` matches its recorded checksums, else what differs.

        Raises `FileNotFoundError` when it has no checksums file (a checkpoint written by an
        older version, or a run killed between the save and the checksums).
        """
        try:
            expected = dict(json.loads(self.checksums_path(step).read_text())["sha256"])
        except (ValueError, KeyError, TypeError):
            return f"its checksums file {self.checksums_path(step)} is unreadable"
        actual = file_digests(self.step_directory(step))
        problems = [f"{name} is missing" for name in sorted(expected.keys() - actual.keys())]
        problems += [f"{name} differs from its checksum" for name in sorted(expected)
                     if name in actual and actual[name] != expected[name]]
        problems += [f"{name} is not in its checksums"
                     for name in sorted(actual.keys() - expected.keys())]
        if not problems:
            return None
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        return "; ".join(problems[:3]) + more

    def restore(self, state, step: int | None = None, *, move_corrupt: bool = True) -> Restored:
        """Checkpoint `step`, or the newest intact one, restored into `state`'s structure and
        shardings; `state` itself when there is none.

        Without `step`, checkpoints are verified newest first: a corrupt one is moved to
        `checkpoints_corrupt/` (with a warning) once an older one has restored, or only named
        with `move_corrupt=False` (for a reader of a workdir that another process may be
        training in); if none is intact nothing is moved and `CheckpointRestoreError` names
        each. A checkpoint without checksums restores with a warning that it is unverified.
        An explicit `step` is restored only if it verifies; otherwise, or if it does not exist
        (`CheckpointNotFound`, also a FileNotFoundError), the error says so and nothing moves.
        A checkpoint that does not fit the model (a changed config) raises
        `CheckpointRestoreError` and stays. Every `CheckpointRestoreError` closes this object
        first. Warnings are logged and returned.
        """
        self.wait()
        steps = self.steps()
        if step is not None:
            if step not in steps:
                self.close()
                raise CheckpointNotFound(
                    f"there is no checkpoint {step} in {self.directory} (it has "
                    f"{', '.join(map(str, steps)) or 'none'})"
                )
            candidates = [step]
        elif not steps:
            return Restored(state, None, ())
        else:
            candidates = steps[::-1]
        corrupt, warnings = [], []
        for candidate in candidates:
            try:
                problem = self.verify(candidate)
            except FileNotFoundError:
                warnings.append(
                    f"checkpoint {candidate} has no checksums ({self.checksums_path(candidate)}:"
                    " written by an older version, or the run stopped before recording them); "
                    "restoring it unverified"
                )
                break
            if problem is None:
                break
            corrupt.append((candidate, problem))
        else:
            self.close()
            bad = "; ".join(f"checkpoint {s} at {self.step_directory(s)}: {problem}"
                            for s, problem in corrupt)
            if step is not None:
                raise CheckpointRestoreError(
                    f"checkpoint {step} is corrupt ({bad}). Nothing was restored and it was left "
                    f"in place; restore another one (there are {', '.join(map(str, steps))})."
                )
            raise CheckpointRestoreError(
                f"every checkpoint in {self.directory} is corrupt ({bad}). Nothing was restored "
                "and nothing was moved; move them away (or use another --workdir) to start "
                "afresh."
            )
        restored = self._restore_step(candidate, state)
        moving = bool(corrupt) and move_corrupt
        if moving and jax.process_count() > 1:  # every process has verified before any moves
            ocp.multihost.sync_global_processes("vae_jax_checkpoints_verified")
        for bad_step, problem in corrupt[::-1]:
            where = (f"moved it to {self._quarantine(bad_step)}" if move_corrupt
                     else "left it in place")
            warnings.insert(0, f"checkpoint {bad_step} at {self.step_directory(bad_step)} is "
                               f"corrupt ({problem}); {where}")
        if moving and jax.process_count() > 1:
            ocp.multihost.sync_global_processes("vae_jax_checkpoints_quarantined")
        if moving:
            self.manager.reload()
        if corrupt:
            warnings.append(f"restored checkpoint {candidate} instead")
        for warning in warnings:
            absl_logging.warning("%s", warning)
        return Restored(restored, candidate, tuple(warnings))

    def restore_latest(self, state):
        """`restore(state).state`: the newest intact checkpoint, or `state`."""
        return self.restore(state).state

    def _restore_step(self, step: int, state):
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        mismatches = self._shape_mismatches(step, abstract)
        if mismatches:
            more = f" and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
            cause = "shapes differ: " + "; ".join(mismatches[:3]) + more
        else:
            try:
                return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as err:  # noqa: BLE001 (orbax raises many types; all mean the same)
                cause = _short(err)
        self.close()
        raise CheckpointRestoreError(
            f"could not restore checkpoint {step} ({self.step_directory(step)}) into this "
            f"model:\n    {cause}\nIt was left in place; fix the config to match it, "
            "or move it away (or use another --workdir) to start afresh."
        )

    def _shape_mismatches(self, step: int, abstract) -> list[str]:
        """Arrays whose shape in checkpoint `step` differs from `abstract`'s (a changed config).

        Orbax finds these only while reading, and leaves read coroutines behind that each print
        a ~70-line TensorStore spec whenever the garbage collector gets to them, after the error
        that explained them. Found from the metadata, nothing is read.
        """
        try:
            stored = self.manager.item_metadata(step)
        except Exception:  # noqa: BLE001 (then orbax's restore says what is wrong)
            return []
        stored_shapes = {_key_names(path): tuple(leaf.shape)
                         for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
                         if getattr(leaf, "shape", None) is not None}
        mismatches = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
            name, shape = _key_names(path), getattr(leaf, "shape", None)
            if shape is not None and stored_shapes.get(name, tuple(shape)) != tuple(shape):
                mismatches.append(f"{'.'.join(name)} is {stored_shapes[name]} in the checkpoint, "
                                  f"{tuple(shape)} in the model")
        return mismatches

    def _quarantine(self, step: int) -> pathlib.Path:
        """Moves checkpoint `step` and its checksums to checkpoints_corrupt/ (process 0)."""
        target = self.quarantine_directory / str(step)
        for n in itertools.count(1):
            if not target.exists():
                break
            target = self.quarantine_directory / f"{step}-{n}"
        if jax.process_index() == 0:
            self.quarantine_directory.mkdir(parents=True, exist_ok=True)
            shutil.move(self.step_directory(step), target)
            if self.checksums_path(step).exists():
                shutil.move(self.checksums_path(step),
                            target.with_name(target.name + ".checksums.json"))
        return target

    def close(self) -> None:
        """Waits for the save in progress (`CheckpointSaveError` if it failed) and shuts orbax's
        threads down, on the error path too."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        except BaseException:
            with contextlib.suppress(Exception):  # orbax re-raising the failure would hide ours
                self.manager.close()
            raise
        self.manager.close()


def summarise(pending: list, step: int, elapsed_s: float, num_examples: int) -> dict:
    """Mean of the per-step metrics since the last log, plus throughput."""
    stacked = {k: np.concatenate([np.asarray(m[k]).reshape(-1) for m in pending])
               for k in pending[0]}
    out = {k: float(np.mean(v)) for k, v in stacked.items()}
    for k in ("skipped_updates", "consecutive_skips"):
        if k in stacked:
            out[k] = int(stacked[k][-1])
    out["step"] = int(step)
    out["examples_per_sec"] = num_examples / max(elapsed_s, 1e-9)
    return out


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The rows of a .jsonl file that parse as objects; [] when there is no file."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def drop_rows_after(path: pathlib.Path, step: int) -> int:
    """Rewrites a .jsonl file (atomically) without its rows of steps after `step`, and without
    lines that do not parse; returns how many lines went.

    A run killed after its last checkpoint logged steps that the resumed run logs again: without
    this they would appear twice. A kill mid-write leaves a cut line, which the next append
    would run into.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) > step:
            continue
        kept.append(line)
    if len(kept) < len(lines):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return len(lines) - len(kept)


class MetricsLogger:
    """metrics.jsonl, TensorBoard scalars and images, and a tqdm progress bar."""

    def __init__(self, workdir, *, enabled: bool, quiet: bool, total_steps: int, initial_step: int):
        """A run starting at `initial_step` (its checkpoint) first forgets what an earlier run
        logged after that step: the rows of metrics.jsonl and eval_metrics.jsonl, and, through
        `purge_step`, the TensorBoard events (TensorBoard hides events of later steps once it
        reads the new file's start marker). Starting at 0 in a used workdir forgets them all."""
        self.enabled = enabled
        self.workdir = pathlib.Path(workdir)
        self.writer = None
        self.bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm.auto import tqdm

        for name in ("metrics.jsonl", "eval_metrics.jsonl"):
            drop_rows_after(self.workdir / name, initial_step)
        self.writer = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=initial_step)
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

    def __init__(self, workdir, vae, *, examples, enabled: bool, num_samples: int = 64):
        """`vae`: the `model.VAE`. Reconstructions decode the posterior's point summary
        (`VAE.point`: the mean of a Gaussian); samples decode z_1 drawn from the model's actual
        prior (`VAE.sample_prior`: ancestral for several layers)."""
        self.directory = pathlib.Path(workdir) / "images"
        self.enabled = enabled
        self.examples = np.asarray(examples, np.float32)  # [n, H, W, C] in [0, 1]
        self.num_samples = num_samples
        self.last_images = {}

        def reconstruct(params, x):
            return vae.likelihood.mean(vae.decode(params, vae.point(params, x)))

        def sample(params, key):
            z = vae.sample_prior(params, key, num_samples)
            return vae.likelihood.mean(vae.decode(params, z))

        self._reconstruct = jax.jit(reconstruct)
        self._sample = jax.jit(sample)

    def write(self, params, step: int, key) -> None:
        """Writes reconstructions_<step>.png and samples_<step>.png (nothing without examples:
        `run.num_image_examples=0` turns the pictures off)."""
        if not len(self.examples):
            return
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
