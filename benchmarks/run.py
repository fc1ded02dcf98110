"""Benchmarks vae_jax against PyTorch on real MNIST: images/s, GEMM roofline, NLL memory.

    python benchmarks/run.py [--quick] [--rounds 3] [--workloads W1,W2,W3,W4]
        [--data_dir ../shared/data/tfds] [--out benchmarks/results.json]

Every measurement runs in its own subprocess (so JAX and PyTorch never share a process, and
ru_maxrss is the peak of one run), and the sides alternate within every round (ours, torch
eager, torch fast, ours, ...) so that drift from other jobs on the machine hits all of them.
A run is 1 + N windows; the first window holds compilation and is reported as warm-up
(first-window time minus what the steady-state rate would have taken); the images/s are the
median, min and max over the other windows of every round. See benchmarks/README.md.

--quick: every workload for a few steps, torch without torch.compile, one round; for the test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import workloads

from vae_jax import provenance

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
MEMORY_KS = (500, 5000)


# --------------------------------------------------------------------------- worker processes


def _worker(spec: dict) -> dict:
    """Runs one measurement in this (fresh) process; see `_run_worker` for the spec."""
    import resource

    w = workloads.BY_NAME[spec["workload"]] if "workload" in spec else None
    kind = spec["kind"]
    if kind == "cache":
        import jax_side
        out = jax_side.write_cache(spec["data_dir"], spec["cache"])
    elif kind == "jax_train":
        import jax_side
        out = jax_side.train_windows(w, spec["data_dir"], window_steps=spec["window_steps"],
                                     num_windows=spec["num_windows"],
                                     steps_per_dispatch=spec.get("steps_per_dispatch"))
    elif kind == "torch_train":
        import torch_side
        out = torch_side.train_windows(w, spec["cache"], flavour=spec["flavour"],
                                       window_steps=spec["window_steps"],
                                       num_windows=spec["num_windows"],
                                       compile_model=spec["compile"])
    elif kind == "jax_nll":
        import jax_side
        out = jax_side.nll_windows(w, spec["data_dir"], spec["cache"], start=spec["start"],
                                   stop=spec["stop"], num_samples=spec["num_samples"],
                                   chunk_size=spec["chunk_size"])
    elif kind == "torch_nll":
        import torch_side
        out = torch_side.nll_windows(w, spec["cache"], start=spec["start"], stop=spec["stop"],
                                     num_samples=spec["num_samples"],
                                     chunk_size=spec["chunk_size"], flavour="fast")
    elif kind in ("jax_gemm", "torch_gemm"):
        side = __import__("jax_side" if kind == "jax_gemm" else "torch_side")
        out = {}
        for name in spec["workloads"]:
            wl = workloads.BY_NAME[name]
            rows = wl.batch_size * (spec["w4_chunk"] if name == "W4" else 1)
            shapes = (workloads.forward_gemms(wl, rows) if name == "W4"
                      else workloads.step_gemms(wl, rows))
            out[name] = {"shapes": shapes,
                         "seconds": side.gemm_rates(shapes, min_seconds=spec["min_seconds"])}
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def worker_xla_flags() -> str:
    """The caller's XLA_FLAGS without a fake device count: every worker has one CPU device, as a
    user's run has (the tests ask for eight), and the caller's other flags (the benchmark's
    test compiles fast, as every test does)."""
    flags = os.environ.get("XLA_FLAGS", "")
    return " ".join(re.sub(r"--xla_force_host_platform_device_count=\S*", "", flags).split())


def _run_worker(spec: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    if spec.get("omp_passive"):
        # With other jobs on the cores, spinning OpenMP threads wait for descheduled peers:
        # small GEMMs measured 2-10x slower here with 2 threads. Passive waiting avoids that.
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.pop("XLA_FLAGS", None)
    if flags := worker_xla_flags():
        env["XLA_FLAGS"] = flags
    proc = subprocess.run([sys.executable, str(HERE / "run.py"), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- slow-CPU episodes

# Now and then this VM's second vCPU runs 1.5-1.8x slower for tens of seconds while the first
# stays steady (benchmarks/README.md); two-thread programs then wait for it, W2 dropping from
# about 55k to 25k images/s. A run measured in such an episode says nothing about the code.
SKEW_LIMIT = 1.3


def cpu_skew(reps: int = 200, trials: int = 3) -> float | None:
    """Slowest over fastest time of a single-thread 256 x 256 matmul loop pinned to each CPU
    (median of `trials` such comparisons, which steadies single-sample spikes).

    About 1.0 on a quiet machine. None where CPU affinity cannot be set or there is one CPU.
    """
    import numpy as np

    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    for _ in range(10):  # warm-up: the first products pay for BLAS's start
        a @ a
    allowed = os.sched_getaffinity(0)
    skews = []
    try:
        for _ in range(trials):
            times = []
            for cpu in sorted(allowed):
                os.sched_setaffinity(0, {cpu})
                start = time.perf_counter()
                for _ in range(reps):
                    a @ a
                times.append(time.perf_counter() - start)
            skews.append(max(times) / min(times))
    finally:
        os.sched_setaffinity(0, allowed)
    return statistics.median(skews)


def _wait_for_even_cpus(max_seconds: float = 90.0) -> float | None:
    """Polls `cpu_skew` until it is below SKEW_LIMIT or `max_seconds` have passed."""
    deadline = time.perf_counter() + max_seconds
    skew = cpu_skew()
    while skew is not None and skew >= SKEW_LIMIT and time.perf_counter() < deadline:
        time.sleep(3.0)
        skew = cpu_skew()
    return skew


def _measure(spec: dict, *, retries: int) -> dict:
    """`_run_worker(spec)` started on even CPUs and repeated (up to `retries` times) when the
    CPUs were uneven at its end. The result records the skews and how many runs it took."""
    for attempt in range(retries + 1):
        before = _wait_for_even_cpus() if retries else None
        result = _run_worker(spec)
        after = cpu_skew() if retries else None
        result.update(cpu_skew_before=before, cpu_skew_after=after, attempts=attempt + 1)
        if after is None or after < SKEW_LIMIT:
            break
    return result


# --------------------------------------------------------------------------- statistics


def _summary(runs: list[dict]) -> dict:
    """Steady-state images/s over every run's windows but the first; warm-up per run."""
    rates, warmups = [], []
    for run in runs:
        seconds, images = run["window_seconds"], run["window_images"]
        steady = [images / s for s in seconds[1:]]
        rates += steady
        if steady:
            warmups.append(seconds[0] - images / statistics.median(steady))
    if not rates:
        return {}
    return {
        "images_per_sec": statistics.median(rates),
        "images_per_sec_min": min(rates),
        "images_per_sec_max": max(rates),
        "num_windows": len(rates),
        "warmup_seconds": statistics.median(warmups),
        "max_rss_mb": max(run["max_rss_mb"] for run in runs),
        "runs_repeated_for_slow_cpu": sum(run.get("attempts", 1) - 1 for run in runs),
        "cpu_skew_after_runs": [run.get("cpu_skew_after") for run in runs],
    }


