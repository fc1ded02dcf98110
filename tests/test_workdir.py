"""Tests for vae_jax/workdir.py: the workdir lock, verified checkpoints, resumed metrics."""

import asyncio
import errno
import json
import logging
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from vae_jax import workdir as workdir_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# The workdir lock.


def test_a_second_process_is_refused_and_a_killed_holder_frees_the_lock(tmp_path):
    workdir = tmp_path / "run"
    hold = ("import sys, time\n"
            "from vae_jax import workdir\n"
            "workdir.WorkdirLock(sys.argv[1], purpose='training').acquire()\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(workdir)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir_lib.WorkdirLocked) as refused:
            workdir_lib.WorkdirLock(workdir, purpose="evaluation").acquire()
        message = str(refused.value)
        assert f"process {holder.pid} on {socket.gethostname()} (training, since " in message
        assert f"kill {holder.pid}" in message and "another --workdir" in message
        holder.send_signal(signal.SIGKILL)  # no chance to release: the kernel drops the flock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    with workdir_lib.WorkdirLock(workdir, purpose="evaluation") as lock:
        holder_info = json.loads(lock.path.read_text())
        assert (holder_info["pid"], holder_info["purpose"]) == (os.getpid(), "evaluation")


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    workdir = tmp_path / "nested" / "run"  # created, parents too
    first = workdir_lib.WorkdirLock(workdir, purpose="training").acquire()
    # flock locks belong to the open file, so a second open in this process conflicts too.
    with pytest.raises(workdir_lib.WorkdirLocked, match=f"process {os.getpid()} .*this process"):
        workdir_lib.WorkdirLock(workdir, purpose="evaluation").acquire()
    with pytest.raises(workdir_lib.WorkdirLocked):
        first.acquire()
    assert first.held
    first.release()
    assert not first.held and first.path.read_text() == ""  # names no one once released
    with workdir_lib.WorkdirLock(workdir, purpose="evaluation"):
        pass


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with workdir_lib.WorkdirLock(tmp_path, purpose="training"):
            raise ZeroDivisionError
    workdir_lib.WorkdirLock(tmp_path, purpose="training").acquire().release()


def test_a_lock_file_left_by_a_dead_process_is_free(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "purpose": "training",
             "started": "2026-12-01T00:00:00+00:00", "command": "killed -9"}
    (tmp_path / ".lock").write_text(json.dumps(stale))  # its contents, but no flock
    with workdir_lib.WorkdirLock(tmp_path, purpose="training") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


# Verified checkpoints.


def small_state(seed: int):
    """A TrainState-like pytree: a few arrays and an int step."""
    key = jax.random.key(seed)
    return {"params": {"w": jax.random.normal(key, (64, 32)), "b": jnp.arange(5.0) + seed},
            "step": seed}


def assert_state_equal(actual, expected):
    jax.tree.map(lambda a, e: np.testing.assert_array_equal(np.asarray(a), np.asarray(e)),
                 actual, expected)


def save_steps(directory, steps):
    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    for step in steps:
        checkpoints.save(step, small_state(step))
    checkpoints.close()


def flip_a_payload_bit(step_directory: pathlib.Path) -> pathlib.Path:
    """Flips one bit in the middle of the largest OCDBT data file (`.../d/<hash>`: the arrays)."""
    path = max((p for p in step_directory.rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def test_checksums_cover_every_file_of_the_step(tmp_path):
    save_steps(tmp_path / "checkpoints", [3])
    manifest = json.loads((tmp_path / "checkpoint_checksums" / "3.json").read_text())
    step_directory = tmp_path / "checkpoints" / "3"
    files = sorted(p for p in step_directory.rglob("*") if p.is_file())
    assert sorted(manifest["sha256"]) == sorted(p.relative_to(step_directory).as_posix()
                                                for p in files)
    import hashlib  # the reference digest, computed independently of file_digests

    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest["sha256"][path.relative_to(step_directory).as_posix()] == digest
    assert not list((tmp_path / "checkpoints").glob("*.json"))  # nothing inside orbax's directory


def test_a_flipped_bit_is_caught_quarantined_and_the_older_checkpoint_restored(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    flipped = flip_a_payload_bit(directory / "2")
    flipped_bytes = flipped.read_bytes()

    # Why the checksums exist: orbax alone restores the flipped bit without a word, as other
    # numbers (OCDBT + zstd keep no checksum of the array data).
    manager = ocp.CheckpointManager(directory)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, small_state(2))
    silently = manager.restore(2, args=ocp.args.StandardRestore(abstract))
    manager.close()
    assert not np.array_equal(np.asarray(silently["params"]["w"]),
                              np.asarray(small_state(2)["params"]["w"]))

    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore(small_state(0))
    assert restored.step == 1
    assert_state_equal(restored.state, small_state(1))
    assert f"checkpoint 2 at {directory / '2'} is corrupt" in restored.warnings[0]
    assert flipped.relative_to(directory / "2").as_posix() in restored.warnings[0]
    assert "checkpoint 2 at" in caplog.text
    quarantined = tmp_path / "checkpoints_corrupt" / "2"
    assert (quarantined / flipped.relative_to(directory / "2")).read_bytes() == flipped_bytes
    assert (tmp_path / "checkpoints_corrupt" / "2.checksums.json").exists()
    # Out of orbax's directory: step 2 can be saved again, and verifies.
    assert checkpoints.steps() == [1] and checkpoints.latest_step() == 1
    checkpoints.save(2, small_state(2))
    checkpoints.close()
    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    assert checkpoints.steps() == [1, 2] and checkpoints.verify(2) is None
    assert_state_equal(checkpoints.restore_latest(small_state(0)), small_state(2))
    checkpoints.close()


def test_a_reader_can_skip_corrupt_checkpoints_without_moving_them(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2, 3])
    flip_a_payload_bit(directory / "2")
    flip_a_payload_bit(directory / "3")
    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    restored = checkpoints.restore(small_state(0), move_corrupt=False)
    checkpoints.close()
    assert restored.step == 1
    assert_state_equal(restored.state, small_state(1))
    assert [w.split(" at ")[0] for w in restored.warnings[:2]] == ["checkpoint 3", "checkpoint 2"]
    assert all(w.endswith("left it in place") for w in restored.warnings[:2])
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "3"]
    assert not (tmp_path / "checkpoints_corrupt").exists()


def test_when_every_checkpoint_is_corrupt_nothing_is_restored_or_moved(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    flip_a_payload_bit(directory / "1")
    extra = directory / "2" / "default" / "d" / "extra"
    extra.write_bytes(b"\0")  # a file the checksums do not know is corruption too
    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    with pytest.raises(workdir_lib.CheckpointRestoreError) as failed:
        checkpoints.restore(small_state(0))
    message = str(failed.value)
    assert "checkpoint 2 at" in message and "default/d/extra is not in its checksums" in message
    assert "checkpoint 1 at" in message and "differs from its checksum" in message
    assert "Nothing was restored and nothing was moved" in message
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]
    assert not (tmp_path / "checkpoints_corrupt").exists()
    checkpoints.close()


def test_a_checkpoint_without_checksums_restores_with_a_warning(tmp_path):
    save_steps(tmp_path / "checkpoints", [4])
    (tmp_path / "checkpoint_checksums" / "4.json").unlink()  # an older version wrote it
    checkpoints = workdir_lib.Checkpoints(tmp_path / "checkpoints", keep=5)
    restored = checkpoints.restore(small_state(0))
    checkpoints.close()
    assert restored.step == 4
    assert_state_equal(restored.state, small_state(4))
    assert len(restored.warnings) == 1 and "restoring it unverified" in restored.warnings[0]


def test_an_explicit_step_restores_only_that_one(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2, 3])
    flip_a_payload_bit(directory / "3")
    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    restored = checkpoints.restore(small_state(0), step=1)
    assert (restored.step, restored.warnings) == (1, ())
    assert_state_equal(restored.state, small_state(1))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 7 in .*\(it has 1, 2, 3\)"):
        checkpoints.restore(small_state(0), step=7)
    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    with pytest.raises(workdir_lib.CheckpointRestoreError, match="checkpoint 3 is corrupt"):
        checkpoints.restore(small_state(0), step=3)
    assert (directory / "3").is_dir() and not (tmp_path / "checkpoints_corrupt").exists()


