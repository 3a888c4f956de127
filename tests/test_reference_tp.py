"""nanodist's own tensor parallelism (nanodist.parallel.reference.tp) against one process and against torch's.

Every check runs on the same 2 gloo ranks, this module's children (torch.multiprocessing), started
once for all of them (`outcomes`): each rank runs every case of `CASES` and records its traceback or
None, and each test reads its case's outcome on both ranks. Comparisons are made on gathered, whole
tensors, so both ranks pass or fail a case together and stay in step for the next. A rank builds the
reference TP layout of a tiny GPT and, beside it, the whole model as one process would, on the same
batches: the losses, every parameter's gradient (the shards gathered), the grad norm summed over
`norm_groups` and the losses of a few AdamW steps must agree (rtol 1e-5), also under activation
checkpointing and gradient accumulation (SP's partial LayerNorm gradients are summed in backward,
once per micro-batch). The vocab-parallel
cross-entropy is checked alone against nanodist's loss, padding included, and a checkpoint moves
between the reference layout and the native DTensor one (`nanodist.parallel.tp.apply_tp`).
"""

from __future__ import annotations

import datetime
import json
import traceback
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from nanodist.config import OptimConfig
from nanodist.model import GPT, GPTConfig, cross_entropy
from nanodist.parallel.ac import apply_ac
from nanodist.parallel.parallelize import materialize
from nanodist.parallel.reference.tp import apply_reference_tp
from nanodist.parallel.reference.tp_layers import all_gather, own_slice
from nanodist.parallel.reference.tp_loss import vocab_parallel_cross_entropy
from nanodist.parallel.tp import apply_tp
from nanodist.train.checkpoint_state import init_optimizer_state, optimizer_state
from nanodist.train.optim import build_optimizer

TP = 2
TIGHT = dict(rtol=1e-5, atol=1e-7)
OPTIM = OptimConfig(lr=1e-2, fused=False)


def config(padded: bool = False, tied: bool = True) -> GPTConfig:
    """2 layers, 4 heads, 32 wide; `padded`: a 60-token vocabulary padded to 64."""
    return GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=64, tie_embeddings=tied,
                     true_vocab_size=60 if padded else None)


def batch(cfg: GPTConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, cfg.true_vocab_size or cfg.vocab_size, (2, cfg.block_size + 1),
                           generator=torch.Generator().manual_seed(step))
    return tokens[:, :-1], tokens[:, 1:]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[dict]:
    """Each rank's {case: traceback or None}, from one run of every case on 2 ranks."""
    root = tmp_path_factory.mktemp("reference_tp")
    mp.spawn(_rank_main, args=(str(root),), nprocs=TP)
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(TP)]


