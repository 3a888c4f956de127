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


def completed(parallel: str, mesh: dict, tokens_per_s: float, final_loss: float, world_size: int = 2) -> dict:
    return {"status": "completed", "error": None, "parallel": parallel, "mesh": mesh, "world_size": world_size,
            "mean_tokens_per_s": tokens_per_s, "final_loss": final_loss, "final_val_loss": final_loss + 0.1,
            "param_bytes": 1000, "grad_bytes": 1000, "optim_bytes": 2000, "activation_bytes": 5000,
            "peak_host_memory_bytes": 300e6}


def run_report(sweep: Path, *settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanodist.tools.report", str(sweep), *settings], cwd=ROOT, capture_output=True, text=True, timeout=120)


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
    jobs_table = report.split("\n\n")[2]  # after the title and the sentence on what the columns mean
    rows = [line for line in jobs_table.splitlines() if line.startswith("| ") and not line.startswith("| job")]
    assert [row.split(" | ")[1] for row in rows] == ["fsdp", "hsdp", "tp", "ddp"], "Hydra's job order, 10 after 2"
    fsdp, hsdp, tp, ddp = rows
    assert "| 2 | 2 | 400 | 200 |" in fsdp and "| 2x1 |" in hsdp  # mesh in the strategy's own dims
    assert "2e+09" not in fsdp and "2G" in fsdp, "FLOP/s per rank scaled to the mean tokens/s: 200 / 100 x 1 GFLOP/s"
    assert "9kB" in fsdp and "300MB (host)" in fsdp and "| 3.5 | 3.6 | completed |" in fsdp
    assert tp.endswith("| failed |") and ddp.endswith("| no summary |")
    assert "RuntimeError: boom | bang" in report, "a failed job's error is in the report"
    assert "no summary.json: killed, or still running" in report
    for png in ("loss.png", "loss_diff.png", "throughput.png", "memory.png"):
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


def data_parallel_job(sweep: Path, number: int, parallel: str, ranks: int, tokens_per_s: float, losses: list[float]) -> None:
    """A completed job of `parallel` over `ranks` data-parallel ranks, named as a sweep over mesh.dp_shard names it."""
    mesh = {"pp": 1, "dp_replicate": 1, "dp_shard": ranks, "tp": 1}
    make_job(sweep, f"{number}_mesh.dp_shard={ranks},parallel={parallel}", parallel, ["dp_shard"],
             completed(parallel, mesh, tokens_per_s, losses[-1], world_size=ranks), losses)


def test_scaling_efficiency_is_throughput_over_linear_scaling_from_the_strategys_smallest_world_size(tmp_path):
    from nanodist.tools.report import load_sweep
    from nanodist.tools.compare import scaling

    for number, (parallel, ranks, tokens_per_s) in enumerate([("ddp", 1, 100.0), ("ddp", 2, 180.0), ("ddp", 4, 300.0),
                                                               ("fsdp", 2, 150.0), ("fsdp", 4, 240.0), ("tp", 2, 90.0)]):
        data_parallel_job(tmp_path, number, parallel, ranks, tokens_per_s, [4.0, 3.0])
    rows = {(row.job.strategy, row.job.world_size): round(row.efficiency, 6) for row in scaling(load_sweep(tmp_path))}
    assert rows == {("ddp", 1): 1.0, ("ddp", 2): 0.9, ("ddp", 4): 0.75, ("fsdp", 2): 1.0, ("fsdp", 4): 0.8}, \
        "tp ran at one world size only: nothing to scale from"


def test_scaling_compares_only_jobs_that_share_the_swept_values_other_than_the_mesh(tmp_path):
    from nanodist.tools.report import load_job
    from nanodist.tools.compare import scaling

    for number, (ranks, batch, tokens_per_s) in enumerate([(1, 8, 100.0), (2, 8, 150.0), (2, 16, 400.0)]):
        data_parallel_job(tmp_path, number, "ddp", ranks, tokens_per_s, [4.0])
    jobs = [load_job(d) for d in sorted(tmp_path.iterdir())]
    for job, batch in zip(jobs, (8, 8, 16)):
        job.swept = (f"mesh.dp_shard={job.world_size}", f"train.batch_size={batch}")
    rows = [(row.base.world_size, row.job.world_size, row.efficiency) for row in scaling(jobs)]
    assert rows == [(1, 1, 1.0), (1, 2, 0.75)], "the batch-16 job has no smaller world size at its batch size"


LOSSES = {"ddp": [4.0, 3.0, 2.0], "fsdp": [4.0, 3.03, 2.0], "tp": [4.0, 3.0, 2.1]}


def loss_sweep(sweep: Path) -> list:
    """ddp at 2 and 1 ranks (the same losses), fsdp 1% off at step 1, tp 5% off at step 2."""
    from nanodist.tools.report import load_sweep

    for number, (parallel, ranks) in enumerate([("ddp", 2), ("ddp", 1), ("fsdp", 2), ("tp", 2)]):
        data_parallel_job(sweep, number, parallel, ranks, 100.0, LOSSES[parallel])
    return load_sweep(sweep)


@pytest.mark.parametrize("reference, expected", [(None, "1"), ("ddp", "1"), ("fsdp", "2"), ("0", "0"), ("3_mesh.dp_shard=2,parallel=tp", "3")])
def test_the_reference_job_is_the_named_job_or_the_strategys_smallest_default_the_smallest_ddp(tmp_path, reference, expected):
    from nanodist.tools.compare import pick_reference

    assert pick_reference(loss_sweep(tmp_path), reference).number == expected


def test_each_jobs_loss_difference_is_its_largest_relative_gap_from_the_reference(tmp_path):
    from nanodist.tools.compare import max_difference

    jobs = loss_sweep(tmp_path)
    found = {job.number: max_difference(job, jobs[1]) for job in jobs}
    assert found["0"] == (0.0, 0) and found["1"] == (0.0, 0)
    assert found["2"][1] == 1 and found["2"][0] == pytest.approx(0.01)
    assert found["3"][1] == 2 and found["3"][0] == pytest.approx(0.05)


def test_the_report_shows_scaling_and_loss_differences_and_refuses_an_unknown_reference(tmp_path):
    loss_sweep(tmp_path)
    result = run_report(tmp_path, "report.reference=fsdp")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report.md").read_text()
    assert "| 0 | ddp | – | 2 | 100 | 1.00x | 50% |" in report, "ddp: 100 tokens/s at 1 and at 2 ranks"
    assert "the reference is job 2 (fsdp" in report and "| 2 | fsdp mesh=2 | 2 | 3 | reference | – |" in report
    assert "| 3 | tp mesh=2 | 2 | 3 | 5.00e-02 | 3 |" in report, "the third step, as the progress line counts"
    assert (tmp_path / "loss_diff.png").stat().st_size > 10_000
    refused = run_report(tmp_path, "report.reference=hsdp")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: report.reference=hsdp names no job with a loss curve in this sweep; "
        "give a job number (0, 1, 2, 3) or a strategy (ddp, fsdp, tp).")
