"""Starting ranks: launch.py itself, torchrun, one run dir for all ranks; short runs that must learn."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import NANO, ROOT, launch, read_metrics, read_summary, subprocess_env

FSDP2 = [*NANO, "parallel=fsdp", "mesh.dp_shard=2", "train.max_steps=4", "train.log_interval=1",
         "train.eval_interval=0", "train.batch_size=8"]


@pytest.mark.multiprocess
def test_torchrun_gives_the_same_run_as_launch_py_in_one_run_dir(tmp_path):
    launch(tmp_path / "local", *FSDP2)
    run_dir = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--log-dir={run_dir / 'torchelastic'}", str(ROOT / "launch.py"), *FSDP2, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["loss"] for r in read_metrics(run_dir)] == [r["loss"] for r in read_metrics(tmp_path / "local")]
    assert {p.name for p in run_dir.glob("rank*.log")} == {"rank0.log", "rank1.log"}
    assert read_summary(run_dir)["world_size"] == 2


DDP2 = [*NANO, "parallel=ddp", "mesh.dp_replicate=2", "train.eval_interval=0", "train.batch_size=8"]


def start_ranks(how: str, run_dir, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Two ranks of `python launch.py overrides...`, started by launch.py itself ("local") or by torchrun,
    whose agent's log dir goes where a local launch puts torch elastic's, as the README says."""
    runner = [] if how == "local" else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                        f"--log-dir={run_dir / 'torchelastic'}"]
    cmd = [sys.executable, *runner, str(ROOT / "launch.py"), *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True, timeout=300)


@pytest.mark.multiprocess
@pytest.mark.parametrize("how", ["local", "torchrun"])
def test_a_finished_run_leaves_nothing_in_tmp(how, tmp_path):
    """torch elastic's folders go into the run dir, torchrun's rank>0 Hydra dirs are removed.

    The run's own TMPDIR tells its leftovers from those of tests running beside it. It is short, and
    not under tmp_path: the ranks' forkserver puts a unix socket there (at most 107 bytes of path).
    """
    scratch = Path(tempfile.mkdtemp(prefix="nd-"))
    try:
        result = start_ranks(how, tmp_path / "run", *DDP2, "train.max_steps=2", env={"TMPDIR": str(scratch)})
        assert result.returncode == 0, result.stderr[-3000:]
        left = sorted(p.name for p in scratch.iterdir() if p.name.startswith(("torchelastic_", "nanodist-rank-")))
        assert left == [], left
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.multiprocess
@pytest.mark.parametrize("how", ["local", "torchrun"])
def test_a_rank_that_raises_ends_the_job_at_once_and_is_named(how, tmp_path):
    """Rank 1 of 2 raises at step 3 with the collective timeout at 10 minutes: every rank ends within seconds."""
    result = start_ranks(how, tmp_path, *DDP2, "train.max_steps=1000", "train.collective_timeout_s=600",
                         "train.fault=1:3:step:raise")
    ended_at = time.time()
    assert result.returncode != 0
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["failed_rank"] == 1
    assert summary["error"].startswith("rank 1 failed: RuntimeError: injected fault on rank 1 at step 3"), summary["error"]
    assert ended_at - (tmp_path / "summary.json").stat().st_mtime < 30, "the job outlived the failure"
    assert summary["error"] in (tmp_path / "rank0.log").read_text(), "rank 0 says which rank failed first"
    if how == "local":
        assert result.stderr.strip().splitlines()[-1] == f"error: {summary['error']}"


@pytest.mark.multiprocess
def test_bf16_mixed_precision_fsdp_trains(tmp_path):
    launch(tmp_path, *FSDP2, "data=shakespeare_char", "train.max_steps=30", "train.log_interval=5",
           "train.dtype=bfloat16", "parallel.fsdp.param_dtype=bfloat16", "parallel.fsdp.reduce_dtype=float32",
           "optim.warmup_steps=5", "optim.lr=1e-2")
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert losses[-1] < losses[0] - 0.5, losses


def test_single_process_run_learns_and_writes_its_records(tmp_path):
    launch(tmp_path, "model=nano", "data=shakespeare_char", "train.max_steps=60", "train.log_interval=10",
           "train.eval_interval=30", "train.eval_iters=4", "optim.warmup_steps=10", "optim.lr=1e-2",
           "train.sample_tokens=20")
    records = read_metrics(tmp_path)
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"} <= records[-1].keys()
    assert any("val_loss" in r for r in records)
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["best_val_loss"] < 3.5
    assert len(summary["sample"]) > 20
    assert (tmp_path / ".hydra" / "config.yaml").exists()


def test_cfg_job_prints_the_composed_config():
    result = subprocess.run([sys.executable, "launch.py", "--cfg", "job", "model=gpt2"], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "n_embd: 768" in result.stdout and "parallel:" in result.stdout


def test_gpt2_runs_a_step_on_cpu(tmp_path):
    launch(tmp_path, "model=gpt2", "data=synthetic", "train.max_steps=2", "train.batch_size=1", "train.seq_len=32",
           "train.eval_interval=0", "train.sample_tokens=0", "checkpoint.enabled=false")
    assert read_summary(tmp_path)["steps"] == 2


@pytest.mark.multiprocess
@pytest.mark.parametrize("implementation", ["native", "reference"])
def test_gpt2_xl_under_fsdp_never_holds_the_full_model_on_a_rank(implementation, tmp_path):
    """Built on the meta device and materialised shard by shard: each rank's peak RSS stays below the model."""
    launch(tmp_path, "model=gpt2_xl", "data=synthetic", "parallel=fsdp", "mesh.dp_shard=2", "train.max_steps=0",
           f"parallel.implementation={implementation}",
           "train.sample_tokens=0", "train.eval_interval=0", "checkpoint.enabled=false", timeout=600)
    summary = read_summary(tmp_path)
    full_model_bytes = summary["params"] * 4
    assert full_model_bytes > 6e9
    assert summary["peak_host_memory_bytes"] < 0.75 * full_model_bytes, summary["peak_host_memory_bytes"]