def _rank_main(rank: int, root: str) -> None:
    torch.set_num_threads(1)
    # A case that leaves one rank waiting in a collective times out instead of hanging the suite.
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=TP,
                            timeout=datetime.timedelta(seconds=120))
    mesh, results = init_device_mesh("cpu", (TP,), mesh_dim_names=("tp",)), {}
    for case, (worker, args) in CASES.items():
        try:
            worker(mesh, *args, root=f"{root}/{case}")
            results[case] = None
        except Exception:  # recorded for the case's test to report
            results[case] = traceback.format_exc()
    Path(root, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def assert_passed(outcomes: list[dict], case: str) -> None:
    failures = [f"rank {r}:\n{o[case]}" for r, o in enumerate(outcomes) if o[case] is not None]
    assert not failures, "\n".join(failures)


def reference_model(cfg: GPTConfig, mesh, sequence_parallel: bool, loss_parallel: bool, seed: int = 0):
    with torch.device("meta"):
        model = GPT(cfg)
    layout = apply_reference_tp(model, mesh, sequence_parallel, loss_parallel)
    layout.materialize(torch.device("cpu"), seed)
    return model, layout


def whole(layout, name: str, local: torch.Tensor) -> torch.Tensor:
    """The full tensor of parameter `name` from this rank's shard (or grad) of it."""
    dim = layout.tp_dim(name)
    return local if dim is None else all_gather(local, dim, layout.group)


def grad_norm(layout, params) -> torch.Tensor:
    """The global grad norm as the clip would sum it: each shard's square over its `norm_groups`."""
    total = torch.zeros(())
    for p in params:
        square = p.grad.pow(2).sum()
        for group in layout.norm_groups(p):
            dist.all_reduce(square, group=group)
        total += square
    return total.sqrt()


# ---- training: the reference layout against one process ----

class Mode(NamedTuple):
    sequence_parallel: bool
    loss_parallel: bool
    padded: bool = False  # a 60-token vocabulary padded to 64
    tied: bool = True
    ac: str = "none"  # activation checkpointing
    accum: int = 1  # micro-batches per step


MODES = {
    "tp": Mode(False, False),
    "tp_sp": Mode(True, False),
    "tp_sp_lp": Mode(True, True),
    "tp_lp_padded": Mode(False, True, padded=True),
    "tp_sp_lp_padded": Mode(True, True, padded=True),
    "tp_sp_padded_untied": Mode(True, False, padded=True, tied=False),
    "tp_sp_lp_full_ac": Mode(True, True, ac="full"),
    "tp_sp_accum2": Mode(True, False, accum=2),
}


def step_loss(model, loss_fn, x: torch.Tensor, y: torch.Tensor, accum: int) -> torch.Tensor:
    """The step's mean loss, its gradients accumulated over `accum` micro-batches (rows of the batch)."""
    total = torch.zeros(())
    for x_micro, y_micro in zip(x.chunk(accum), y.chunk(accum)):
        loss = loss_fn(model(x_micro), y_micro) / accum
        loss.backward()
        total += loss.detach()
    return total


def training_worker(mesh, mode: Mode, root: str) -> None:
    cfg = config(mode.padded, mode.tied)
    model, layout = reference_model(cfg, mesh, mode.sequence_parallel, mode.loss_parallel)
    apply_ac(model, mode.ac, every=1)
    one = GPT(cfg)
    one.init_weights(0)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in one.named_parameters()]
    one_loss_fn = lambda logits, y: cross_entropy(logits, y, cfg.true_vocab_size)  # noqa: E731
    opt, one_opt = build_optimizer(model.parameters(), OPTIM), build_optimizer(one.parameters(), OPTIM)
    for step in range(4):
        x, y = batch(cfg, step)
        loss = step_loss(model, layout.loss_fn or one_loss_fn, x, y, mode.accum)
        torch.testing.assert_close(loss, step_loss(one, one_loss_fn, x, y, 1), **TIGHT)
        if step == 0:
            params = dict(model.named_parameters())
            for name, p in one.named_parameters():
                torch.testing.assert_close(whole(layout, name, params[name].grad), p.grad, **TIGHT, msg=name)
            torch.testing.assert_close(grad_norm(layout, model.parameters()),
                                       torch.nn.utils.get_total_norm([p.grad for p in one.parameters()]), **TIGHT)
        for o in (opt, one_opt):
            o.step()
            o.zero_grad()


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_training_matches_one_process(mode, outcomes):
    assert_passed(outcomes, f"training[{mode}]")


def logits_worker(mesh, sequence_parallel: bool, root: str) -> None:
    cfg = config(padded=True)
    model, layout = reference_model(cfg, mesh, sequence_parallel, loss_parallel=True)
    one = GPT(cfg)
    one.init_weights(0)
    x, _ = batch(cfg, 0)
    with torch.no_grad():
        local = model(x)
        assert local.shape[-1] == cfg.vocab_size // TP
        torch.testing.assert_close(layout.full_logits(local), one(x), **TIGHT)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["tp_lp", "tp_sp_lp"])
def test_full_logits_under_loss_parallelism_are_one_process_logits(mode, outcomes):
    assert_passed(outcomes, f"full_logits[{mode}]")


# ---- the vocab-parallel cross-entropy alone ----

def loss_worker(mesh, true_vocab_size, root: str) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(2, 8, 64) * 3).requires_grad_()
    targets = torch.randint(0, true_vocab_size or 64, (2, 8))
    expected = cross_entropy(logits, targets, true_vocab_size)
    expected.backward()
    group = mesh.get_group()
    local = own_slice(logits.detach(), -1, group).requires_grad_()
    loss = vocab_parallel_cross_entropy(local, targets, group, true_vocab_size)
    loss.backward()
    torch.testing.assert_close(loss, expected.detach(), **TIGHT)
    grad = all_gather(local.grad, -1, group)
    torch.testing.assert_close(grad, logits.grad, **TIGHT)
    if true_vocab_size is not None:
        assert torch.all(grad[..., true_vocab_size:] == 0)


