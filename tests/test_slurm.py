"""Sweeps on a real SLURM cluster through hydra/launcher=slurm (submitit).

Start the one-machine test cluster first:  bash ../shared/slurm/start-cluster.sh
Without a cluster these tests skip; with CI=true a skip is a failure, so CI proves they ran.
All "nodes" of the test cluster are this machine under a name that does not resolve, so jobs
rendezvous on NANODIST_MASTER_ADDR=127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, multirun, read_summary, subprocess_env

# One SLURM test at a time, even under `pytest -n` (`make soak`): they share the two-node cluster.
pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess, pytest.mark.xdist_group("slurm")]

SLURM_BIN = Path(os.environ.get("NANODIST_SLURM_DIR", "/tmp/nanodist-slurm")) / "bin"  # its sacct stand-in
START = "start one with `bash ../shared/slurm/start-cluster.sh` (it needs root) and rerun"
# Small jobs: the nano model on synthetic tokens, a few steps, one CPU per rank.
JOB = ["model=nano", "data=synthetic", "data.synthetic_vocab_size=128", "train.sample_tokens=0", "model.tie_embeddings=false",
       "train.batch_size=8", "train.log_interval=1", "train.eval_interval=0", "optim.warmup_steps=2", "optim.lr=3e-3",
       "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
       '+hydra.launcher.srun_args=["--cpu-bind=none"]']


def no_cluster(reason: str) -> None:
    """Skip where no cluster answers; fail under CI, where the cluster is started before the tests."""
    message = f"no SLURM cluster answers ({reason}); {START}."
    if os.environ.get("CI") == "true":
        pytest.fail(message + " CI=true: the SLURM tests must run.")
    pytest.skip(message)


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    """The environment a submitting process needs: SLURM's commands and the sacct stand-in first on PATH."""
    env = {"PATH": f"{SLURM_BIN}{os.pathsep}{os.environ['PATH']}", "NANODIST_MASTER_ADDR": "127.0.0.1"}
    sinfo = shutil.which("sinfo", path=env["PATH"])
    if sinfo is None:
        no_cluster("sinfo is not on PATH")
    try:
        result = subprocess.run([sinfo, "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        no_cluster("sinfo timed out")
    if result.returncode != 0 or " up" not in result.stdout:
        no_cluster(f"sinfo says: {(result.stderr or result.stdout).strip() or 'no partition is up'}")
    return env


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((d for d in sweep.iterdir() if (d / ".hydra").is_dir()), key=lambda d: int(d.name.split("_")[0]))


def report(sweep: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "nanodist.tools.report", str(sweep)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for png in ("loss.png", "throughput.png", "memory.png"):
        assert (sweep / png).stat().st_size > 10_000
    return (sweep / "report.md").read_text()


def test_three_strategies_on_one_node_and_the_report(slurm_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = multirun(sweep, *JOB, "hydra.launcher.tasks_per_node=2", "parallel=ddp,fsdp,pp_1f1b", "mesh=ranks2",
                      "train.max_steps=3", env=slurm_env, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summaries = [read_summary(d) for d in job_dirs(sweep)]
    assert [s["parallel"] for s in summaries] == ["ddp", "fsdp", "pp_1f1b"]
    assert all(s["status"] == "completed" and s["world_size"] == 2 for s in summaries)
    assert all(s["final_loss"] == pytest.approx(summaries[0]["final_loss"], rel=1e-5) for s in summaries), "the same math"
    for d in job_dirs(sweep):  # config, metrics and each rank's log in every job dir
        assert {"metrics.jsonl", "rank0.log", "rank1.log"} <= {f.name for f in d.iterdir()}
    table = report(sweep)
    assert table.count("| completed |") == 3


def test_world_size_4_on_two_nodes_and_a_failed_job_in_the_report(slurm_env, tmp_path):
    # Job 1 asks for the cuDNN attention kernel, which CPUs lack: it fails at its first step on every rank.
    sweep = tmp_path / "sweep"
    result = multirun(sweep, *JOB, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=2", "parallel=hsdp",
                      "mesh=ranks4", "train.max_steps=3", "train.sdpa_backend=auto,cudnn", env=slurm_env, timeout=420)
    assert result.returncode != 0, "a sweep with a failed job exits non-zero, after every job ran"
    assert len(job_dirs(sweep)) == 2, result.stdout[-3000:] + result.stderr[-3000:]
    ok, failed = (read_summary(d) for d in job_dirs(sweep))
    assert ok["status"] == "completed" and ok["world_size"] == 4 and ok["mesh"]["dp_replicate"] == ok["mesh"]["dp_shard"] == 2
    hosts = " ".join(p.read_text() for p in sweep.glob(".submitit/*_0/*_log.out"))
    assert "node=0(2)" in hosts and "node=1(2)" in hosts, "ranks ran on both nodes"
    assert failed["status"] == "failed" and "RuntimeError" in failed["error"]
    table = report(sweep)
    assert "| completed |" in table and "| failed |" in table and failed["error"] in table


def test_one_sweep_mixes_world_sizes_each_job_on_the_nodes_its_mesh_fills(slurm_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = multirun(sweep, *JOB, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=2", "parallel=ddp",
                      "mesh=ranks2,ranks4", "train.max_steps=2", env=slurm_env, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two, four = (read_summary(d) for d in job_dirs(sweep))
    assert (two["status"], two["world_size"], four["status"], four["world_size"]) == ("completed", 2, "completed", 4)
    # submitit's first line in each task's log: "... node=<node>(<nodes>), global_rank=<rank>(<world size>))"
    tasks = {}
    for log in sweep.glob(".submitit/*/*_log.out"):
        nodes, world = re.search(r"node=\d+\((\d+)\), global_rank=\d+\((\d+)\)", log.read_text()).groups()
        tasks.setdefault(log.parent.name, []).append((int(nodes), int(world)))
    assert sorted(sorted(shape) for shape in tasks.values()) == [[(1, 2)] * 2, [(2, 4)] * 4], \
        f"two submissions: 2 tasks on one node, 4 tasks on two nodes: {tasks}"


def test_a_missing_partition_is_refused_before_submission(slurm_env, tmp_path):
    result = multirun(tmp_path / "sweep", *JOB, "parallel=ddp,fsdp", "hydra.launcher.partition=nosuch", env=slurm_env)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: hydra.launcher.partition=nosuch is not a partition of this cluster; pick one of: debug."
    assert not (tmp_path / "sweep" / ".submitit").exists(), "nothing was submitted"


def squeue(job_id: str, env: dict) -> str:
    """`STATE REASON` of a job, or "" once it has left the queue."""
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True, env=env).stdout.strip()


def scontrol(env: dict, *args: str) -> str:
    result = subprocess.run(["scontrol", *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_minutes(job_id: str, env: dict) -> int:
    fields = dict(t.split("=", 1) for t in scontrol(env, "show", "job", "-o", job_id).split() if "=" in t)
    h, m, s = (fields["RunTime"].split("-")[-1]).split(":")
    return math.ceil((int(h) * 3600 + int(m) * 60 + int(s)) / 60)


RELEASE_DELAY_S = 5


def test_time_limit_signal_checkpoints_requeues_and_resumes_to_the_same_loss(slurm_env, tmp_path):
    """Two identical jobs: job 0's time limit is cut short once it trains, job 1 runs uninterrupted.

    Cutting the limit to the next minute puts SLURM's warning (signal_delay_s before the limit) due
    at once; slurmctld sends it at one of its periodic checks, which were seen to come more than 40 s
    apart, so the run must still be training a good while later: 6000 steps take over two minutes on
    an idle 2-core machine (2000 steps once finished first), five or more on a busy one. The requeued
    job waits 121 s (SLURM's BeginTime hold after a requeue) unless released, so the test releases it,
    RELEASE_DELAY_S after seeing it held: released in the second of the requeue, it was once refused.
    """
    steps = 6000
    env = {**subprocess_env(), **slurm_env}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", *JOB, "hydra.launcher.tasks_per_node=2", "parallel=ddp", "mesh=ranks2",
           f"train.max_steps={steps}", "train.batch_size=4", "train.log_interval=100", "checkpoint.interval=500",
           "hydra.launcher.signal_delay_s=60", "hydra.launcher.max_num_timeout=1", "logger.group=requeued,uninterrupted",
           f"hydra.sweep.dir={sweep}"]
    sweeper = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cut = released = False
    requeued_at = None
    deadline = time.time() + 900
    while sweeper.poll() is None and time.time() < deadline:
        time.sleep(1)
        ids = sorted(p.name for p in (sweep / ".submitit").glob("*_0")) if (sweep / ".submitit").exists() else []
        if not ids:
            continue
        job_id, state = ids[0], squeue(ids[0], env)
        if not cut and state.startswith("RUNNING") and any(m.stat().st_size for m in sweep.glob("0_*/metrics.jsonl")):
            scontrol(env, "update", f"JobId={job_id}", f"TimeLimit={run_minutes(job_id, env) + 1}")  # the warning is due now
            cut = True
        elif cut and not released and state == "PENDING BeginTime":
            requeued_at = requeued_at or time.time()
            # slurmd refuses a job whose credential dates from the second its last run was revoked
            # ("Job credential revoked", the job then fails): release it a few seconds later.
            if time.time() - requeued_at >= RELEASE_DELAY_S:
                scontrol(env, "update", f"JobId={job_id}", "StartTime=now", "TimeLimit=10")
                released = True
    if sweeper.poll() is None:
        sweeper.kill()
    output = sweeper.communicate()[0]
    assert sweeper.returncode == 0, output[-4000:]
    interrupted, uninterrupted = job_dirs(sweep)
    log = (interrupted / "rank0.log").read_text()
    assert cut and released, f"the job was never requeued (cut={cut}); did it finish before SLURM's signal?\n{log[-2000:]}"
    assert "signalled before the time limit: saved step" in log and "resumed from" in log, log[-3000:]
    first, reference = read_summary(interrupted), read_summary(uninterrupted)
    assert first["status"] == reference["status"] == "completed" and first["steps"] == reference["steps"] == steps
    assert first["final_loss"] == reference["final_loss"], "resuming from the signal's checkpoint changes nothing"
    saved_at = int(log.split("saved step ")[1].split(",")[0])
    assert 0 < saved_at < steps
    print(json.dumps({"signalled_at_step": saved_at, "final_loss": first["final_loss"]}))


def test_a_rank_that_raises_ends_every_task_of_the_job_within_a_minute(slurm_env, tmp_path):
    """Rank 1 of 2 raises at step 3; the collective timeout stays 10 minutes, so only being told ends rank 0.

    Inside a SLURM sweep Hydra catches the error in rank 1's task: without the failure key in the
    store, rank 0 waited in its all-reduce. The failure's time is summary.json's, which the failing
    rank writes at once; the job's end is when squeue no longer lists it.
    """
    env = {**subprocess_env(), **slurm_env}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", *JOB, "hydra.launcher.tasks_per_node=2", "parallel=ddp", "mesh=ranks2",
           "train.max_steps=1000", "train.collective_timeout_s=600", "train.fault=1:3:step:raise", f"hydra.sweep.dir={sweep}"]
    sweeper = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failed_at = ended_at = None
    deadline = time.time() + 180
    while ended_at is None and time.time() < deadline:
        time.sleep(0.5)
        summaries = list(sweep.glob("0_*/summary.json"))
        if failed_at is None and summaries:
            failed_at = summaries[0].stat().st_mtime
        ids = [p.name for p in (sweep / ".submitit").glob("[0-9]*")] if (sweep / ".submitit").exists() else []
        if failed_at is not None and ids and not squeue(ids[0], env).startswith(("RUNNING", "COMPLETING")):
            ended_at = time.time()
    output = sweeper.communicate(timeout=120)[0]
    assert failed_at is not None and ended_at is not None, output[-3000:]
    assert ended_at - failed_at < 60, f"the job ran on {ended_at - failed_at:.0f} s after rank 1 failed"
    summary = read_summary(job_dirs(sweep)[0])
    assert summary["status"] == "failed" and summary["failed_rank"] == 1
    assert summary["error"].startswith("rank 1 failed: RuntimeError: injected fault on rank 1 at step 3"), summary["error"]
    assert "rank 1 failed: RuntimeError" in (job_dirs(sweep)[0] / "rank0.log").read_text(), "rank 0 says who failed"
    print(json.dumps({"ended_after_failure_s": round(ended_at - failed_at, 1)}))
