"""Row A minus row B on the same test images, with the paired standard error.

    python experiments/compare_evaluations.py ../runs/vampprior/vamp_ema ../runs/vampprior/vamp

Each argument is a directory `python -m vae_jax.evaluate` wrote into (a workdir or its `--out`).
Prints the NLL and ELBO of both rows and A - B with the standard error of the mean per-example
difference (`vae_jax.evaluate.paired_difference`), which is what a claim "A beats B" needs: the
unpaired error sqrt(se_a^2 + se_b^2), printed beside it, ignores that a digit hard for one model
is hard for the other. Refuses two evaluations of different images (split, binarisation seed,
--max_examples: eval.json's `data_sha256`). `--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from vae_jax import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=pathlib.Path, help="row A's evaluation directory")
    parser.add_argument("b", type=pathlib.Path, help="row B's evaluation directory")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the numbers")
    args = parser.parse_args()
    try:
        comparison = evaluate.compare_evaluations(args.a, args.b)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    for name, label in (("nll", "NLL"), ("elbo", "ELBO")):
        a_nats, b_nats = comparison[f"{name}_nats"]
        paired = comparison[name]
        print(f"{label}: A {a_nats:.2f}, B {b_nats:.2f}, A - B {paired['difference']:+.3f} "
              f"+- {paired['stderr']:.3f} nats (paired; unpaired +- "
              f"{paired['unpaired_stderr']:.3f}; correlation {paired['correlation']:.3f}; "
              f"{paired['num_examples']} {comparison['split']} examples)")
    if args.json is not None:
        args.json.write_text(json.dumps(comparison, indent=1) + "\n")


if __name__ == "__main__":
    main()
