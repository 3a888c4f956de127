"""Checkpoints across processes, through launch.py as a user runs it (gloo ranks on CPU).

- A run killed after its step-4 checkpoint resumes to the same per-step losses, bit for bit, as a
  run never killed. Single process: SIGKILL the run, start it again in the same run dir (what a
  requeue does). Several ranks: SIGKILL one rank and let the elastic launcher restart them all
  (train.max_restarts=1).
- A checkpoint saved under fsdp(2) or pp(2) continues under other layouts (DCP reshards it); the
  model is tied, so pp(2) holds the embedding on its first stage and the head's copy on its last.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import NANO, ROOT, launch, read_metrics, read_summary, subprocess_env

STEPS, EVERY = 12, 4
COMMON = [*NANO, f"train.max_steps={STEPS}", "train.batch_size=8", "train.log_interval=1",
          "train.eval_interval=0", "optim.warmup_steps=2", "optim.lr=3e-3", f"checkpoint.interval={EVERY}"]

# Killed and resumed, each against its own uninterrupted run. Dropout in one row: the RNG must come
# back too. fsdp(2) saves asynchronously, so its checkpoints (resharded below too) are written that way.
KILLED = {
    "single": ["parallel=single", "model.dropout=0.1"],
    "fsdp(2)": ["parallel=fsdp", "mesh.dp_shard=2", "checkpoint.async_save=true"],
    "pp(2)": ["parallel=pp_1f1b", "mesh.pp=2"],
}
LAYOUTS = {**KILLED, "tp(2)": ["parallel=tp", "mesh.tp=2"], "single": ["parallel=single"], "cp(2)": ["parallel=cp", "mesh.cp=2"]}
# (the layout that saved the step-4 checkpoint, the layout that continues it)
RESHARDED = [("fsdp(2)", "tp(2)"), ("fsdp(2)", "single"), ("fsdp(2)", "pp(2)"), ("pp(2)", "single"), ("pp(2)", "fsdp(2)"),
             ("fsdp(2)", "cp(2)"), ("cp(2)", "fsdp(2)")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run dir of an uninterrupted run of a layout (a KILLED one as killed), run once per module."""
    runs: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in runs:
            runs[name] = tmp_path_factory.mktemp("uninterrupted")
            launch(runs[name], *COMMON, *KILLED.get(name, LAYOUTS[name]))
        return runs[name]

    return run


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """Each step's loss as last logged: after a resume, the resumed attempt's records win."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def resumed_step(run_dir: Path) -> int:
    found = re.findall(r"resumed from \S+ \(step (\d+)\)", (run_dir / "rank0.log").read_text())
    assert found, "the run never resumed"
    return int(found[-1])


def start(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    console = open(run_dir.parent / f"{run_dir.name}.console.txt", "w")
    cmd = [sys.executable, str(ROOT / "launch.py"), *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=console, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout}s"
        time.sleep(0.05)


def worker_pids(launcher_pid: int) -> list[int]:
    """The local ranks the elastic launcher in `launcher_pid` started, in pid order: the children of
    its forkserver process (which the launcher started, and which forks one process per rank)."""
    parents, cmdlines = {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parents[int(status.parent.name)] = int(re.search(r"\nPPid:\t(\d+)\n", status.read_text())[1])
            cmdlines[int(status.parent.name)] = (status.parent / "cmdline").read_bytes()
        except (OSError, TypeError):
            continue
    servers = [pid for pid, parent in parents.items() if parent == launcher_pid and b"forkserver" in cmdlines[pid]]
    return sorted(pid for pid, parent in parents.items() if parent in servers)


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", KILLED)
def test_killed_run_resumes_bitwise(name, uninterrupted, tmp_path):
    reference = uninterrupted(name)
    run_dir, overrides = tmp_path / "run", [*COMMON, *KILLED[name], "train.max_restarts=1"]
    proc = start(run_dir, overrides)
    wait_for(run_dir / "checkpoints" / f"step_{EVERY:07d}", proc)
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    if name == "single":
        proc.kill()  # SIGKILL, then start the same run again in the same run dir
        proc.wait()
        launch(run_dir, *overrides)
    else:
        workers = worker_pids(proc.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies; the launcher restarts both
        assert proc.wait(timeout=300) == 0, (run_dir.parent / "run.console.txt").read_text()[-3000:]

    k = resumed_step(run_dir)
    assert EVERY <= k < STEPS
    ours, theirs = losses_by_step(run_dir), losses_by_step(reference)
    assert [ours[s] for s in range(k, STEPS)] == [theirs[s] for s in range(k, STEPS)]
    assert read_summary(run_dir)["final_loss"] == read_summary(reference)["final_loss"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("saved,continued", RESHARDED, ids=[f"{a}->{b}" for a, b in RESHARDED])
def test_checkpoint_continues_under_another_layout(saved, continued, uninterrupted, tmp_path):
    source = uninterrupted(saved) / "checkpoints" / f"step_{EVERY:07d}"
    launch(tmp_path, *COMMON, *LAYOUTS[continued], f"checkpoint.resume_from={source}")
    assert resumed_step(tmp_path) == EVERY
    ours, theirs = losses_by_step(tmp_path), losses_by_step(source.parent.parent)
    assert sorted(ours) == list(range(EVERY, STEPS))
    for step in range(EVERY, STEPS):
        assert ours[step] == pytest.approx(theirs[step], rel=1e-5), f"loss at step {step}"


@pytest.mark.multiprocess
def test_tied_copies_on_first_and_last_stage_stay_equal(uninterrupted):
    """pp(2) trains the embedding on rank 0 and the head's copy on rank 1; after 12 updates they are one weight."""
    final = uninterrupted("pp(2)") / "checkpoints" / f"step_{STEPS:07d}"
    shape = (128, 32)  # nano's embedding: synthetic vocabulary x n_embd
    state = {"model": {"transformer.wte.weight": torch.zeros(shape), "lm_head.weight": torch.zeros(shape)}}
    dcp.load(state, checkpoint_id=final, no_dist=True)
    embedding, head = state["model"]["transformer.wte.weight"], state["model"]["lm_head.weight"]
    assert embedding.abs().sum() > 0
    assert torch.equal(embedding, head)
