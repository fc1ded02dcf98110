"""The benchmark script runs end to end (`benchmarks/run.py --quick`) and writes every workload.

No timing assertions: the numbers depend on the machine and on what else runs on it.
"""

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

WORKLOADS = ("W1", "W2", "W3", "W4")


def test_quick_benchmark_writes_every_workload(mnist_data_dir, tmp_path):
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "run.py"), "--quick",
         "--data_dir", mnist_data_dir, "--out", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
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
