"""experiments/record_result.py: a run's record from its workdir, and its refusals."""

import json
import time

import jax
import pytest

from tests import test_train
from vae_jax import evaluate, provenance, train

record_result = provenance.load_experiment("record_result")


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """A tiny digits run with a best checkpoint (40 steps), evaluated on the test split."""
    workdir = tmp_path_factory.mktemp("record") / "run"
    config = test_train.tiny_digits(**{"run.eval_every": 10, "run.keep_best": True})
    started = time.monotonic()
    train.train_and_evaluate(config, workdir, quiet=True, devices=jax.devices()[:1])
    elapsed = time.monotonic() - started
    evaluate.evaluate_workdir(workdir, num_importance_samples=4, chunk_size=4, best=True,
                              write_plots=False, devices=jax.devices()[:1])
    return workdir, elapsed


def linked_copy(workdir, copy, *, without):
    """`copy`: a directory of links to everything in `workdir` but the file `without`."""
    copy.mkdir()
    for path in workdir.iterdir():
        if path.name != without:
            (copy / path.name).symlink_to(path)
    return copy


def test_the_record_carries_the_evaluation_the_best_checkpoint_and_the_curve(evaluated_run):
    workdir, elapsed = evaluated_run
    record = record_result.build_record(workdir, "digits:none", eval_wall_s=12.0,
                                        steps_per_epoch=10)
    evaluation = json.loads((workdir / "eval.json").read_text())
    best = json.loads((workdir / "best" / "best.json").read_text())
    assert record["eval"] == evaluation and record["eval"]["split"] == "test"
    assert record["best_validation"] == best == evaluation["best_checkpoint"]
    assert record["steps"] == 40 and record["epochs_trained"] == 4.0
    validation = test_train.read_jsonl(workdir / "eval_metrics.jsonl")
    # Every epoch below 10 (the start of a curve), then every 10th, and the last.
    assert record["validation_curve_elbo_nats_by_epoch"] == {
        epoch: round(row["val_elbo_nats"], 3) for row in validation
        if (epoch := row["step"] // 10) < 10 or epoch % 10 == 0 or row is validation[-1]}
    assert list(record["validation_curve_elbo_nats_by_epoch"]) == [1, 2, 3, 4]
    assert list(record_result.build_record(workdir, "digits:none", steps_per_epoch=2)[
        "validation_curve_elbo_nats_by_epoch"]) == [5, 10, 20]
    assert record["train_sessions"] == 1 and 0 <= record["train_wall_s"] <= elapsed
    assert record["eval_wall_s"] == 12.0
    assert 0 < evaluation["wall_time_s"] == record_result.build_record(
        workdir, "digits:none", steps_per_epoch=10)["eval_wall_s"]
    assert record["command"].startswith("python -m vae_jax.main --config experiments/digits.py")
    assert "--best --num_importance_samples 4" in record["evaluate_command"]


def test_a_record_of_a_validation_or_latest_checkpoint_evaluation_is_refused(evaluated_run,
                                                                              tmp_path):
    workdir, _ = evaluated_run
    evaluate.evaluate_workdir(workdir, num_importance_samples=4, chunk_size=4,
                              split="validation", write_plots=False, out_dir=tmp_path / "val",
                              devices=jax.devices()[:1])
    evaluate.evaluate_workdir(workdir, num_importance_samples=4, chunk_size=4,
                              write_plots=False, out_dir=tmp_path / "latest",
                              devices=jax.devices()[:1])
    for name, message in (("val", "'validation' split"), ("latest", "evaluate with --best")):
        copy = linked_copy(workdir, tmp_path / f"{name}_workdir", without="eval.json")
        (copy / "eval.json").write_text((tmp_path / name / "eval.json").read_text())
        with pytest.raises(SystemExit, match=message):
            record_result.build_record(copy, "digits:none", steps_per_epoch=10)
    with pytest.raises(SystemExit, match="evaluate the run first"):
        record_result.build_record(tmp_path, "digits:none", steps_per_epoch=10)
    # An eval.json that scored other parameters than the run validated (the run kept no EMA).
    copy = linked_copy(workdir, tmp_path / "ema_workdir", without="eval.json")
    evaluation = json.loads((workdir / "eval.json").read_text())
    (copy / "eval.json").write_text(json.dumps({**evaluation, "parameters": "ema"}))
    with pytest.raises(SystemExit, match="scored the ema parameters, not the iterate ones"):
        record_result.build_record(copy, "digits:none", steps_per_epoch=10)


def test_a_run_from_before_the_ema_field_is_recorded_as_scoring_its_iterate(evaluated_run,
                                                                            tmp_path):
    # Runs trained before optim.ema_decay existed hold a config.json without it.
    workdir, _ = evaluated_run
    copy = linked_copy(workdir, tmp_path / "old_workdir", without="config.json")
    config = json.loads((workdir / "config.json").read_text())
    del config["optim"]["ema_decay"]
    (copy / "config.json").write_text(json.dumps(config))
    record = record_result.build_record(copy, "digits:none", steps_per_epoch=10)
    assert record["eval"]["parameters"] == "iterate"


def test_the_wall_time_survives_an_event_file_cut_short(evaluated_run, tmp_path):
    # A run killed while writing leaves a half-written last record (seen on a real run).
    workdir, _ = evaluated_run
    (events,) = (workdir / "tensorboard").glob("events.out.tfevents.*")
    whole = record_result.tensorboard_wall_times(workdir / "tensorboard")
    cut = tmp_path / "tensorboard"
    cut.mkdir()
    (cut / events.name).write_bytes(events.read_bytes()[:-7])
    (span,) = record_result.tensorboard_wall_times(cut)
    assert 0 < span <= whole[0]


def test_an_unfinished_run_is_recorded_without_test_numbers(evaluated_run, tmp_path):
    workdir, _ = evaluated_run
    with pytest.raises(SystemExit, match="without --unfinished"):
        record_result.build_record(workdir, "digits:none", steps_per_epoch=10, unfinished=True)
    training = tmp_path / "training"
    training.mkdir()
    for path in workdir.iterdir():
        if path.name != "eval.json":
            (training / path.name).symlink_to(path)
    record = record_result.build_record(training, "digits:none", steps_per_epoch=10,
                                        unfinished=True)
    assert record["eval"] is None and record["status"].startswith("unfinished")
    assert record["best_validation"] == json.loads((workdir / "best" / "best.json").read_text())
    assert record["steps"] == 40
    assert record["evaluate_command"].endswith("--best --num_importance_samples 5000")