VOCABS = {"unpadded": None, "padded": 60, "rank1_all_padding": 30}  # id: true_vocab_size of 64 logits


@pytest.mark.multiprocess
@pytest.mark.parametrize("vocab", VOCABS)
def test_vocab_parallel_cross_entropy_equals_cross_entropy(vocab, outcomes):
    assert_passed(outcomes, f"cross_entropy[{vocab}]")


# ---- checkpoints between the reference and the native DTensor layout ----

def train_one_step(model, optimizer, loss_fn, cfg: GPTConfig, step: int) -> None:
    x, y = batch(cfg, step)
    loss_fn(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad()


def native_model(cfg: GPTConfig, mesh, sequence_parallel: bool, seed: int):
    with torch.device("meta"):
        model = GPT(cfg)
    apply_tp(model, mesh, sequence_parallel, loss_parallel=False)
    materialize(model, torch.device("cpu"), seed)
    return model, build_optimizer(model.parameters(), OPTIM)


def full(t: torch.Tensor) -> torch.Tensor:
    """A native layout's tensor whole: a DTensor gathered, a plain one (a LayerNorm's under plain TP) as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def assert_same_state(layout, optimizer, native, native_opt) -> None:
    """Every weight and AdamW moment of the reference layout equals the native layout's."""
    names = {p: n for n, p in native.named_parameters()}
    native_state = {native.source_name(names[p]): s for p, s in native_opt.state.items()}
    for name, p in layout.model.named_parameters():
        native_p = dict(native.named_parameters())[name]
        torch.testing.assert_close(whole(layout, name, p.detach()), full(native_p), rtol=0, atol=0, msg=name)
        state, expected = optimizer.state[p], native_state[name]
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(whole(layout, name, state[key]), full(expected[key]), rtol=0, atol=0)
        assert float(state["step"]) == float(expected["step"])


def checkpoint_worker(mesh, sequence_parallel: bool, root: str) -> None:
    cfg = config(padded=True)
    loss_fn = lambda logits, y: cross_entropy(logits, y, cfg.true_vocab_size)  # noqa: E731
    model, layout = reference_model(cfg, mesh, sequence_parallel, loss_parallel=False, seed=0)
    optimizer = build_optimizer(model.parameters(), OPTIM)
    train_one_step(model, optimizer, loss_fn, cfg, 0)
    dcp.save({"model": layout.model_state(), "optim": layout.optim_state(optimizer)}, checkpoint_id=f"{root}/ref")

    native, native_opt = native_model(cfg, mesh, sequence_parallel, seed=1)
    init_optimizer_state(native_opt)
    native_sd = get_model_state_dict(native)
    dcp.load({"model": native_sd, "optim": optimizer_state([native], native_opt)}, checkpoint_id=f"{root}/ref")
    set_model_state_dict(native, native_sd)
    assert_same_state(layout, optimizer, native, native_opt)

    train_one_step(native, native_opt, loss_fn, cfg, 1)
    dcp.save({"model": get_model_state_dict(native), "optim": optimizer_state([native], native_opt)},
             checkpoint_id=f"{root}/native")
    model, layout = reference_model(cfg, mesh, sequence_parallel, loss_parallel=False, seed=2)
    optimizer = build_optimizer(model.parameters(), OPTIM)
    init_optimizer_state(optimizer)
    dcp.load({"model": layout.model_state(), "optim": layout.optim_state(optimizer)}, checkpoint_id=f"{root}/native")
    assert_same_state(layout, optimizer, native, native_opt)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["tp", "tp_sp"])
def test_checkpoint_moves_between_reference_and_native_tp(mode, outcomes):
    assert_passed(outcomes, f"checkpoint[{mode}]")


CASES = {  # case: (worker, its arguments after the mesh), all run by `outcomes` on the same 2 ranks
    **{f"training[{name}]": (training_worker, (mode,)) for name, mode in MODES.items()},
    "full_logits[tp_lp]": (logits_worker, (False,)),
    "full_logits[tp_sp_lp]": (logits_worker, (True,)),
    **{f"cross_entropy[{vocab}]": (loss_worker, (size,)) for vocab, size in VOCABS.items()},
    "checkpoint[tp]": (checkpoint_worker, (False,)),
    "checkpoint[tp_sp]": (checkpoint_worker, (True,)),
}
