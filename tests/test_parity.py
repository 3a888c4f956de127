"""Every parallel strategy trains the same model as one process: per-step loss and grad norm, fp32, gloo.

One table, one test: each row is a strategy and mesh, run for real through launch.py (spawned
gloo ranks on CPU) on the same global batch, and compared step by step with the single-process run.
"""

from __future__ import annotations

import pytest

from conftest import NANO, launch, read_metrics

STEPS = 6
COMMON = [*NANO, f"train.max_steps={STEPS}", "train.batch_size=8", "train.log_interval=1", "train.eval_interval=0",
          "optim.warmup_steps=2", "optim.lr=3e-3", "train.dtype=float32"]
RTOL = 1e-5

# (id, overrides): each must reproduce the single-process curve.
STRATEGIES = [
    ("ddp(2)", ["parallel=ddp", "mesh.dp_replicate=2"]),
    ("fsdp(2)", ["parallel=fsdp", "mesh.dp_shard=2"]),
    ("hsdp(2x2)", ["parallel=hsdp", "mesh=2x2"]),
    ("fsdp(2)+accum(2)", ["parallel=fsdp", "mesh.dp_shard=2", "train.grad_accum=2"]),
    ("tp(2)", ["parallel=tp", "mesh.tp=2"]),
    ("tp_sp(2)", ["parallel=tp_sp", "mesh.tp=2"]),
    ("fsdp_tp(2x2)", ["parallel=fsdp_tp", "mesh=2x2"]),
]


@pytest.fixture(scope="module")
def single_process_curve(tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("single")
    launch(run_dir, *COMMON, "parallel=single")
    return read_metrics(run_dir)


@pytest.mark.multiprocess
@pytest.mark.parametrize("overrides", [row[1] for row in STRATEGIES], ids=[row[0] for row in STRATEGIES])
def test_strategy_matches_single_process(overrides, single_process_curve, tmp_path):
    launch(tmp_path, *COMMON, *overrides)
    curve = read_metrics(tmp_path)
    assert [r["step"] for r in curve] == [r["step"] for r in single_process_curve] == list(range(STEPS))
    for ours, reference in zip(curve, single_process_curve):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=RTOL), f"loss at step {ours['step']}"
        assert ours["grad_norm"] == pytest.approx(reference["grad_norm"], rel=RTOL), f"grad norm at step {ours['step']}"
