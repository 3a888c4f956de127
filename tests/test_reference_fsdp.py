"""nanodist's own FSDP (nanodist.parallel.reference.fsdp) against one process, against its own memory
promise, and against torch's FSDP2 through a checkpoint.

The training tests read one spawn of 2 and one of 4 gloo ranks (torch.multiprocessing), in which every
variant of that many ranks (resharding or not, activation checkpointing, accumulation, bf16 weights,
HSDP 2x2, fsdp_tp 2x2 over the reference TP) trains a tiny GPT 5 AdamW steps on fixed batches beside
the same GPT trained whole in one process; loss and gradient norm must agree at every step (rtol
1e-5). The same spawns count state bytes and write checkpoints. The model's dims are uneven (vocab
130, odd flat lengths) so that shards carry padding and checkpoint chunks differ in size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from nanodist.model import GPT, GPTConfig
from nanodist.parallel.ac import apply_ac
from nanodist.parallel.fsdp import apply_fsdp
from nanodist.parallel.parallelize import materialize, set_gradient_sync
from nanodist.parallel.reference.fsdp import apply_reference_fsdp
from nanodist.parallel.reference.tp import apply_reference_tp
from nanodist.parallel.tp import apply_tp
from nanodist.train.checkpoint_state import init_optimizer_state, optimizer_state
from nanodist.train.meters import state_bytes

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=130)
SEED, STEPS, BATCH = 3, 5, 8  # BATCH rows per step: 2 per rank at 4 ranks, 1 per micro-step at accumulation 2
CPU = torch.device("cpu")


def fsdp_cfg(reshard=None, param_dtype=None, reduce_dtype=None):
    return SimpleNamespace(reshard_after_forward=reshard, param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                           cpu_offload=False)


def batches(steps: int = STEPS) -> torch.Tensor:
    """(steps, 2, BATCH, seq): each step's inputs and targets, the same in every process."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, CONFIG.vocab_size, (steps, 2, BATCH, CONFIG.block_size), generator=gen)


def adamw(params, decays) -> torch.optim.AdamW:
    """GPT-2's AdamW: weight decay on matrices only (`decays` tells which of `params` hold them)."""
    params = list(params)
    groups = [{"params": [p for p in params if decays(p) == d], "weight_decay": 0.1 if d else 0.0} for d in (True, False)]
    return torch.optim.AdamW(groups, lr=1e-2, foreach=False)


