"""The planner: layouts enumerated over the config groups, refused with the validator's reasons,
estimated with the dry run's own figures, ranked, and written out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

from nanodist.config import register_configs

NANO = ["model=nano", "data=synthetic", "data.synthetic_vocab_size=128", "train.batch_size=8"]


def composed(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"output_dir={tmp_path}"])


def planned(tmp_path, *overrides: str) -> dict:
    """{(strategy, mesh text, ac, grad_accum, n_microbatches): layout} of an in-process plan."""
    from nanodist.plan.__main__ import plan
    from nanodist.plan.output import mesh_text

    layouts = plan(composed(tmp_path, *overrides), list(overrides))
    return {(x.strategy, mesh_text(x), x.cfg.train.activation_checkpointing, x.cfg.train.grad_accum,
             x.cfg.parallel.pp.n_microbatches): x for x in layouts}


@pytest.mark.parametrize("dims, world, expected", [
    ([], 1, [{}]),
    ([], 2, []),
    (["pp"], 7, [{"pp": 7}]),
    (["dp_shard", "tp"], 8, [{"dp_shard": 2, "tp": 4}, {"dp_shard": 4, "tp": 2}]),
    (["pp", "dp_shard", "tp"], 8, [{"pp": 2, "dp_shard": 2, "tp": 2}]),
    (["dp_shard", "tp"], 7, []),
])
def test_meshes_are_every_product_of_sizes_two_or_more(dims, world, expected):
    from nanodist.plan.layouts import meshes

    assert list(meshes(dims, world)) == expected


def test_every_strategy_in_the_group_is_planned(tmp_path):
    from nanodist.plan.layouts import STRATEGIES

    layouts = planned(tmp_path, *NANO, "cluster.gpus=2", "plan.activation_checkpointing=[none]")
    assert {key[0] for key in layouts} == {p.stem for p in STRATEGIES.glob("*.yaml")}


def test_an_invalid_layout_carries_the_validators_sentence(tmp_path):
    layouts = planned(tmp_path, *NANO, "cluster.gpus=8", "plan.strategies=[tp]", "plan.activation_checkpointing=[none]")
    layout = layouts[("tp", "tp8", "none", 1, None)]
    assert layout.reason == "model.n_head=4 is not divisible by mesh.tp=8; pick a tp that divides the heads."
    assert not layout.estimate


def test_a_layout_over_the_memory_budget_says_how_far(tmp_path):
    layouts = planned(tmp_path, *NANO, "cluster.gpus=2", "cluster.gpu_memory_gb=0.001", "cluster.memory_reserve_gb=0",
                      "plan.strategies=[ddp]", "plan.activation_checkpointing=[none]")
    layout = layouts[("ddp", "dp_replicate2", "none", 1, None)]
    assert layout.estimate["memory_bytes"] > 0.001 * 2**30
    assert layout.reason.endswith("GiB of cluster.gpu_memory_gb=0.001 less cluster.memory_reserve_gb=0")


@pytest.mark.parametrize("strategy, mesh, dry_run_mesh", [
    ("3d", "pp2xdp_shard2xtp2", ["mesh=2x2x2"]),
    ("pp_1f1b", "pp4", ["mesh.pp=4"]),
    ("fsdp", "dp_shard4", ["mesh.dp_shard=4"]),
])
def test_plan_memory_equals_the_dry_runs(tmp_path, strategy, mesh, dry_run_mesh):
    from nanodist.tools.dryrun import dry_run

    world = 8 if strategy == "3d" else 4
    layouts = planned(tmp_path / "plan", *NANO, f"cluster.gpus={world}", f"plan.strategies=[{strategy}]",
                      "plan.activation_checkpointing=[none]")
    layout = layouts[(strategy, mesh, "none", 1, None)]
    report = dry_run(composed(tmp_path / "dry", *NANO, f"parallel={strategy}", *dry_run_mesh, "dry_run=true"))
    assert layout.estimate["ranks"] == report["ranks"]


def test_the_ranking_puts_fitting_layouts_fastest_first(tmp_path):
    layouts = list(planned(tmp_path, *NANO, "cluster.gpus=4", "cluster.gpu_memory_gb=0.0005",
                           "cluster.memory_reserve_gb=0").values())
    fits = [x.reason is None and bool(x.estimate) for x in layouts]
    assert fits == sorted(fits, reverse=True) and any(fits) and not all(fits)
    steps = [x.estimate["step_s"] for x in layouts if x.reason is None]
    assert steps == sorted(steps)


def run_plan(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanodist.plan", *overrides, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_the_command_writes_the_ranked_plan_and_the_top_k_commands(tmp_path):
    result = run_plan(tmp_path, *NANO, "cluster.gpus=2", "plan.top_k=2", "plan.strategies=[ddp,fsdp,tp_sp,pp_1f1b]")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["world_size"] == 2 and [x["place"] for x in plan["layouts"]] == list(range(1, len(plan["layouts"]) + 1))
    commands = (tmp_path / "topk.sh").read_text().splitlines()[3:]
    assert len(commands) == 2 and all(c.startswith("python launch.py model=nano data=synthetic") for c in commands)
    assert plan["layouts"][0]["overrides"][0] in commands[0] and "planned in" in result.stdout


def test_an_unknown_strategy_is_refused_in_one_sentence(tmp_path):
    result = run_plan(tmp_path, *NANO, "plan.strategies=[nosuch]")
    assert result.returncode == 2
    assert result.stderr.startswith("error: plan.strategies holds nosuch, which is not in conf/parallel/; use one of ")


@pytest.mark.multiprocess
def test_a_pruned_sweep_skips_the_points_that_cannot_run_before_any_starts(tmp_path):
    """Of four points one runs: one is over the (tiny) cluster memory, two the validator refuses."""
    from conftest import multirun

    result = multirun(tmp_path, "model=nano", "data=synthetic", "data.synthetic_vocab_size=128", "train=smoke",
                      "train.max_steps=1", "train.sample_tokens=0", "checkpoint.enabled=false", "plan.prune=true",
                      "cluster.gpu_memory_gb=0.002", "cluster.memory_reserve_gb=0",
                      "train.batch_size=2,4096", "train.seq_len=16,999", "hydra.sweep.subdir=${hydra.job.num}")
    assert result.returncode == 0, result.stderr
    # Jobs 0-3: batch 2 with 16 and 999 tokens, then batch 4096 with each.
    summaries = [json.loads((tmp_path / str(job) / "summary.json").read_text()) for job in range(4)]
    assert [s["status"] for s in summaries] == ["completed", "pruned", "pruned", "pruned"]
    assert summaries[2]["error"].startswith("does not fit: rank 0 needs ")
    assert summaries[1]["error"].startswith("train.seq_len=999 exceeds model.block_size")
    assert "train.batch_size=4096 train.seq_len=16): does not fit: rank 0 needs " in result.stderr
    assert [p.parent.name for p in tmp_path.glob("*/rank0.log")] == ["0"]
    report = subprocess.run([sys.executable, "-m", "nanodist.tools.report", str(tmp_path)], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "(pruned): does not fit" in (tmp_path / "report.md").read_text()


def test_the_fsdp_forward_gathers_every_parameter_once(tmp_path):
    """The collective counter sees FSDP2's all-gathers with their real payload: the whole fp32 model."""
    import torch

    from nanodist.model import GPT, gpt_config
    from nanodist.tools.dryrun import dry_run

    cfg = composed(tmp_path, *NANO, "parallel=fsdp", "mesh.dp_shard=2", "dry_run=true")
    collectives = dry_run(cfg)["ranks"][0]["collectives"]
    with torch.device("meta"):
        model = GPT(gpt_config(cfg, 128))
    assert set(collectives) == {"all_gather:2:1"}
    assert collectives["all_gather:2:1"] == 4 * sum(p.numel() for p in model.parameters())


def test_every_micro_batch_size_of_a_pipelined_fsdp_layout_counts_its_gathers(tmp_path):
    """Stages keep their gathered weights under pipelining: each size's forward must start resharded."""
    layouts = planned(tmp_path, *NANO, "cluster.gpus=4", "plan.strategies=[pp_fsdp]", "plan.activation_checkpointing=[none]")
    sizes = {x.estimate["micro_batch"]: x.estimate["ranks"][0]["collectives"] for x in layouts.values() if x.estimate}
    assert sorted(sizes) == [1, 2] and sizes[1] == sizes[2] and set(sizes[1]) == {"all_gather:2:1"}