def test_a_checkpoint_of_another_model_is_a_short_error_and_stays(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [5])
    other = {"params": {"w": jnp.zeros((64, 16)), "b": jnp.zeros(5)}, "step": 0}
    checkpoints = workdir_lib.Checkpoints(directory, keep=5)
    with pytest.raises(workdir_lib.CheckpointRestoreError) as failed:
        checkpoints.restore_latest(other)
    message = str(failed.value)
    assert f"could not restore checkpoint 5 ({directory / '5'})" in message
    assert "params.w is (64, 32) in the checkpoint, (64, 16) in the model" in message
    assert len(message.splitlines()) <= 4 and "TensorStore" not in message
    assert (directory / "5").is_dir()


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def train_state(width: int):
    params = {"w": jnp.full((8, width), 0.5), "b": jnp.arange(3.0)}
    opt_state = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)).init(params)
    return TrainState(step=jnp.array(0), params=params, opt_state=opt_state)


def test_a_dataclass_state_is_compared_by_field_names(tmp_path):
    # Orbax stores `.params` as the dict key 'params'; the shape check must pair them up, or a
    # state of the right shapes would be refused and a wrong one let through to orbax.
    directory = tmp_path / "checkpoints"
    checkpoints = workdir_lib.Checkpoints(directory, keep=2)
    checkpoints.save(1, train_state(4).replace(step=jnp.array(1)))
    checkpoints.close()
    checkpoints = workdir_lib.Checkpoints(directory, keep=2)
    restored = checkpoints.restore_latest(train_state(4))
    assert isinstance(restored, TrainState) and int(restored.step) == 1
    assert_state_equal(restored.params, train_state(4).params)
    with pytest.raises(workdir_lib.CheckpointRestoreError) as failed:
        checkpoints.restore_latest(train_state(6))
    assert ("params.w is (8, 4) in the checkpoint, (8, 6) in the model; "
            "opt_state.1.0.mu.w is (8, 4)") in str(failed.value)


