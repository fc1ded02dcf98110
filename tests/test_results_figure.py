"""experiments/results_figure.py: validation curves drawn from recorded runs."""

import json

import pytest
from PIL import Image

from vae_jax.provenance import load_experiment

figure = load_experiment("results_figure")


def _record(variant, curve, *, steps=5000, epochs=10.0, nll=None):
    return {"experiment": f"mnist_vampprior:{variant}", "steps": steps,
            "epochs_trained": epochs, "validation_curve_elbo_nats_by_epoch": curve,
            "best_validation": {"step": 4000, "value": max(curve.values())},
            "eval": None if nll is None else {"nll_nats": nll}}


def test_the_curve_is_in_epoch_order_not_in_the_json_s_string_order():
    record = json.loads(json.dumps(_record("vamp", {100: -90.0, 20: -95.0, 1000: -88.0})))
    assert list(record["validation_curve_elbo_nats_by_epoch"]) == ["100", "20", "1000"]
    assert figure.validation_curve(record) == ([20, 100, 1000], [-95.0, -90.0, -88.0])


def test_the_figure_is_written_and_labels_say_what_is_evaluated(tmp_path):
    done = _record("standard", {"10": -140.0, "60": -100.0, "100": -95.0}, nll=84.52)
    running = _record("vamp", {"10": -130.0, "60": -97.0}, epochs=6.5)
    assert figure.label(done) == "standard, 10 epochs: test NLL 84.52"
    assert figure.label(running) == "vamp, 6.5 epochs (training)"
    out = figure.draw([done, running], tmp_path / "curves.png", steps_per_epoch=500)
    assert Image.open(out).size == (700, 450)


def test_records_of_different_epoch_lengths_are_refused(tmp_path, monkeypatch):
    paths = []
    for name, steps in (("a", 5000), ("b", 2750)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_record(name, {"10": -100.0}, steps=steps)))
    monkeypatch.setattr("sys.argv", ["results_figure.py", *map(str, paths),
                                     "--out", str(tmp_path / "f.png")])
    with pytest.raises(SystemExit, match="differ in steps per epoch"):
        figure.main()
    assert not (tmp_path / "f.png").exists()
