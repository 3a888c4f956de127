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