def test_nothing_to_restore_returns_the_state_given(tmp_path):
    checkpoints = workdir_lib.Checkpoints(tmp_path / "checkpoints", keep=2)
    state = small_state(0)
    assert checkpoints.restore(state) == (state, None, ())
    checkpoints.close()


# Failed saves.


@pytest.fixture
def full_disk(tmp_path):
    """A 200 KB tmpfs: a real 'No space left on device' for a checkpoint of ~400 KB."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def big_state():
    """Random numbers: zstd cannot shrink them below the tmpfs size."""
    return {"w": jax.random.normal(jax.random.key(0), (1000, 100)), "step": 1}


def test_a_full_disk_fails_the_save_with_its_cause(full_disk):
    checkpoints = workdir_lib.Checkpoints(full_disk / "checkpoints", keep=2)
    checkpoints.save(1, big_state())
    with pytest.raises(workdir_lib.CheckpointSaveError) as failed:
        checkpoints.wait()
    assert str(failed.value) == (f"No space left on device while writing checkpoint 1 to "
                                 f"{full_disk / 'checkpoints' / '1'}")
    assert list((full_disk / "checkpoints").iterdir()) == []  # the partial save is gone
    checkpoints.close()  # the failure was reported once; closing is clean


def test_a_process_dying_of_a_full_disk_says_so_last(full_disk):
    script = textwrap.dedent(f"""
        import jax
        from vae_jax import workdir
        checkpoints = workdir.Checkpoints({str(full_disk / "checkpoints")!r}, keep=2)
        state = {{"w": jax.random.normal(jax.random.key(0), (1000, 100)), "step": 1}}
        try:
            checkpoints.save(1, state)
            checkpoints.save(2, state)
        finally:
            checkpoints.close()
    """)
    died = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = died.stderr.strip().splitlines()
    assert died.returncode == 1
    assert lines[-1] == ("vae_jax.workdir.CheckpointSaveError: No space left on device while "
                         f"writing checkpoint 1 to {full_disk / 'checkpoints' / '1'}")
    assert len(lines) < 40, died.stderr  # not orbax's ~460 lines of tracebacks


def test_a_failed_save_waits_for_orbax_s_other_writer_threads(tmp_path):
    # Orbax reports a failed save as soon as one writer thread fails; another still writing
    # would log its own failure after the CheckpointSaveError (seen in CI on a loaded machine).
    # A private orbax class: the background-commit thread orbax's array handler runs.
    from orbax.checkpoint._src.futures import future

    async def slow_write():
        await asyncio.sleep(1.0)

    still_writing = future.CommitFuture(slow_write(), name="array_type_handler")
    checkpoints = workdir_lib.Checkpoints(tmp_path / "checkpoints", keep=2)
    error = checkpoints._save_error(1, OSError(errno.ENOSPC, "No space left on device"))
    assert not still_writing._t.is_alive()
    assert str(error) == (f"No space left on device while writing checkpoint 1 to "
                          f"{tmp_path / 'checkpoints' / '1'}")
    checkpoints.close()


def test_a_failed_background_write_stops_the_next_save(tmp_path, monkeypatch):
    # Orbax's commit renames <step>.orbax-checkpoint-tmp in a background thread; make that fail
    # as a lost mount would (a private orbax function: the test runs without root).
    from orbax.checkpoint._src.path import async_path

    async def failing_rename(src, dst):
        raise OSError(5, "Input/output error", str(src))

    monkeypatch.setattr(async_path, "rename", failing_rename)
    checkpoints = workdir_lib.Checkpoints(tmp_path / "checkpoints", keep=2)
    checkpoints.save(1, small_state(1))
    with pytest.raises(workdir_lib.CheckpointSaveError) as failed:
        checkpoints.save(2, small_state(2))
    assert str(failed.value) == ("Input/output error while writing checkpoint 1 to "
                                 f"{tmp_path / 'checkpoints' / '1'}")
    assert checkpoints.steps() == [] and list((tmp_path / "checkpoints").iterdir()) == []
    assert not (tmp_path / "checkpoint_checksums" / "1.json").exists()
    checkpoints.close()


# metrics.jsonl and TensorBoard after a resume.


def write_rows(path, steps):
    path.write_text("".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in steps))


def read_steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_drop_rows_after_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [100, 200, 300, 400])
    with open(path, "a") as f:
        f.write('{"step": 500, "lo')  # killed mid-write
    assert workdir_lib.drop_rows_after(path, 200) == 3
    assert read_steps(path) == [100, 200]
    assert workdir_lib.drop_rows_after(path, 200) == 0
    assert workdir_lib.drop_rows_after(tmp_path / "absent.jsonl", 0) == 0
    assert workdir_lib.drop_rows_after(path, 0) == 2 and path.read_text() == ""


def tensorboard_events(path):
    """The Event protos of an event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
        offset += 12 + length + 4
    return events


