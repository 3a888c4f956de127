"""The dry run: a plan for many ranks checked in one CPU process, its estimates checked against real runs.

The estimates must equal what real runs of the same config measure on rank 0: parameter, gradient
and optimizer bytes exactly, and the activation peak counted by the same saved-tensor meter.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import ROOT, launch, read_summary

from nanodist.config import register_configs

# Real data (not synthetic): the loader then holds just this rank's rows, as the dry run assumes.
SMALL = ["model=nano", "data=shakespeare_char", "train=smoke", "train.max_steps=2", "train.sample_tokens=0",
         "checkpoint.enabled=false"]
FIGURES = ("param_bytes", "grad_bytes", "optim_bytes", "activation_bytes")


def dry_run_in_process(tmp_path, *overrides: str) -> dict:
    from hydra import compose, initialize_config_dir

    from nanodist.config import validate
    from nanodist.tools.dryrun import dry_run

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "dry_run=true", f"output_dir={tmp_path}"])
    validate(cfg)
    return dry_run(cfg)


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "overrides",
    [["parallel=fsdp", "mesh.dp_shard=2", "train.profile_steps=[1]"],
     ["parallel=pp_gpipe", "mesh.pp=2"]],
    ids=["fsdp(2)", "pp_gpipe(2)"],
)
def test_estimate_equals_real_run(overrides, tmp_path):
    launch(tmp_path / "real", *SMALL, *overrides)
    measured = read_summary(tmp_path / "real")
    estimate = dry_run_in_process(tmp_path / "dry", *SMALL, *overrides)["ranks"][0]
    assert {k: estimate[k] for k in FIGURES} == {k: measured[k] for k in FIGURES}
    if "train.profile_steps=[1]" in overrides:  # one trace per rank
        assert sorted(p.parent.name for p in (tmp_path / "real" / "profile").rglob("step1.json")) == ["rank0", "rank1"]


def test_dry_run_of_64_ranks_from_the_command_line(tmp_path):
    start = time.perf_counter()
    result = launch(tmp_path, "dry_run=true", "model=gpt2", "data=openwebtext", "parallel=fsdp_tp", "mesh.dp_shard=16",
                    "mesh.tp=4", "train.batch_size=32", "train.activation_checkpointing=full", timeout=120)
    seconds = time.perf_counter() - start
    assert seconds < 60, f"{seconds:.0f} s"
    assert "on 64 ranks" in result.stdout and "plan is valid" in result.stdout
    report = json.loads((tmp_path / "dry_run.json").read_text())
    rank = report["ranks"][0]
    full_model_bytes = 4 * (report["params"] + 1024 * 768)  # fp32, with the position embedding
    # 1/64 of the model, plus what TP replicates (norms, positions, row-parallel biases): 1/16 of those.
    assert full_model_bytes / 64 <= rank["param_bytes"] < 1.05 * full_model_bytes / 64
    assert rank["optim_bytes"] > 2 * rank["param_bytes"]
    assert rank["activation_bytes"] > 0


def test_dry_run_3d_gives_every_pipeline_rank(tmp_path):
    report = dry_run_in_process(tmp_path, "model=nano", "data=synthetic",
                                "data.synthetic_vocab_size=128", "parallel=3d", "mesh=2x2x2", "train.batch_size=8",
                                "parallel.pp.n_microbatches=2")
    assert report["world_size"] == 8
    assert [(r["rank"], r["stages"]) for r in report["ranks"]] == [(0, [0]), (4, [1])]
    assert all(r["param_bytes"] > 0 and r["activation_bytes"] > 0 for r in report["ranks"])


def nano_layout(*overrides: str):
    """(config, dims, model config) of the nano model (8 layers, vocabulary 128) under `overrides`."""
    from hydra import compose, initialize_config_dir

    from nanodist.model import gpt_config
    from nanodist.parallel.dims import ParallelDims

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=nano", "data=synthetic", "data.synthetic_vocab_size=128", "model.n_layer=8",
                                           "train.batch_size=8", "model.block_size=64", "output_dir=unused", *overrides])
    return cfg, ParallelDims.from_config(cfg), gpt_config(cfg, 128)


@pytest.mark.parametrize("overrides", [
    ["parallel=fsdp", "mesh.dp_shard=2"],
    ["parallel=tp_sp", "mesh.tp=2"],  # sequence parallel: the block's share from two blocks less one
    ["parallel=pp_cp", "mesh.pp=4", "mesh.cp=2"],  # first, middle and last stages of two blocks
    ["parallel=3d", "mesh.pp=2", "mesh.dp_shard=2", "mesh.tp=2", "train.activation_checkpointing=full"],
], ids=["fsdp", "tp_sp", "pp_cp", "3d_ac"])
def test_a_stage_from_its_first_block_and_one_blocks_share_equals_building_every_block(overrides):
    from nanodist.tools import dryrun

    cfg, dims, config = nano_layout(*overrides)
    rows = [dryrun.micro_batch(cfg, dims)]
    with dryrun.fake_process_group(0, dims.world_size):
        mesh = dims.build_mesh("cpu")
        for pp_rank in range(dims.pp):
            for spec in dryrun.stage_specs(cfg, dims, config, pp_rank):
                stage, layers, first, last = spec
                every_block = dryrun.measure_stage(cfg, dims, mesh, config, layers, first, last, rows)
                assert dryrun.stage_figures(cfg, dims, mesh, config, spec, rows, {}) == {"stage": stage, **every_block}


@pytest.mark.parametrize("strategy, mesh", [("pp_cp", ["mesh.pp=2", "mesh.cp=4"]), ("fsdp_cp", ["mesh.dp_shard=2", "mesh.cp=4"])])
def test_long_rings_and_many_micro_batch_sizes_are_measured_small_and_extrapolated_exactly(monkeypatch, strategy, mesh):
    """A cp ring of 4 from rings of 1 and 2 steps, micro-batches of 4 and 8 rows from 2 and 3: the same
    figures, to the byte, as running them all."""
    from nanodist.tools import dryrun

    cfg, dims, config = nano_layout(f"parallel={strategy}", *mesh)
    rows = [1, 2, 4, 8]

    def positions() -> list[dict]:
        with dryrun.fake_process_group(0, dims.world_size):
            device_mesh = dims.build_mesh("cpu")
            return [dryrun.estimate_position(cfg, dims, device_mesh, config, r, rows) for r in range(dims.pp)]

    extrapolated = positions()
    monkeypatch.setattr(dryrun, "FULL_RING_UP_TO", 4)
    monkeypatch.setattr(dryrun, "MEASURED_SIZES_UP_TO", 4)
    assert extrapolated == positions()
    assert all(p["collectives"][8] != p["collectives"][1] for p in extrapolated), "the ring's exchanges grow with the rows"
