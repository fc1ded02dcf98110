"""The benchmark script runs end to end (`benchmarks/run.py --quick`) and writes every workload.

No timing assertions: the numbers depend on the machine and on what else runs on it.
"""

import json
import os
import subprocess
import sys

from tests.conftest import FAST_COMPILE_FLAGS, REPO_ROOT, xla_flags

WORKLOADS = ("W1", "W2", "W3", "W4")


def test_quick_benchmark_writes_every_workload(mnist_data_dir, tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, XLA_FLAGS=xla_flags(8))  # eight fake devices, as the tests have
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "run.py"), "--quick",
         "--data_dir", mnist_data_dir, "--out", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    # The workers drop the fake device count (one CPU device, as a user's run has) and keep
    # the other flags: --quick compiles fast, as the tests do.
    assert results["machine"]["xla_flags"] == FAST_COMPILE_FLAGS
    assert set(results["workloads"]) == set(WORKLOADS)
    torch_installed = "torch" in results["machine"]
    for name in WORKLOADS:
        entry = results["workloads"][name]
        sides = ["vae_jax"] + (["torch_fast"] if torch_installed else [])
        if torch_installed and name != "W4":
            sides.append("torch_eager")
        for side in sides:
            assert entry[side]["images_per_sec"] > 0, (name, side)
        assert entry["flops_per_image"] > 0
        assert entry["ceiling_xla"]["ceiling_images_per_sec"] > 0
    memory = results["workloads"]["W4"]["peak_rss_mb"]
    assert memory and all(v > 0 for v in memory.values())


def _import_run(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import run  # noqa: PLC0415 - benchmarks/ is not a package

    return run


def test_measure_repeats_a_run_that_ends_on_uneven_cpus(monkeypatch):
    run = _import_run(monkeypatch)
    calls = []
    monkeypatch.setattr(run, "_run_worker", lambda spec: calls.append(spec) or {"n": len(calls)})

    def probes(*skews):
        it = iter(skews)
        monkeypatch.setattr(run, "cpu_skew", lambda: next(it))

    # Skews before, after each run: slow, slow, then even: three runs, the third kept.
    probes(1.0, 1.7, 1.02, 1.6, 1.01, 1.05)
    result = run._measure({"kind": "x"}, retries=2)
    assert len(calls) == 3 and result["n"] == 3 and result["attempts"] == 3
    assert (result["cpu_skew_before"], result["cpu_skew_after"]) == (1.01, 1.05)
    # Out of retries: the last run is kept, and its recorded skew says it ended slow.
    calls.clear()
    probes(1.0, 1.7, 1.0, 1.6)
    result = run._measure({"kind": "x"}, retries=1)
    assert len(calls) == 2 and result["attempts"] == 2 and result["cpu_skew_after"] == 1.6
    # retries=0 (and --quick): no probes, one run.
    calls.clear()
    probes()
    result = run._measure({"kind": "x"}, retries=0)
    assert len(calls) == 1 and result["cpu_skew_after"] is None
