"""Where a recorded number comes from: its experiment file, the machine, the commit.

Experiment files (`experiments/<file>.py`) are configs with a runbook, not modules of a package:
`--config experiments/<file>.py:<variant>` loads one by path, and so does everything else that
reads one (records, benchmarks, tests) through `load_experiment` / `experiment_config`.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
from types import ModuleType

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = REPO / "experiments"


def experiment_path(name: str | os.PathLike) -> pathlib.Path:
    """`experiments/<name>.py` for a bare name ("mnist_vampprior"), else the path as given."""
    text = os.fspath(name)
    if "/" in text or text.endswith(".py"):
        return pathlib.Path(text)
    return EXPERIMENTS_DIR / f"{text}.py"


def load_experiment(name: str | os.PathLike) -> ModuleType:
    """The experiment file `name` (a bare name or a path) as a module."""
    path = experiment_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment file {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment_config(spec: str | os.PathLike):
    """The config of "<file>[:<variant>]" (file: a bare name or a path), as `--config` loads
    it: `get_config(variant)`, or `get_config()` without a variant."""
    name, _, variant = os.fspath(spec).partition(":")
    module = load_experiment(name)
    return module.get_config(variant) if variant else module.get_config()


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), as `lscpu` prints it."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    lines = subprocess.run(["lscpu"], capture_output=True, text=True,
                           check=False).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("Model name")), "unknown")


def machine() -> str:
    """"<CPU model>, <n> cores": the hardware line of a record or a benchmark table."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def git_commit() -> str:
    """`git describe --always --dirty` of the repository ("3ac4c3e", "3ac4c3e-dirty"), or
    "unknown" outside a git checkout."""
    result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"
