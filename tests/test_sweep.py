"""Hydra multirun on this machine: the ready-made experiments, a sweep that outlives a failed job,
and the SLURM launcher's checks that need no cluster (they run before anything is submitted)."""

from __future__ import annotations

import itertools

import pytest
from conftest import ROOT, multirun, read_summary
from hydra import compose, initialize_config_dir

from nanodist.config import register_configs, spread_ranks, validate


def experiment_jobs(name: str) -> list[list[str]]:
    """The overrides of every job an experiment's sweeper would launch (its params' cartesian product)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        params = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True).hydra.sweeper.params
    choices = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [[f"experiment={name}", *combo] for combo in itertools.product(*choices)]


@pytest.mark.parametrize("name,jobs", [("strategy_grid", 32), ("scaling", 3)])
def test_every_job_of_the_experiments_validates(name, jobs):
    register_configs()
    overrides = experiment_jobs(name)
    assert len(overrides) == jobs
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        configs = [compose("config", overrides=o) for o in overrides]
    for cfg in configs:
        validate(cfg)
    if name == "strategy_grid":  # same tokens per step everywhere, 2 and 4 ranks for every strategy
        assert {cfg.train.batch_size * cfg.model.block_size for cfg in configs} == {512}
        assert len({cfg.parallel.name for cfg in configs}) == 16
    else:  # fixed per-rank batch
        assert [cfg.train.batch_size // cfg.mesh.dp_replicate for cfg in configs] == [8, 8, 8]


def test_spread_ranks_fills_the_outer_dims_first():
    assert spread_ranks(["dp_shard"], 4) == "4"
    assert spread_ranks(["dp_replicate", "dp_shard"], 2) == "2x1"
    assert spread_ranks(["pp", "dp_shard", "tp"], 4) == "2x1x2"
    assert spread_ranks(["pp", "dp_shard", "tp"], 8) == "2x2x2"


@pytest.mark.multiprocess
def test_local_sweep_runs_past_a_failed_job_and_groups_its_runs(tmp_path):
    # The jobs asking for the cuDNN attention kernel, which CPUs lack, fail at their first step; job 0 is one.
    sweep = tmp_path / "sweep"
    result = multirun(sweep, "experiment=strategy_grid", "parallel=ddp,pp_1f1b", "train.sdpa_backend=cudnn,auto", "mesh=ranks2",
                      "train.max_steps=3", "train.eval_interval=3", "logger=wandb")
    assert result.returncode != 0, "a sweep with failed jobs exits non-zero once every job ran"
    jobs = sorted((d for d in sweep.iterdir() if d.is_dir()), key=lambda d: int(d.name.split("_")[0]))
    assert len(jobs) == 4 and "sdpa_backend=cudnn" in jobs[0].name
    failed = [read_summary(d) for d in jobs if "sdpa_backend=cudnn" in d.name]
    completed = [read_summary(d) for d in jobs if "sdpa_backend=auto" in d.name]
    assert [s["status"] for s in failed + completed] == ["failed", "failed", "completed", "completed"]
    assert all("RuntimeError: No viable backend for scaled_dot_product_attention" in s["error"] for s in failed)
    assert failed[0]["error"].startswith("rank "), "a local rank's own error, not the launcher's"
    assert completed[0]["final_loss"] == pytest.approx(completed[1]["final_loss"], rel=1e-5)
    for job in jobs:  # wandb's offline run records the sweep as its group
        if "sdpa_backend=auto" in job.name:
            assert str(sweep).encode() in next(job.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()


@pytest.mark.parametrize("mesh,tasks,words", [
    ("mesh=ranks4", "hydra.launcher.tasks_per_node=2",
     "needs 4 ranks = 2 nodes x 2 tasks_per_node, more than hydra.launcher.nodes=1 allows; set hydra.launcher.nodes=2."),
    ("mesh.dp_replicate=3", "hydra.launcher.tasks_per_node=2",
     "needs 3 ranks, which do not fill whole nodes of hydra.launcher.tasks_per_node=2; use at most 2 ranks or a multiple of 2."),
], ids=["more_nodes", "part_nodes"])
def test_slurm_launcher_refuses_a_mesh_the_nodes_do_not_fit(tmp_path, mesh, tasks, words):
    """Checked before any SLURM command runs, so this needs no cluster."""
    result = multirun(tmp_path / "sweep", "hydra/launcher=slurm", "model=nano", "parallel=ddp,hsdp", mesh, tasks)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: job #0 (model=nano parallel=ddp") and line.endswith(words), line
    assert "\n" not in line
    assert not (tmp_path / "sweep" / ".submitit").exists(), "nothing was submitted"


def test_slurm_jobs_take_as_few_nodes_as_their_mesh_fills():
    """A 2-rank job runs on part of a node, a 4-rank one on two nodes of two tasks: one sweep, two shapes."""
    from nanodist.launch.slurm import job_shape

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        configs = [compose("config", overrides=["parallel=ddp", f"mesh={mesh}"]) for mesh in ("single", "ranks2", "ranks4", "ranks8")]
    assert [job_shape(cfg, max_nodes=4, per_node=2) for cfg in configs] == [(1, 1), (1, 2), (2, 2), (4, 2)]
    assert [job_shape(cfg, max_nodes=4, per_node=4) for cfg in configs] == [(1, 1), (1, 2), (1, 4), (2, 4)]
