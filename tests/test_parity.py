"""Every parallel strategy trains the same model as one process: per-step loss, grad norm and val loss, fp32, gloo.

One table, one test: each row is a strategy and mesh, run for real through launch.py (spawned
gloo ranks on CPU) on the same global batch, and compared step by step with the single-process
run of the same model. Pipeline rows train an untied model (a tie would span the first and last
stage, which nanodist refuses), so their reference is the untied single-process run.
Tolerance rtol 1e-5; measured differences are ~1e-7 (fp32 reduction order only).
"""

from __future__ import annotations

import pytest
import torch.distributed.pipelining as pipelining
from conftest import NANO, launch, read_metrics

STEPS = 6
COMMON = [*NANO, f"train.max_steps={STEPS}", "train.batch_size=8", "train.log_interval=1", "train.eval_interval=3",
          "train.eval_iters=1", "optim.warmup_steps=2", "optim.lr=3e-3", "train.dtype=float32"]
RTOL = 1e-5
TIED, UNTIED = (), ("model.tie_embeddings=false",)
NO_DUALPIPEV = pytest.mark.skipif(not hasattr(pipelining, "ScheduleDualPipeV"), reason="this torch has no DualPipeV")

# (id, strategy overrides, model overrides shared with the single-process reference[, marks])
STRATEGIES = [
    ("ddp(2)", ["parallel=ddp", "mesh.dp_replicate=2"], TIED),
    ("fsdp(2)", ["parallel=fsdp", "mesh.dp_shard=2"], TIED),
    ("hsdp(2x2)", ["parallel=hsdp", "mesh=2x2"], TIED),
    ("fsdp(2)+accum(2)", ["parallel=fsdp", "mesh.dp_shard=2", "train.grad_accum=2"], TIED),
    ("tp(2)", ["parallel=tp", "mesh.tp=2"], TIED),
    ("tp_sp(2)", ["parallel=tp_sp", "mesh.tp=2"], TIED),
    ("fsdp_tp(2x2)", ["parallel=fsdp_tp", "mesh=2x2"], TIED),
    # nano has 4 layers: pp=2 with 2 stages per rank gives one layer per virtual stage.
    ("pp_gpipe(2)", ["parallel=pp_gpipe", "mesh.pp=2"], UNTIED),
    ("pp_1f1b(2)", ["parallel=pp_1f1b", "mesh.pp=2"], UNTIED),
    ("pp_1f1b(2)+accum(2)", ["parallel=pp_1f1b", "mesh.pp=2", "train.grad_accum=2"], UNTIED),
    ("pp_interleaved(2x2 stages)", ["parallel=pp_interleaved", "mesh.pp=2"], UNTIED),
    ("pp_looped_bfs(2x2 stages)", ["parallel=pp_looped_bfs", "mesh.pp=2"], UNTIED),
    ("pp_interleaved_zb(2x2 stages)", ["parallel=pp_interleaved_zb", "mesh.pp=2"], UNTIED),
    ("pp_zbv(2, V)", ["parallel=pp_zbv", "mesh.pp=2"], UNTIED),
    ("pp_dualpipev(2, V)", ["parallel=pp_dualpipev", "mesh.pp=2"], UNTIED, NO_DUALPIPEV),
    ("pp_fsdp(2x2)", ["parallel=pp_fsdp", "mesh=2x2"], UNTIED),
    ("pp_tp(2x2)", ["parallel=pp_tp", "mesh=2x2"], UNTIED),
    ("3d(2x2x2)", ["parallel=3d", "mesh=2x2x2"], UNTIED),
]


@pytest.fixture(scope="module")
def single_process_curves(tmp_path_factory) -> dict:
    """The reference run for each model variant, made once when a row first asks for it."""
    curves: dict = {}

    def curve(model_overrides: tuple) -> list[dict]:
        if model_overrides not in curves:
            run_dir = tmp_path_factory.mktemp("single")
            launch(run_dir, *COMMON, *model_overrides, "parallel=single")
            curves[model_overrides] = read_metrics(run_dir)
        return curves[model_overrides]

    return curve


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "overrides,model_overrides",
    [pytest.param(row[1], row[2], id=row[0], marks=row[3:]) for row in STRATEGIES],
)
def test_strategy_matches_single_process(overrides, model_overrides, single_process_curves, tmp_path):
    launch(tmp_path, *COMMON, *model_overrides, *overrides, timeout=600)
    curve, reference = read_metrics(tmp_path), single_process_curves(model_overrides)
    assert [r["step"] for r in curve] == [r["step"] for r in reference] == list(range(STEPS))
    assert [("val_loss" in r) for r in curve] == [("val_loss" in r) for r in reference]
    for ours, theirs in zip(curve, reference):
        for key in {"loss", "grad_norm", "val_loss"} & theirs.keys():
            assert ours[key] == pytest.approx(theirs[key], rel=RTOL), f"{key} at step {ours['step']}"