def one_process(data: torch.Tensor) -> tuple[list[float], list[float]]:
    """Loss and gradient norm at each step of the whole model trained in one process on the whole batches."""
    model = GPT(CONFIG)
    model.init_weights(SEED)
    opt = adamw(model.parameters(), lambda p: p.dim() >= 2)
    losses, norms = [], []
    for x, y in data:
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        losses.append(loss.item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms


def start(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def meshes(replicate: int = 1, tp: int = 1):
    """(dp_shard mesh, dp_replicate mesh or None, tp mesh or None) over every rank: (dp_shard,),
    (dp_replicate, dp_shard) for HSDP or (dp_shard, tp) for fsdp_tp."""
    world = dist.get_world_size()
    if tp > 1:
        mesh = init_device_mesh("cpu", (world // tp, tp), mesh_dim_names=("dp_shard", "tp"))
        return mesh["dp_shard"], None, mesh["tp"]
    if replicate == 1:
        return init_device_mesh("cpu", (world,), mesh_dim_names=("dp_shard",))["dp_shard"], None, None
    mesh = init_device_mesh("cpu", (replicate, world // replicate), mesh_dim_names=("dp_replicate", "dp_shard"))
    return mesh["dp_shard"], mesh["dp_replicate"], None


def reference_model(shard_mesh, replicate_mesh=None, tp_mesh=None, reshard=None, ac="none", param_dtype=None,
                    reduce_dtype=None):
    """A meta GPT through the reference TP (for fsdp_tp), activation checkpointing and the reference FSDP."""
    with torch.device("meta"):
        model = GPT(CONFIG)
    inner = apply_reference_tp(model, tp_mesh, sequence_parallel=False, loss_parallel=False) if tp_mesh else None
    apply_ac(model, ac, 1)
    layout = apply_reference_fsdp(model, shard_mesh, replicate_mesh, fsdp_cfg(reshard, param_dtype, reduce_dtype), CPU, SEED, inner)
    return model, layout, adamw(model.parameters(), layout.decays)


def train_step(model, layout, opt, x, y, accum: int = 1, tp: int = 1) -> tuple[float, float]:
    """One step on this rank's rows of the batch (tp ranks share theirs): the global mean loss and gradient norm."""
    dp, dp_rank = dist.get_world_size() // tp, dist.get_rank() // tp
    rows = x.size(0) // dp
    x, y = x[dp_rank * rows:(dp_rank + 1) * rows], y[dp_rank * rows:(dp_rank + 1) * rows]
    loss = torch.zeros(())
    for i, (xs, ys) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
        set_gradient_sync([model], i == accum - 1)
        micro = F.cross_entropy(model(xs).flatten(0, 1), ys.flatten()) / accum
        micro.backward()
        loss += micro.detach()
    dist.all_reduce(loss)
    square = torch.zeros(())
    for p in model.parameters():
        partial = p.grad.float().pow(2).sum()
        partial = partial.full_tensor() if isinstance(partial, DTensor) else partial  # native FSDP2's grads
        for group in layout.norm_groups(p):
            dist.all_reduce(partial, group=group)
        square += partial
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item() / dist.get_world_size(), math.sqrt(square.item())


@dataclass(frozen=True)
class Variant:
    ranks: int
    replicate: int = 1  # dp_replicate: HSDP when > 1
    reshard: Optional[bool] = None  # parallel.fsdp.reshard_after_forward
    ac: str = "none"  # train.activation_checkpointing
    accum: int = 1  # train.grad_accum
    param_dtype: Optional[str] = None  # parallel.fsdp.param_dtype
    reduce_dtype: Optional[str] = None  # parallel.fsdp.reduce_dtype
    tp: int = 1  # fsdp_tp when > 1: the reference TP inside
    rtol: float = 1e-5


VARIANTS = {
    "fsdp2": Variant(2),
    "fsdp2-no-reshard": Variant(2, reshard=False),
    "fsdp2-ac": Variant(2, ac="full"),
    "fsdp2-accum2": Variant(2, accum=2),
    "fsdp2-no-reshard-ac-accum2": Variant(2, reshard=False, ac="full", accum=2),
    # bf16 weights in forward and backward, or bf16 gradient reductions: near one process's fp32 run, not equal to it.
    "fsdp2-bf16-params": Variant(2, param_dtype="bfloat16", rtol=2e-2),
    "fsdp2-bf16-reduce": Variant(2, reduce_dtype="bfloat16", rtol=2e-2),
    "fsdp4": Variant(4),
    "hsdp2x2-accum2": Variant(4, replicate=2, accum=2),
    "fsdp_tp2x2-ac-accum2": Variant(4, tp=2, ac="full", accum=2),
}


def ranks_worker(rank: int, world: int, out: str) -> None:
    """Every variant of this many ranks trained in turn, and the state bytes after one step; rank 0
    writes what it saw to results.json, the tests judge it."""
    start(rank, world, f"{out}/init")
    data = batches()
    expected_losses, expected_norms = one_process(data)
    results = {"expected": {"losses": expected_losses, "norms": expected_norms}}
    for name, v in VARIANTS.items():
        if v.ranks == world:
            model, layout, opt = reference_model(*meshes(v.replicate, v.tp), v.reshard, v.ac, v.param_dtype, v.reduce_dtype)
            steps = [train_step(model, layout, opt, x, y, v.accum, v.tp) for x, y in data]
            results[name] = {"losses": [loss for loss, _ in steps], "norms": [norm for _, norm in steps],
                             "checkpoint_reads_back": reads_back(layout, f"{out}/{name}")}
    results["bytes"] = gathered_state_bytes(meshes()[0], data[0])
    if rank == 0:
        (Path(out) / "results.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def reads_back(layout, path: str, expected: Optional[dict] = None) -> bool:
    """Whether the layout's checkpoint, loaded whole by one process (as `nanodist.train.checkpoint.load_model`
    does), holds exactly the layout's own weights (and, if given, the `expected` state dict)."""
    dcp.save({"model": layout.model_state()}, checkpoint_id=path)
    ours = {}
    for flat in layout.flats.values():  # each parameter's values straight from the gathered flat shards
        full = flat.gathered_values(flat.shard)
        for entry in flat.entries:
            local = full[entry.offset:entry.offset + entry.numel].view(entry.shape)
            if entry.tp_dim is not None:  # fsdp_tp: this tp rank's part; the whole is its tp group's parts joined
                parts = [torch.empty_like(local) for _ in range(layout.inner.mesh.size())]
                dist.all_gather(parts, local.contiguous(), group=layout.inner.mesh.get_group())
                local = torch.cat(parts, dim=entry.tp_dim)
            ours.update((alias, local) for alias in entry.aliases)
    if dist.get_rank() != 0:
        return True
    whole = GPT(CONFIG).state_dict()
    dcp.load({"model": whole}, checkpoint_id=path, no_dist=True)
    expected = ours if expected is None else expected
    same = whole.keys() == ours.keys() == expected.keys()
    return same and all(torch.equal(whole[k], ours[k]) and torch.equal(ours[k], expected[k]) for k in ours)


def gathered_state_bytes(shard_mesh, batch: torch.Tensor) -> dict:
    """Parameter, gradient and optimizer bytes after one step: one process's, and every rank's here."""
    x, y = batch
    whole = GPT(CONFIG)
    whole.init_weights(SEED)
    whole_opt = adamw(whole.parameters(), lambda p: p.dim() >= 2)
    F.cross_entropy(whole(x).flatten(0, 1), y.flatten()).backward()
    whole_opt.step()
    model, _, opt = reference_model(shard_mesh)
    x, y = x.chunk(dist.get_world_size())[dist.get_rank()], y.chunk(dist.get_world_size())[dist.get_rank()]
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, state_bytes([model], opt))
    return {"one_process": state_bytes([whole], whole_opt), "ranks": ranks}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ranks -> the results.json of that many ranks, spawned once for all the tests that read it."""
    cache = {}

    def run(world: int) -> dict:
        if world not in cache:
            out = tmp_path_factory.mktemp(f"ranks{world}")
            mp.spawn(ranks_worker, args=(world, str(out)), nprocs=world)
            cache[world] = json.loads((out / "results.json").read_text())
        return cache[world]

    return run


@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_fsdp_trains_as_one_process(variant, trained):
    v = VARIANTS[variant]
    results = trained(v.ranks)
    ours, expected = results[variant], results["expected"]
    assert len(ours["losses"]) == STEPS
    for key in ("losses", "norms"):
        for step, (a, b) in enumerate(zip(ours[key], expected[key])):
            assert math.isclose(a, b, rel_tol=v.rtol), (key, step, a, b)
    if v.param_dtype is not None or v.reduce_dtype is not None:
        assert ours["norms"] != expected["norms"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", ["fsdp2", "fsdp4", "hsdp2x2-accum2", "fsdp_tp2x2-ac-accum2"])
def test_a_reference_fsdp_checkpoint_loads_whole_in_one_process(variant, trained):
    assert trained(VARIANTS[variant].ranks)[variant]["checkpoint_reads_back"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [2, 4])
def test_reference_fsdp_holds_a_1_over_n_share_of_parameters_gradients_and_optimizer_state(world, trained):
    measured = trained(world)["bytes"]
    for rank, ours in enumerate(measured["ranks"]):
        for key, one in measured["one_process"].items():
            assert 0 < ours[key] <= 1.05 * one / world, (rank, key, ours[key], one)


def full_tensors(state: dict) -> dict:
    """A (nested) state dict with every DTensor gathered whole, to compare layouts."""
    if isinstance(state, dict):
        return {k: full_tensors(v) for k, v in state.items()}
    return state.full_tensor() if isinstance(state, DTensor) else state


def assert_same_state(a: dict, b: dict) -> None:
    a, b = full_tensors(a), full_tensors(b)
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], dict):
            assert_same_state(a[name], b[name])
        else:
            assert torch.equal(a[name], b[name]), name


def native_model(shard_mesh, tp_mesh=None):
    """torch's FSDP2 (over torch's TP for fsdp_tp), initialised as one process."""
    with torch.device("meta"):
        model = GPT(CONFIG)
    if tp_mesh is not None:
        apply_tp(model, tp_mesh, sequence_parallel=False, loss_parallel=False)
    apply_fsdp(model, shard_mesh, fsdp_cfg())
    materialize(model, CPU, SEED)
    return model, adamw(model.parameters(), lambda p: p.dim() >= 2)


def checkpoint_worker(rank: int, world: int, tp: int, tmp: str) -> None:
    """Native FSDP2 saves, the reference loads (equal weights and moments); then the other way round."""
    start(rank, world, f"{tmp}/init")
    shard_mesh, _, tp_mesh = meshes(tp=tp)
    data = batches(3)
    native, native_opt = native_model(shard_mesh, tp_mesh)
    for x, y in data[:2]:
        train_step(native, SimpleNamespace(norm_groups=lambda p: ()), native_opt, x, y, tp=tp)
    native_state = {"model": get_model_state_dict(native), "optim": optimizer_state([native], native_opt)}
    dcp.save(native_state, checkpoint_id=f"{tmp}/native")

    model, layout, opt = reference_model(shard_mesh, None, tp_mesh)
    init_optimizer_state(opt)
    loaded = {"model": layout.model_state(), "optim": layout.optim_state(opt)}
    dcp.load(loaded, checkpoint_id=f"{tmp}/native")
    layout.load_state(loaded["model"], loaded["optim"], opt)
    assert_same_state({"model": layout.model_state(), "optim": layout.optim_state(opt)}, native_state)

    train_step(model, layout, opt, *data[2], tp=tp)
    ours = {"model": layout.model_state(), "optim": layout.optim_state(opt)}
    dcp.save(ours, checkpoint_id=f"{tmp}/reference")
    native, native_opt = native_model(shard_mesh, tp_mesh)
    init_optimizer_state(native_opt)
    back = {"model": get_model_state_dict(native), "optim": optimizer_state([native], native_opt)}
    dcp.load(back, checkpoint_id=f"{tmp}/reference")
    set_model_state_dict(native, back["model"])
    assert_same_state({"model": get_model_state_dict(native), "optim": optimizer_state([native], native_opt)}, ours)
    dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.parametrize("world,tp", [(2, 1), (4, 2)], ids=["fsdp2", "fsdp_tp2x2"])
def test_a_checkpoint_moves_between_native_and_reference_fsdp(world, tp, tmp_path):
    mp.spawn(checkpoint_worker, args=(world, tp, str(tmp_path)), nprocs=world)
