"""Starting ranks: launch.py itself, torchrun, one run dir for all ranks; short runs that must learn."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import NANO, ROOT, launch, read_metrics, read_summary, subprocess_env

FSDP2 = [*NANO, "parallel=fsdp", "mesh.dp_shard=2", "train.max_steps=4", "train.log_interval=1",
         "train.eval_interval=0", "train.batch_size=8"]


@pytest.mark.multiprocess
def test_torchrun_gives_the_same_run_as_launch_py_in_one_run_dir(tmp_path):
    launch(tmp_path / "local", *FSDP2)
    run_dir = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch.py"), *FSDP2, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["loss"] for r in read_metrics(run_dir)] == [r["loss"] for r in read_metrics(tmp_path / "local")]
    assert {p.name for p in run_dir.glob("rank*.log")} == {"rank0.log", "rank1.log"}
    assert read_summary(run_dir)["world_size"] == 2


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
def test_gpt2_xl_under_fsdp_never_holds_the_full_model_on_a_rank(tmp_path):
    """Built on the meta device and materialised shard by shard: each rank's peak RSS stays below the model."""
    launch(tmp_path, "model=gpt2_xl", "data=synthetic", "parallel=fsdp", "mesh.dp_shard=2", "train.max_steps=0",
           "train.sample_tokens=0", "train.eval_interval=0", "checkpoint.enabled=false", timeout=600)
    summary = read_summary(tmp_path)
    full_model_bytes = summary["params"] * 4
    assert full_model_bytes > 6e9
    assert summary["peak_host_memory_bytes"] < 0.75 * full_model_bytes, summary["peak_host_memory_bytes"]
