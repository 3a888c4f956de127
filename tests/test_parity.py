"""Every parallel strategy trains the same model as one process: per-step loss, grad norm and val loss, fp32, gloo.

One table, one test: each row is a strategy and mesh, run for real through launch.py (spawned
gloo ranks on CPU) on the same global batch, and compared step by step with the single-process
run of the same model. Pipeline rows run twice: tied (the embedding on the first stage and the
head's copy on the last, their gradients summed) and untied, each against the single-process run
of the same model. Rows of DDP, FSDP and TP layouts run again with nanodist's own implementations
(`parallel.implementation=reference`), against one process and against the native row. Tolerance rtol 1e-5; measured differences are ~1e-7 (fp32 reduction order only),
~1e-6 in the context-parallel rows (attention summed block by block, not by SDPA's fused kernel).
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
NON_PIPELINED = [
    ("ddp(2)", ["parallel=ddp", "mesh.dp_replicate=2"], TIED),
    ("fsdp(2)", ["parallel=fsdp", "mesh.dp_shard=2"], TIED),
    ("hsdp(2x2)", ["parallel=hsdp", "mesh=2x2"], TIED),
    ("fsdp(2)+accum(2)", ["parallel=fsdp", "mesh.dp_shard=2", "train.grad_accum=2"], TIED),
    # The head fused into a chunked loss (100 of 256 tokens per chunk), against the plain loss of one process.
    ("fsdp(2)+fused loss", ["parallel=fsdp", "mesh.dp_shard=2", "train.fused_loss_chunk=100"], TIED),
    ("tp(2)", ["parallel=tp", "mesh.tp=2"], TIED),
    ("tp_sp(2)", ["parallel=tp_sp", "mesh.tp=2"], TIED),
    ("fsdp_tp(2x2)", ["parallel=fsdp_tp", "mesh=2x2"], TIED),
    ("ddp_tp(2x2)", ["parallel=ddp_tp", "mesh=2x2"], TIED),
    ("zero1(2)", ["parallel=zero1", "mesh=ranks2"], TIED),
    ("model_parallel(2)", ["parallel=model_parallel", "mesh=ranks2"], TIED),
]
# Rows that also run with parallel.implementation=reference (nanodist's own DDP, FSDP, TP), against one
# process and against the native row (test_reference_matches_its_native_twin), plus two reference-only ones.
REFERENCE = [row[:2] for row in NON_PIPELINED if row[0] in (
    "ddp(2)", "fsdp(2)", "hsdp(2x2)", "fsdp(2)+accum(2)", "tp(2)", "tp_sp(2)", "fsdp_tp(2x2)", "ddp_tp(2x2)", "zero1(2)")] + [
    ("ddp(2)+accum(2)", ["parallel=ddp", "mesh.dp_replicate=2", "train.grad_accum=2"]),
    ("fsdp(2)+checkpointing", ["parallel=fsdp", "mesh.dp_shard=2", "train.activation_checkpointing=full"]),
]
REFERENCE_IMPL = "parallel.implementation=reference"
# (id, strategy overrides): each runs with both context-parallel attention methods, tied.
CONTEXT_PARALLEL = [
    ("cp(2)", ["parallel=cp", "mesh.cp=2"]),
    ("cp(4)", ["parallel=cp", "mesh.cp=4"]),
    ("fsdp_cp(2x2)", ["parallel=fsdp_cp", "mesh=2x2"]),
    ("fsdp_tp_cp(2x2x2)", ["parallel=fsdp_tp_cp", "mesh=2x2x2"]),
    ("pp_cp(2x2)", ["parallel=pp_cp", "mesh=2x2"]),
]
# (id, strategy overrides[, marks]): each runs tied and untied.
# nano has 4 layers: pp=2 with 2 stages per rank gives one layer per virtual stage.
PIPELINED = [
    ("pp_gpipe(2)", ["parallel=pp_gpipe", "mesh.pp=2"]),
    ("pp_1f1b(2)", ["parallel=pp_1f1b", "mesh.pp=2"]),
    ("pp_1f1b(2)+accum(2)", ["parallel=pp_1f1b", "mesh.pp=2", "train.grad_accum=2"]),
    ("pp_interleaved(2x2 stages)", ["parallel=pp_interleaved", "mesh.pp=2"]),
    ("pp_looped_bfs(2x2 stages)", ["parallel=pp_looped_bfs", "mesh.pp=2"]),
    ("pp_interleaved_zb(2x2 stages)", ["parallel=pp_interleaved_zb", "mesh.pp=2"]),
    ("pp_zbv(2, V)", ["parallel=pp_zbv", "mesh.pp=2"]),
    ("pp_dualpipev(2, V)", ["parallel=pp_dualpipev", "mesh.pp=2"], NO_DUALPIPEV),
    ("pp_fsdp(2x2)", ["parallel=pp_fsdp", "mesh=2x2"]),
    ("pp_fsdp(2x2)+accum(2)", ["parallel=pp_fsdp", "mesh=2x2", "train.grad_accum=2"]),
    ("pp_tp(2x2)", ["parallel=pp_tp", "mesh=2x2"]),
    ("3d(2x2x2)", ["parallel=3d", "mesh=2x2x2"]),
]
STRATEGIES = NON_PIPELINED + [
    (f"{name} {tie}", overrides, model, *marks)
    for name, overrides, *marks in PIPELINED
    for tie, model in (("tied", TIED), ("untied", UNTIED))
] + [
    (f"{name} {method}", [*overrides, f"parallel.cp.method={method}"], TIED)
    for name, overrides in CONTEXT_PARALLEL
    for method in ("ring", "allgather")
] + [(f"{name} reference", [*overrides, REFERENCE_IMPL], TIED) for name, overrides in REFERENCE]


def twins(name: str) -> tuple:
    """A reference row, its native row and their comparison run on one xdist worker, sharing runs."""
    base = name.removesuffix(" reference")
    return (pytest.mark.xdist_group(f"parity {base}"),) if base in dict(REFERENCE) else ()


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    """Each run's metrics, made once per worker when a test first asks for it: the single-process
    reference of each model variant, and a reference row's runs for its twin comparison."""
    cache: dict = {}

    def curve(*overrides: str) -> list[dict]:
        if overrides not in cache:
            run_dir = tmp_path_factory.mktemp("run")
            launch(run_dir, *COMMON, *overrides, timeout=600)
            cache[overrides] = read_metrics(run_dir)
        return cache[overrides]

    return curve


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "overrides,model_overrides",
    [pytest.param(row[1], row[2], id=row[0], marks=[*row[3:], *twins(row[0])]) for row in STRATEGIES],
)
def test_strategy_matches_single_process(overrides, model_overrides, curves):
    assert_same_curves(curves(*model_overrides, *overrides), curves(*model_overrides, "parallel=single"))


@pytest.mark.multiprocess
@pytest.mark.parametrize("overrides", [pytest.param(o, id=name, marks=twins(name)) for name, o in REFERENCE])
def test_reference_matches_its_native_twin(overrides, curves):
    assert_same_curves(curves(*overrides, REFERENCE_IMPL), curves(*overrides))


def assert_same_curves(curve: list[dict], reference: list[dict]) -> None:
    """Every step's loss and grad norm, and every evaluation's val loss, equal at rtol 1e-5."""
    assert [r["step"] for r in curve] == [r["step"] for r in reference] == list(range(STEPS))
    assert [("val_loss" in r) for r in curve] == [("val_loss" in r) for r in reference]
    for ours, theirs in zip(curve, reference):
        for key in {"loss", "grad_norm", "val_loss"} & theirs.keys():
            assert ours[key] == pytest.approx(theirs[key], rel=RTOL), f"{key} at step {ours['step']}"
