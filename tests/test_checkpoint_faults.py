"""Checkpoints under faults: a write that fails (a full disk), a damaged checkpoint read by export or
sample, a NaN in the saved state.

The first tests drive `Checkpointer` in one process on test_checkpoint's tiny GPT; a failing
write comes from train.fault's `write` phase (nanodist.train.faults). The last test fills a real,
size-limited disk: a tmpfs mounted in a mount namespace of its own, where this machine lets an
unprivileged user make one (`unshare -rm`).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
from conftest import NANO, ROOT, read_summary, subprocess_env
from test_checkpoint import damage_flip_byte, damage_truncate, train_steps, trainer, warnings_logged  # noqa: F401
from test_metrics_json import strict_loads

from nanodist.train.checkpoint import CheckpointError, checkpoint_dirs, load_model, problem
from nanodist.train.faults import Fault, FaultInjection


def full_disk_at(step: int):
    """DCP's writer that fails as a full disk does, once, when it writes checkpoint step_`step`."""
    return FaultInjection(Fault(0, step, "write", "enospc"), rank=0).storage_writer


def test_a_failed_write_leaves_nothing_and_stops_the_run_in_one_sentence(tmp_path):
    model, optimizer, ckpt = trainer(tmp_path)
    ckpt.save(2, {"step": 2})
    ckpt.storage_writer = full_disk_at(4)
    with pytest.raises(CheckpointError) as err:
        ckpt.save(4, {"step": 4})
    message = str(err.value)
    assert message.startswith("checkpoint step_0000004 was not written (") and "No space left on device" in message
    assert message.endswith(f"step_0000002 stays the newest in {tmp_path}.") and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002"]  # no step_0000004, no .tmp
    assert problem(tmp_path / "step_0000002") is None and ckpt.latest == tmp_path / "step_0000002"


def test_a_failed_background_write_leaves_nothing_and_training_goes_on(tmp_path, warnings_logged):  # noqa: F811
    model, optimizer, ckpt = trainer(tmp_path, async_save=True)
    ckpt.save(2, {"step": 2})
    ckpt.storage_writer = full_disk_at(4)
    ckpt.save(4, {"step": 4})
    ckpt.wait()
    [warning] = [r.getMessage() for r in warnings_logged]
    assert warning.startswith("checkpoint step_0000004 was not written (") and "No space left on device" in warning
    assert ckpt.latest == tmp_path / "step_0000002" and not (tmp_path / "step_0000004.tmp").exists()
    ckpt.save(6, {"step": 6})  # the next save tries again (the fault fires once)
    ckpt.wait()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000006", "step_0000002"]


def test_meta_json_is_strict_json_and_gives_back_the_nan_it_was_saved_with(tmp_path):
    model, optimizer, ckpt = trainer(tmp_path)
    train_steps(model, optimizer, range(3))
    ckpt.save(3, {"step": 3, "loss": float("nan"), "best_val_loss": float("inf")})
    meta = strict_loads((tmp_path / "step_0000003" / "meta.json").read_text())
    assert meta["trainer"]["loss"] is None and meta["non_finite"] == {"trainer.loss": "nan", "trainer.best_val_loss": "inf"}
    resumed = trainer(tmp_path)[2].resume()["trainer"]
    assert math.isnan(resumed["loss"]) and resumed["best_val_loss"] == math.inf and "non_finite" not in resumed


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip_byte], ids=["truncated", "flipped-byte"])
def test_load_model_falls_back_past_a_damaged_checkpoint_with_a_warning(tmp_path, damage, warnings_logged):  # noqa: F811
    model, optimizer, ckpt = trainer(tmp_path)
    train_steps(model, optimizer, range(2))
    ckpt.save(2, {"step": 2})
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, optimizer, range(2, 4))
    ckpt.save(4, {"step": 4})
    damage(tmp_path / "step_0000004")

    loaded, meta = load_model(tmp_path)
    assert meta["step"] == 2
    assert all(v.equal(weights[k]) for k, v in loaded.state_dict().items())
    [warning] = [r.getMessage() for r in warnings_logged]
    assert warning.startswith(f"checkpoint {tmp_path / 'step_0000004'} is unusable (") and "falling back" in warning


def test_load_model_of_a_damaged_step_dir_alone_is_an_error(tmp_path):
    _, _, ckpt = trainer(tmp_path)
    ckpt.save(2, {"step": 2})
    damage_flip_byte(tmp_path / "step_0000002")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_model(tmp_path / "step_0000002")


# ---- a real full disk ----

def can_mount_a_tmpfs(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                          capture_output=True).returncode == 0


@pytest.mark.multiprocess
def test_a_full_disk_during_a_save_gives_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    if not can_mount_a_tmpfs(tmp_path):
        pytest.skip("this machine lets no user mount a tmpfs (unshare -rm); test_faults' enospc row injects the error")
    run_dir, kept = tmp_path / "run", tmp_path / "kept"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    kept.mkdir()
    # A ddp(2) nano checkpoint takes ~1.1 MB: step_2 fits into 1600 KiB, step_4 does not.
    overrides = [*NANO, "parallel=ddp", "mesh.dp_replicate=2", "train.eval_interval=0", "train.batch_size=8",
                 "train.max_steps=6", "checkpoint.interval=2", "checkpoint.keep_last=0", f"hydra.run.dir={run_dir}"]
    launch_py = " ".join([sys.executable, str(ROOT / "launch.py"), *overrides])
    # The tmpfs lives as long as the namespace: what the run left on it is copied out before it goes.
    script = f"mount -t tmpfs -o size=1600k tmpfs {checkpoints} && {{ {launch_py}; rc=$?; cp -a {checkpoints}/. {kept}/; exit $rc; }}"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    # torch's writer may report a full disk as "unexpected pos 704 vs 598": the disk's state is measured and named.
    assert "CheckpointError: checkpoint step_0000004 was not written (rank " in line and "; the disk is full (" in line, line
    assert line.endswith(f"step_0000002 stays the newest in {checkpoints}."), line
    assert read_summary(run_dir)["error"] == line.removeprefix("error: ")
    assert sorted(p.name for p in kept.iterdir()) == ["step_0000002"]
    assert problem(kept / "step_0000002") is None
    assert json.loads((kept / "step_0000002" / "meta.json").read_text())["step"] == 2