def _ceiling(gemm_runs: list[dict], name: str, w: workloads.Workload, num_samples: int,
             chunk: int) -> dict:
    """GEMM-only ceiling: images per second if a step did nothing but its GEMMs, at the rate
    measured at exactly its shapes (median over rounds of the summed GEMM time)."""
    if not gemm_runs:
        return {}
    totals = [sum(run[name]["seconds"]) for run in gemm_runs]
    shapes = gemm_runs[0][name]["shapes"]
    per_call = statistics.median(totals)
    if name == "W4":  # one call = one chunk of samples for a batch: B * chunk / K images
        ceiling = w.batch_size * chunk / num_samples / per_call
    else:
        ceiling = w.batch_size / per_call
    return {"ceiling_images_per_sec": ceiling,
            "gemm_gflops": workloads.gemm_flops(shapes) / per_call / 1e9,
            "gemm_shapes": shapes}


# --------------------------------------------------------------------------- the benchmark


def _machine(torch_available: bool) -> dict:
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch"):
        if name == "torch" and not torch_available:
            continue
        try:
            from importlib.metadata import version
            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is reported as absent
            pass
    return {"cpu": provenance.cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(), "xla_flags": worker_xla_flags(),
            **versions}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data" / "tfds"))
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--w4_examples", type=int, default=10_000,
                        help="test images per side for W4 (split over the rounds)")
    parser.add_argument("--torch_omp_active", action="store_true",
                        help="leave OpenMP spin-waiting on for torch (faster on an idle machine)")
    parser.add_argument("--windows", type=int, default=None,
                        help="steady-state windows per run (default: per workload)")
    parser.add_argument("--window_scale", type=float, default=1.0,
                        help="scales every workload's window length")
    parser.add_argument("--slow_cpu_retries", type=int, default=2,
                        help="start every run on even CPUs and repeat a run that ends in a "
                             "slow-CPU episode up to this many times (0: off; off for --quick)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(_worker(json.loads(args.worker))), flush=True)
        return 0

    if not (pathlib.Path(args.data_dir) / "mnist").is_dir():
        print(f"real MNIST not found in {args.data_dir} (TFDS format); nothing to benchmark")
        return 2
    torch_available = (not args.no_torch) and importlib.util.find_spec("torch") is not None
    if not torch_available:
        print("PyTorch is not installed (pip install torch==2.13.0): measuring vae_jax only")
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    rounds = args.rounds or (1 if args.quick else 3)
    quick = args.quick
    retries = 0 if quick else args.slow_cpu_retries
    num_samples = workloads.W4_QUICK_NUM_SAMPLES if quick else workloads.W4_NUM_SAMPLES
    chunk = workloads.W4_QUICK_CHUNK if quick else workloads.W4_CHUNK
    num_examples = 2 * workloads.W4.batch_size if quick else args.w4_examples
    memory_ks = (workloads.W4_QUICK_CHUNK, workloads.W4_QUICK_NUM_SAMPLES) if quick else MEMORY_KS

    sides = ["vae_jax"] + (["torch_eager", "torch_fast"] if torch_available else [])
    runs = {n: {s: [] for s in sides} for n in names}
    gemm = {"vae_jax": [], "torch": []}
    memory = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(pathlib.Path(tmp) / "mnist.npz")
        _run_worker({"kind": "cache", "data_dir": args.data_dir, "cache": cache})
        common = {"data_dir": args.data_dir, "cache": cache}
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            gemm_spec = {"workloads": names, "min_seconds": 0.02 if quick else 0.2,
                         "w4_chunk": chunk}
            gemm["vae_jax"].append(_measure({"kind": "jax_gemm", **gemm_spec}, retries=retries))
            if torch_available:
                gemm["torch"].append(_measure({"kind": "torch_gemm", **gemm_spec,
                                               "omp_passive": not args.torch_omp_active},
                                              retries=retries))
            for name in names:
                w = workloads.BY_NAME[name]
                for side in sides:
                    if name == "W4":
                        if side == "torch_eager":
                            continue  # one PyTorch estimator: batched, inference_mode
                        per_round = -(-num_examples // rounds)
                        lo, hi = r * per_round, min(num_examples, (r + 1) * per_round)
                        spec = {"workload": name, "start": lo, "stop": hi,
                                "num_samples": num_samples, "chunk_size": chunk, **common}
                        spec["kind"] = "jax_nll" if side == "vae_jax" else "torch_nll"
                    else:
                        steps = max(w.steps_per_dispatch,
                                    int(w.window_steps * args.window_scale))
                        spec = {"workload": name,
                                "num_windows": 1 if quick else (args.windows or w.num_windows),
                                "window_steps": w.quick_window_steps if quick else steps,
                                **common}
                        if side == "vae_jax":
                            spec["kind"] = "jax_train"
                        else:
                            spec.update(kind="torch_train", flavour=side.split("_")[1],
                                        compile=not quick)
                    if side.startswith("torch"):
                        spec["omp_passive"] = not args.torch_omp_active
                    result = _measure(spec, retries=retries)
                    runs[name][side].append(result)
                    rate = result["window_images"] / statistics.median(
                        result["window_seconds"][1:] or result["window_seconds"])
                    print(f"  {name} {side:12s} {rate:10.0f} images/s", flush=True)
        if "W4" in names:
            for side in ("vae_jax",) + (("torch",) if torch_available else ()):
                for k in memory_ks:
                    spec = {"workload": "W4", "start": 0, "stop": workloads.W4.batch_size,
                            "num_samples": k, "chunk_size": chunk, **common,
                            "kind": "jax_nll" if side == "vae_jax" else "torch_nll",
                            "omp_passive": not args.torch_omp_active}
                    memory[f"{side}_K{k}"] = _run_worker(spec)["max_rss_mb"]

    results = {"machine": _machine(torch_available), "quick": quick, "rounds": rounds,
               "slow_cpu_retries": retries,
               "seconds": time.perf_counter() - started, "workloads": {}}
    for name in names:
        w = workloads.BY_NAME[name]
        entry = {"description": w.description, "batch_size": w.batch_size,
                 "flops_per_image": workloads.flops_per_image(w, num_samples)}
        for side in sides:
            if runs[name][side]:
                entry[side] = _summary(runs[name][side])
        entry["ceiling_xla"] = _ceiling(gemm["vae_jax"], name, w, num_samples, chunk)
        entry["ceiling_torch"] = _ceiling(gemm["torch"], name, w, num_samples, chunk)
        ours = entry["vae_jax"]["images_per_sec"]
        for side in ("torch_eager", "torch_fast"):
            if side in entry:
                entry[f"speedup_vs_{side}"] = ours / entry[side]["images_per_sec"]
        if entry["ceiling_xla"]:
            entry["fraction_of_ceiling"] = ours / entry["ceiling_xla"]["ceiling_images_per_sec"]
        if name == "W4":
            entry["num_samples"], entry["chunk_size"] = num_samples, chunk
            entry["peak_rss_mb"] = memory
        results["workloads"][name] = entry
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(format_table(results))
    print(f"wrote {args.out}")
    return 0


def format_table(results: dict) -> str:
    """The results as a Markdown table (also what README.md shows)."""
    lines = ["| workload | vae_jax img/s: median (min-max) | warm-up s | torch eager | torch fast "
             "| x eager | x fast | GEMM ceiling (XLA) | of ceiling |", "|" + " --- |" * 9]

    def rate(e):
        if not e:
            return "-"
        return (f"{e['images_per_sec']:,.0f} ({e['images_per_sec_min']:,.0f}-"
                f"{e['images_per_sec_max']:,.0f})")

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for name, e in results["workloads"].items():
        ours = e["vae_jax"]
        ceiling = e.get("ceiling_xla", {}).get("ceiling_images_per_sec")
        cells = [name, rate(ours), num(ours["warmup_seconds"], ".1f"),
                 rate(e.get("torch_eager")), rate(e.get("torch_fast")),
                 num(e.get("speedup_vs_torch_eager"), ".2f"),
                 num(e.get("speedup_vs_torch_fast"), ".2f"),
                 num(ceiling, ",.0f"), num(e.get("fraction_of_ceiling"), ".0%")]
        lines.append("| " + " | ".join(cells) + " |")
    mem = results["workloads"].get("W4", {}).get("peak_rss_mb")
    if mem:
        lines += ["", "W4 peak resident memory (MB): "
                  + ", ".join(f"{k} {v:,.0f}" for k, v in mem.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
