"""Shared test helpers: run launch.py as a user would, and read what the run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# The tiny model every multi-process test trains: seconds per run even with 8 gloo ranks on 2 cores.
NANO = ["model=nano", "data=synthetic", "data.synthetic_vocab_size=128", "train.sample_tokens=0"]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.setdefault("NANODIST_DATA_MIRROR", str(SHARED_DATA))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def launch(run_dir: Path, *overrides: str, timeout: int = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python launch.py overrides...` with its Hydra run dir at `run_dir` (and extra environment `env`)."""
    cmd = [sys.executable, str(ROOT / "launch.py"), *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=ROOT, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(overrides)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def multirun(sweep_dir: Path, *overrides: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python launch.py -m overrides...` with its Hydra sweep dir at `sweep_dir`; the caller checks the exit code."""
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout)
