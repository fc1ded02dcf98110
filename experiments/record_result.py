"""Write a run's record, `experiments/results/<file>_<variant>.json`, from its workdir.

    python experiments/record_result.py --workdir ../runs/vampprior/standard \
        --experiment mnist_vampprior:standard [--eval_wall_s 700] [--note "..."]

The record (what the README's result tables quote, issue 14's "Recording results"):

    experiment, command, evaluate_command   what to run to get it again (rerunning resumes)
    eval                                    the workdir's eval.json, whole (test NLL +- SE ...)
    epochs_trained, steps                   from the last row of metrics.jsonl and the
                                            experiment file's STEPS_PER_EPOCH
    best_validation                         best.json: the checkpoint `evaluate --best` scored
    validation_curve                        validation ELBO at epochs 1-9, every 10 epochs
                                            after, and the last one
    train_wall_s, train_sessions            from the TensorBoard event files (one per process:
                                            the time from its first to its last event, summed;
                                            compilation before the first logged step and the
                                            time between runs are not counted)
    eval_wall_s                             eval.json's wall_time_s (or as given)
    commit, cpu                             `git describe --always --dirty` now, the CPU

`--unfinished` records a run still training (no eval.json; `eval` is null and `status` says
so). Otherwise refuses a workdir without eval.json, or whose eval.json is not for the test
split, (for a run that kept a best checkpoint) did not score the best one, or scored other
parameters than the run validated (`--parameters iterate` of a run with an EMA), before
writing anything.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from vae_jax import evaluate, provenance
from vae_jax import workdir as workdir_lib

REPO = provenance.REPO


def tensorboard_wall_times(directory: pathlib.Path) -> list[float]:
    """Per event file (one per training process), seconds from its first to its last event."""
    import tensorflow as tf  # noqa: PLC0415 (slow import, needed here only)

    spans = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        times = []
        try:
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                if event.HasField("summary"):
                    times.append(event.wall_time)
        except tf.errors.DataLossError:  # the last record of a killed run, half written
            pass
        if times:
            spans.append(max(times) - min(times))
    return spans


def _experiment_module(experiment: str):
    """experiments/<file>.py as a module (its STEPS_PER_EPOCH names the epoch)."""
    file_name = experiment.partition(":")[0]
    module = provenance.load_experiment(file_name)
    if not hasattr(module, "STEPS_PER_EPOCH"):
        raise SystemExit(f"experiments/{file_name}.py defines no STEPS_PER_EPOCH")
    return module


def build_record(workdir: pathlib.Path, experiment: str, *, eval_wall_s: float | None = None,
                 note: str | None = None, steps_per_epoch: int | None = None,
                 unfinished: bool = False, num_importance_samples: int = 5000) -> dict:
    """The record of `workdir` (see the module docstring); `steps_per_epoch` defaults to the
    experiment file's STEPS_PER_EPOCH. `unfinished`: a run still training, recorded without a
    test evaluation (`eval` None, `status` says so)."""
    eval_path = workdir / "eval.json"
    best_path = workdir / "best" / "best.json"
    best = json.loads(best_path.read_text()) if best_path.is_file() else None
    if unfinished:
        if eval_path.is_file():
            raise SystemExit(f"{eval_path} exists: record the evaluated run without --unfinished")
        evaluation = {"num_importance_samples": num_importance_samples}
    elif not eval_path.is_file():
        raise SystemExit(f"{eval_path} does not exist: evaluate the run first (or record it "
                         f"--unfinished)")
    else:
        evaluation = json.loads(eval_path.read_text())
    if not unfinished and evaluation.get("split") != "test":
        raise SystemExit(f"{eval_path} is for the {evaluation.get('split')!r} split, not 'test'")
    if not unfinished and best is not None and evaluation.get("best_checkpoint") != best:
        raise SystemExit(f"{eval_path} scored checkpoint {evaluation['checkpoint_step']}, not "
                         f"the best on validation ({best_path}: step {best['step']}): "
                         f"evaluate with --best")
    validated = evaluate.scored_parameters(evaluate.load_run_config(workdir))
    if not unfinished and evaluation.get("parameters", validated) != validated:
        raise SystemExit(f"{eval_path} scored the {evaluation['parameters']} parameters, not "
                         f"the {validated} ones the run validated: a control is written with "
                         f"--out elsewhere, and the row's evaluation uses --parameters auto")
    steps_per_epoch = steps_per_epoch or _experiment_module(experiment).STEPS_PER_EPOCH
    last_step = workdir_lib.read_jsonl(workdir / "metrics.jsonl")[-1]["step"]
    validation = workdir_lib.read_jsonl(workdir / "eval_metrics.jsonl")
    curve = {}
    for row in validation:
        epoch = row["step"] / steps_per_epoch
        if epoch == int(epoch) and (epoch < 10 or epoch % 10 == 0 or row is validation[-1]):
            curve[int(epoch)] = round(row["val_elbo_nats"], 3)
    spans = tensorboard_wall_times(workdir / "tensorboard")
    file_name, _, variant = experiment.partition(":")
    record = {
        "experiment": experiment,
        "status": ("unfinished: still training, not evaluated on the test set" if unfinished
                   else "finished and evaluated"),
        "command": (f"python -m vae_jax.main --config experiments/{file_name}.py:{variant} "
                    f"--workdir {workdir} --config.data.data_dir=../shared/data/tfds"),
        "evaluate_command": (f"python -m vae_jax.evaluate --workdir {workdir}"
                             f"{' --best' if best else ''} --num_importance_samples "
                             f"{evaluation['num_importance_samples']}"),
        "commit": provenance.git_commit(),
        "cpu": provenance.machine(),
        "epochs_trained": last_step / steps_per_epoch,
        "steps": last_step,
        "train_wall_s": round(sum(spans)),
        "train_sessions": len(spans),
        "eval_wall_s": eval_wall_s if eval_wall_s is not None else evaluation.get(
            "wall_time_s"),
        "best_validation": best,
        "eval": None if unfinished else evaluation,
        "validation_curve_elbo_nats_by_epoch": curve,
    }
    if note:
        record["note"] = note
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=pathlib.Path)
    parser.add_argument("--experiment", required=True, help="<file>:<variant>")
    parser.add_argument("--eval_wall_s", type=float, default=None)
    parser.add_argument("--note", default=None)
    parser.add_argument("--steps_per_epoch", type=int, default=None,
                        help="default: the experiment file's STEPS_PER_EPOCH")
    parser.add_argument("--unfinished", action="store_true",
                        help="a run still training: its curve and best so far, no test numbers")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="default: experiments/results/<file>_<variant>.json")
    args = parser.parse_args()
    record = build_record(args.workdir, args.experiment, eval_wall_s=args.eval_wall_s,
                          note=args.note, steps_per_epoch=args.steps_per_epoch,
                          unfinished=args.unfinished)
    out = args.out or REPO / "experiments" / "results" / (
        args.experiment.replace(":", "_") + ".json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    nll = record["eval"]
    if nll is None:
        best = record["best_validation"]
        print(f"{out}: unfinished, {record['epochs_trained']:g} epochs, best validation "
              f"{best and best['value']} at step {best and best['step']}")
        return
    print(f"{out}: test NLL {nll['nll_nats']:.2f} +- {nll['nll_stderr_nats']:.2f} nats "
          f"(K = {nll['num_importance_samples']}), {record['epochs_trained']:g} epochs, "
          f"{record['train_wall_s'] / 3600:.2f} h of training")


if __name__ == "__main__":
    main()
