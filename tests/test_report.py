"""The sweep report on a hand-made sweep dir: every job is a row, failures keep their error, plots are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def make_job(sweep: Path, name: str, parallel: str, mesh_dims: list[str], summary: dict | None, losses: list[float]) -> None:
    """A job dir as a Hydra sweep leaves it: .hydra/config.yaml, and what the run wrote."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(
        f"parallel:\n  name: {parallel}\n  mesh_dims: {mesh_dims}\n"
        "mesh:\n  shape: null\n  pp: 1\n  dp_replicate: 1\n  dp_shard: 2\n  tp: 1\n"
    )
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    records = [{"step": i, "loss": loss, "tokens_per_s_per_rank": 100.0, "flops_per_s_per_rank": 1e9, "mfu": None}
               for i, loss in enumerate(losses)]
    # A job requeued without a checkpoint at the signal logs step 1 again after resuming: the last record counts.
    if len(records) > 1:
        records.insert(1, {**records[1], "loss": 99.0})
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def completed(parallel: str, mesh: dict, tokens_per_s: float, final_loss: float) -> dict:
    return {"status": "completed", "error": None, "parallel": parallel, "mesh": mesh, "world_size": 2,
            "mean_tokens_per_s": tokens_per_s, "final_loss": final_loss, "final_val_loss": final_loss + 0.1,
            "param_bytes": 1000, "grad_bytes": 1000, "optim_bytes": 2000, "activation_bytes": 5000,
            "peak_host_memory_bytes": 300e6}


def run_report(sweep: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanodist.tools.report", str(sweep)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_report_lists_every_job_with_its_status_and_writes_the_plots(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, "0_parallel=fsdp", "fsdp", ["dp_shard"], completed("fsdp", {"pp": 1, "dp_replicate": 1, "dp_shard": 2, "tp": 1}, 400.0, 3.5), [4.2, 3.9, 3.5])
    make_job(sweep, "1_parallel=hsdp", "hsdp", ["dp_replicate", "dp_shard"],
             completed("hsdp", {"pp": 1, "dp_replicate": 2, "dp_shard": 1, "tp": 1}, 300.0, 3.5), [4.2, 3.9, 3.5])
    make_job(sweep, "2_parallel=tp", "tp", ["tp"], {"status": "failed", "parallel": "tp", "error": "rank 1: RuntimeError: boom | bang"}, [])
    make_job(sweep, "10_parallel=ddp", "ddp", ["dp_replicate"], None, [4.2])  # killed: no summary

    result = run_report(sweep)
    assert result.returncode == 0, result.stderr
    report = (sweep / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| job")]
    assert [row.split(" | ")[1] for row in rows] == ["fsdp", "hsdp", "tp", "ddp"], "Hydra's job order, 10 after 2"
    fsdp, hsdp, tp, ddp = rows
    assert "| 2 | 2 | 400 | 200 |" in fsdp and "| 2x1 |" in hsdp  # mesh in the strategy's own dims
    assert "2e+09" not in fsdp and "2G" in fsdp, "FLOP/s per rank scaled to the mean tokens/s: 200 / 100 x 1 GFLOP/s"
    assert "9kB" in fsdp and "300MB (host)" in fsdp and "| 3.5 | 3.6 | completed |" in fsdp
    assert tp.endswith("| failed |") and ddp.endswith("| no summary |")
    assert "RuntimeError: boom | bang" in report, "a failed job's error is in the report"
    assert "no summary.json: killed, or still running" in report
    for png in ("loss.png", "throughput.png", "memory.png"):
        assert (sweep / png).stat().st_size > 10_000, png
    assert "| fsdp |" in result.stdout, "the table is printed too"


def test_requeued_steps_count_once(tmp_path):
    from nanodist.tools.report import read_records

    make_job(tmp_path, "0_x", "fsdp", ["dp_shard"], None, [4.0, 3.0, 2.0])
    assert [r["loss"] for r in read_records(tmp_path / "0_x" / "metrics.jsonl")] == [4.0, 3.0, 2.0]


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_a_dir_without_jobs_is_one_sentence(tmp_path, make):
    result = run_report(make(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.strip().endswith(".") and "Traceback" not in result.stderr