def test_a_resumed_logger_forgets_what_came_after_its_checkpoint(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [100, 200, 300])
    write_rows(tmp_path / "eval_metrics.jsonl", [200, 300])
    logger = workdir_lib.MetricsLogger(tmp_path, enabled=True, quiet=True, total_steps=400,
                                       initial_step=200)
    logger.log({"step": 300, "loss": 1.0, "examples_per_sec": 1.0}, 300)
    logger.log_eval({"val_elbo_nats": 2.0}, 300)
    logger.close()
    assert read_steps(tmp_path / "metrics.jsonl") == [100, 200, 300]
    assert read_steps(tmp_path / "eval_metrics.jsonl") == [200, 300]
    (events_file,) = (tmp_path / "tensorboard").iterdir()
    # The mark by which TensorBoard hides the earlier run's events from step 200 on.
    starts = [e.step for e in tensorboard_events(events_file)
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [200]


def test_a_disabled_logger_touches_nothing(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [100, 200])
    workdir_lib.MetricsLogger(tmp_path, enabled=False, quiet=True, total_steps=400,
                              initial_step=0).close()
    assert read_steps(tmp_path / "metrics.jsonl") == [100, 200]


# summarise.


def test_summarise_means_the_window_but_takes_the_skip_counters_from_its_last_step():
    pending = [  # two dispatches of two steps each
        {"loss": np.array([1.0, 2.0]), "skipped_updates": np.array([0, 1]),
         "consecutive_skips": np.array([0, 1])},
        {"loss": np.array([4.0, 9.0]), "skipped_updates": np.array([1, 3]),
         "consecutive_skips": np.array([0, 2])},
    ]
    summary = workdir_lib.summarise(pending, step=40, elapsed_s=2.0, num_examples=100)
    assert summary == {"loss": 4.0, "skipped_updates": 3, "consecutive_skips": 2, "step": 40,
                       "examples_per_sec": 50.0}
    assert isinstance(summary["skipped_updates"], int)
