"""The fault matrix: one rank of a local run is killed at a chosen point (train.fault), the run
restarts once (train.max_restarts=1), and each row states what survives, as the README does.

Every restarting row ends with the uninterrupted run's final loss and val losses, bit for bit: the
restart resumes from the newest complete checkpoint and replays the steps since. A kill during a
save leaves that checkpoint partial (step_4.tmp, never read), and the restart uses the one before.
Then the rows that end the run: a full disk during a save, and SIGTERM of a local launch.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import NANO, ROOT, launch, read_summary, subprocess_env

from nanodist.train.checkpoint import checkpoint_dirs, problem

# One worker runs them all (`--dist loadgroup`), so each layout's uninterrupted run is trained once.
pytestmark = pytest.mark.xdist_group("faults")

# Evaluations after steps 2 and 5 (0-based, as metrics.jsonl counts), checkpoints after 2, 4 and 6 steps.
RUN = [*NANO, "train.batch_size=8", "train.max_steps=6", "train.log_interval=1", "train.eval_interval=3",
       "train.eval_iters=1", "checkpoint.interval=2", "checkpoint.keep_last=0"]
LAYOUTS = {
    "ddp(2)": ["parallel=ddp", "mesh.dp_replicate=2"],
    "fsdp(2)": ["parallel=fsdp", "mesh.dp_shard=2"],
    "pp_1f1b(2)": ["parallel=pp_1f1b", "mesh.pp=2"],
    "3d(2x2x2)": ["parallel=3d", "mesh=2x2x2"],
}
ASYNC = ["checkpoint.async_save=true"]

# (row, layout, train.fault as RANK:STEP:PHASE:KIND, extra overrides, the checkpoint the restart resumes from)
MATRIX = [
    # SIGKILL as step 3 starts (the 4th step): step_2 is the newest checkpoint.
    ("ddp(2) kill mid-step", "ddp(2)", "1:3:step:kill", [], "step_0000002"),
    ("fsdp(2) kill mid-step", "fsdp(2)", "1:3:step:kill", [], "step_0000002"),
    ("pp_1f1b(2) kill mid-step", "pp_1f1b(2)", "1:3:step:kill", [], "step_0000002"),
    ("3d(2x2x2) kill mid-step", "3d(2x2x2)", "5:3:step:kill", [], "step_0000002"),
    # Rank 0 killed the moment it hands step_4 to an async save: the background write never ends.
    ("ddp(2) kill during an async save", "ddp(2)", "0:4:save:kill", ASYNC, "step_0000002"),
    # Rank 0 killed inside DCP's write of step_4, its own files written, the checkpoint not complete.
    ("fsdp(2) kill inside a save's write", "fsdp(2)", "0:4:write:kill", [], "step_0000002"),
    ("pp_1f1b(2) kill inside an async save's write", "pp_1f1b(2)", "1:4:write:kill", ASYNC, "step_0000002"),
    # Killed as the evaluation after step 2 starts, the other ranks waiting in it.
    ("pp_1f1b(2) kill during eval", "pp_1f1b(2)", "1:2:eval:kill", [], "step_0000002"),
    # The last evaluation (after step 5), before the final save: step_4 is the newest.
    ("ddp(2) kill during the last eval", "ddp(2)", "0:5:eval:kill", [], "step_0000004"),
]
FINAL = ("final_loss", "final_val_loss", "best_val_loss", "steps", "tokens_seen")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each layout's run without a fault, trained once, when a row first asks for it."""
    summaries: dict = {}

    def summary(layout: str) -> dict:
        if layout not in summaries:
            run_dir = tmp_path_factory.mktemp("uninterrupted")
            launch(run_dir, *RUN, *LAYOUTS[layout])
            summaries[layout] = read_summary(run_dir)
        return summaries[layout]

    return summary


@pytest.mark.multiprocess
@pytest.mark.parametrize("row,layout,fault,extra,resumed_from", MATRIX, ids=[row[0] for row in MATRIX])
def test_a_killed_rank_restarts_and_ends_with_the_uninterrupted_losses(row, layout, fault, extra, resumed_from,
                                                                       uninterrupted, tmp_path):
    launch(tmp_path, *RUN, *LAYOUTS[layout], *extra, f"train.fault={fault}", "train.max_restarts=1")
    summary, reference = read_summary(tmp_path), uninterrupted(layout)
    assert summary["status"] == "completed"
    assert {k: summary[k] for k in FINAL} == {k: reference[k] for k in FINAL}
    log = (tmp_path / "rank0.log").read_text()
    assert log.count("resumed from ") == 1 and f"resumed from {tmp_path / 'checkpoints' / resumed_from} " in log, log[-2000:]
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_0000002", "step_0000004", "step_0000006"]
    assert all(problem(p) is None for p in checkpoint_dirs(checkpoints))


@pytest.mark.multiprocess
def test_a_full_disk_during_a_save_ends_the_run_in_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """Injected (test_checkpoint_faults fills a real tmpfs where the machine allows one): rank 1's
    write of step_4 fails with ENOSPC; DCP tells every rank, each removes what it wrote."""
    result = launch(tmp_path, *RUN, *LAYOUTS["ddp(2)"], "train.fault=1:4:write:enospc", check=False)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: rank ") and " failed: CheckpointError: checkpoint step_0000004 was not written (rank 1: " in line
    assert "No space left on device" in line and line.endswith(f"step_0000002 stays the newest in {tmp_path / 'checkpoints'}.")
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["error"] == line.removeprefix("error: ")
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step_0000002"] and problem(checkpoints / "step_0000002") is None


@pytest.mark.multiprocess
def test_sigterm_saves_at_a_step_boundary_exits_with_one_line_and_a_relaunch_resumes(tmp_path):
    overrides = [*RUN, *LAYOUTS["ddp(2)"], "train.eval_interval=0", "train.max_steps=100000", "checkpoint.interval=0",
                 f"hydra.run.dir={tmp_path}"]
    run = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *overrides], cwd=ROOT, env=subprocess_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 1
    assert stderr.strip().splitlines()[-1] == f"error: stopped by SIGTERM; relaunch with hydra.run.dir={tmp_path} to resume."
    log = (tmp_path / "rank0.log").read_text()
    saved = int(log.split("stopped by SIGTERM: saved step ")[1].split(" ")[0])
    assert (tmp_path / "checkpoints" / f"step_{saved:07d}").is_dir() and saved >= 3

    launch(tmp_path, *RUN, *LAYOUTS["ddp(2)"], "train.eval_interval=0", f"train.max_steps={saved + 2}")
    assert f"resumed from {tmp_path / 'checkpoints' / f'step_{saved:07d}'} " in (tmp_path / "rank0.log").read_text()
    assert read_summary(tmp_path)["steps"] == saved + 2
