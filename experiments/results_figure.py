"""Validation curves of recorded runs, drawn from their records in experiments/results/.

    python experiments/results_figure.py experiments/results/mnist_vampprior_standard.json \
        experiments/results/mnist_vampprior_vamp.json \
        --out experiments/results/mnist_vampprior_curves.png

One line per record (`experiments/record_result.py` writes them): the validation ELBO in nats
by epoch as the record holds it (every 10 epochs and the last), a star at the checkpoint best
on validation, and in the legend the variant, its epochs and, once evaluated, its test NLL.
The y axis shows the epochs from `--from_epoch` on (the first epochs of a KL warm-up are tens
of nats below the rest). The figure needs only the records, so anyone can redraw it from a
clone.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def validation_curve(record: dict) -> tuple[list[int], list[float]]:
    """(epochs, validation ELBOs) of a record, in epoch order."""
    points = sorted((int(epoch), value) for epoch, value
                    in record["validation_curve_elbo_nats_by_epoch"].items())
    return [p[0] for p in points], [p[1] for p in points]


def label(record: dict) -> str:
    variant = record["experiment"].partition(":")[2] or record["experiment"]
    text = f"{variant}, {record['epochs_trained']:g} epochs"
    evaluation = record.get("eval")
    if evaluation:
        return f"{text}: test NLL {evaluation['nll_nats']:.2f}"
    return f"{text} (training)"


def draw(records: list[dict], out: pathlib.Path, *, steps_per_epoch: int,
         from_epoch: int = 50) -> pathlib.Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    shown = []
    for i, record in enumerate(records):
        epochs, values = validation_curve(record)
        ax.plot(epochs, values, "-", color=f"C{i}", label=label(record))
        shown += [v for e, v in zip(epochs, values) if e >= from_epoch]
        best = record.get("best_validation")
        if best:
            ax.plot(best["step"] / steps_per_epoch, best["value"], "*", color=f"C{i}",
                    markersize=12)
    if shown:
        span = max(shown) - min(shown)
        ax.set_ylim(min(shown) - 0.05 * span, max(shown) + 0.05 * span)
    ax.set_xlim(left=from_epoch)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation ELBO (nats)")
    ax.set_title("validation ELBO by epoch (star: the best checkpoint on validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    out = pathlib.Path(out)
    fig.savefig(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--steps_per_epoch", type=int, default=None,
                        help="default: each record's steps / epochs_trained")
    parser.add_argument("--from_epoch", type=int, default=50)
    args = parser.parse_args()
    records = [json.loads(path.read_text()) for path in args.records]
    per_epoch = {round(r["steps"] / r["epochs_trained"]) for r in records}
    if args.steps_per_epoch is None and len(per_epoch) != 1:
        raise SystemExit(f"the records differ in steps per epoch ({sorted(per_epoch)}): "
                         "draw them separately or pass --steps_per_epoch")
    steps_per_epoch = args.steps_per_epoch or per_epoch.pop()
    print(draw(records, args.out, steps_per_epoch=steps_per_epoch, from_epoch=args.from_epoch))


if __name__ == "__main__":
    main()
