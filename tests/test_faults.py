"""The fault matrix: a rank of a local ddp(2) run is killed at a chosen point (train.fault), the run
restarts once (train.max_restarts=1), and each row states what survives, as the README does.

Every row ends with the uninterrupted run's final loss, bit for bit: the restart resumes from the
newest complete checkpoint and replays the steps since. Last, SIGTERM of a local launch.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import NANO, ROOT, launch, read_summary, subprocess_env

# One worker runs them all (`--dist loadgroup`), so the uninterrupted run is trained once.
pytestmark = pytest.mark.xdist_group("faults")

RUN = [*NANO, "parallel=ddp", "mesh.dp_replicate=2", "train.eval_interval=0", "train.batch_size=8", "train.max_steps=6",
       "train.log_interval=1", "checkpoint.interval=2", "checkpoint.keep_last=0"]

# (row, fault, extra overrides, the checkpoint the restart resumes from)
MATRIX = [
    # SIGKILL of rank 1 as step 3 starts: checkpoint step_2 is the newest.
    ("kill mid-step", "1:3:step:kill", [], "step_0000002"),
    # SIGKILL of rank 0 the moment it hands step_4 to an async save: the background write never
    # finishes, step_4 stays a .tmp that the restart deletes, and step_2 is used.
    ("kill during a save", "0:4:save:kill", ["checkpoint.async_save=true"], "step_0000002"),
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    launch(run_dir, *RUN)
    return read_summary(run_dir)


@pytest.mark.multiprocess
@pytest.mark.parametrize("row,fault,extra,resumed_from", MATRIX, ids=[row[0] for row in MATRIX])
def test_a_killed_rank_restarts_and_ends_with_the_uninterrupted_loss(row, fault, extra, resumed_from, uninterrupted, tmp_path):
    launch(tmp_path, *RUN, *extra, f"train.fault={fault}", "train.max_restarts=1")
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["final_loss"] == uninterrupted["final_loss"]
    log = (tmp_path / "rank0.log").read_text()
    assert f"resumed from {tmp_path / 'checkpoints' / resumed_from} " in log, log[-2000:]
    assert not list((tmp_path / "checkpoints").glob("*.tmp")), "no partial checkpoint is left"


@pytest.mark.multiprocess
def test_sigterm_saves_at_a_step_boundary_exits_with_one_line_and_a_relaunch_resumes(tmp_path):
    overrides = [*RUN, "train.max_steps=100000", "checkpoint.interval=0", f"hydra.run.dir={tmp_path}"]
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

    launch(tmp_path, *RUN, f"train.max_steps={saved + 2}")
    assert f"resumed from {tmp_path / 'checkpoints' / f'step_{saved:07d}'} " in (tmp_path / "rank0.log").read_text()
    assert read_summary(tmp_path)["steps"] == saved + 2
