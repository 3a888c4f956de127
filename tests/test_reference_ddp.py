"""nanodist's own DDP and ZeRO-1 (nanodist.parallel.reference.ddp, .zero1) against one process.

The multi-process tests share one start of 2 gloo ranks in this process's children
(torch.multiprocessing): starting ranks costs seconds, a check a fraction of one. Every check
(`CHECKS`) runs on a tiny GPT, each rank holding half of every batch's rows, and compares what the
ranks end with (gradients, weights, optimizer bytes) with one process that sees the whole batch;
each test asserts its own check passed on both ranks. Training through launch.py under these
layouts is tests/test_parity.py's.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from nanodist.model import GPT, GPTConfig
from nanodist.parallel.reference.ddp import MiB, apply_reference_ddp, bucket_params
from nanodist.parallel.reference.zero1 import ShardedOptimizer, partition_by_bytes
from nanodist.train.optim import build_optimizer

# One xdist worker runs the whole module, so the ranks start once (the `failures` fixture) under `make test`.
pytestmark = pytest.mark.xdist_group("reference_ddp")
WORLD = 2
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32)
NANO = GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=32, vocab_size=128)  # conf/model/nano.yaml
OPTIM = SimpleNamespace(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, fused=False)
# 4 KiB buckets cut TINY into several, each ending at a whole linear layer (never between a
# LayerNorm's weight and bias, whose hooks fire in either order).
SMALL_BUCKET_MB = 4096 / MiB


def gpt(config: GPTConfig = TINY, seed: int = 0) -> GPT:
    model = GPT(config)
    model.init_weights(seed)
    return model


def batch(rows: int, step: int = 0, config: GPTConfig = TINY) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, config.vocab_size, (rows, config.block_size + 1), generator=torch.Generator().manual_seed(step))
    return tokens[:, :-1], tokens[:, 1:]


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def my_rows(tensors: tuple[torch.Tensor, ...], rank: int) -> tuple[torch.Tensor, ...]:
    """This rank's half of a batch's rows."""
    return tuple(t.chunk(WORLD)[rank] for t in tensors)


def assert_grads_equal(model: nn.Module, reference: nn.Module) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8, msg=lambda m: f"{name}: {m}")


# ---- one process: how the parameters are cut ----

def test_buckets_hold_parameters_last_registered_first_each_closed_at_bucket_mb():
    params = [nn.Parameter(torch.zeros(n)) for n in (256, 256, 512, 128, 128)]  # 1, 1, 2, 0.5, 0.5 KiB
    index = {id(p): i for i, p in enumerate(params)}
    buckets = bucket_params(params, 1024)
    assert [[index[id(p)] for p in b.params] for b in buckets] == [[4, 3], [2], [1], [0]]


def test_each_bucket_is_one_flat_buffer_of_its_parameters():
    params = [nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(5))]
    [bucket] = bucket_params(params, MiB)
    assert bucket.flat.numel() == 11 and [v.numel() for v in bucket.views] == [5, 6]


def test_zero1_partition_is_greedy_by_bytes_and_the_same_on_every_call():
    params = [nn.Parameter(torch.zeros(n)) for n in (10, 40, 30, 20)]
    owners = partition_by_bytes(params, 2)
    assert owners == [0, 0, 1, 1] and partition_by_bytes(params, 2) == owners  # 40+10 | 30+20


def test_zero1_refuses_more_ranks_than_parameters():
    with pytest.raises(ValueError, match="at least as many parameters"):
        partition_by_bytes([nn.Parameter(torch.zeros(1))], 2)


# ---- two gloo ranks: the checks, then one test each ----

def check_broadcast(rank: int) -> None:
    model = gpt(seed=rank)  # each rank initialises differently
    apply_reference_ddp(model, dist.group.WORLD, bucket_mb=1)
    for p, q in zip(model.parameters(), gpt(seed=0).parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def check_gradients(rank: int, overlap: bool) -> None:
    x, y = batch(4)
    reference = gpt()
    mean_loss(reference, x, y).backward()
    model = gpt()
    apply_reference_ddp(model, dist.group.WORLD, bucket_mb=SMALL_BUCKET_MB, overlap=overlap)
    mean_loss(model, *my_rows((x, y), rank)).backward()
    assert_grads_equal(model, reference)


def check_timeline(rank: int) -> None:
    model = gpt()
    buckets = apply_reference_ddp(model, dist.group.WORLD, bucket_mb=SMALL_BUCKET_MB)
    mean_loss(model, *my_rows(batch(4), rank)).backward()
    [backward] = buckets.timeline
    launched = sorted(backward["buckets"], key=lambda i: backward["buckets"][i]["launched"])
    assert len(buckets.buckets) > 2 and launched == list(range(len(buckets.buckets)))
    # Every bucket but the one holding the embeddings (whose gradients come last) starts inside backward.
    assert all(backward["buckets"][i]["launched"] < backward["last_hook"] for i in launched[:-1])
    assert all("completed" in stamps for stamps in backward["buckets"].values())


def check_accumulation(rank: int) -> None:
    x, y = batch(8)
    reference = gpt()
    mean_loss(reference, x, y).backward()
    model = gpt()
    buckets = apply_reference_ddp(model, dist.group.WORLD, bucket_mb=SMALL_BUCKET_MB)
    for i, (xm, ym) in enumerate(zip(*(t.chunk(2) for t in my_rows((x, y), rank)))):
        model.set_requires_gradient_sync(i == 1)
        (mean_loss(model, xm, ym) / 2).backward()
    assert len(buckets.timeline) == 1  # the first micro-step communicated nothing
    assert_grads_equal(model, reference)


def optimizer_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def check_zero1_bytes(rank: int) -> None:
    one_process = build_optimizer(gpt(NANO).parameters(), OPTIM)
    model = gpt(NANO)
    sharded = ShardedOptimizer(list(model.parameters()), lambda ps: build_optimizer(ps, OPTIM), dist.group.WORLD)
    for optimizer in (one_process, sharded):
        for p in (p for group in optimizer.param_groups for p in group["params"]):
            p.grad = torch.ones_like(p)
        optimizer.step()
    ratio = optimizer_bytes(sharded) / optimizer_bytes(one_process)
    assert ratio <= 1.05 / WORLD, f"this rank holds {ratio:.3f} of one process's optimizer bytes"


def check_zero1_steps(rank: int) -> None:
    # float64: the attention's key bias has a zero gradient in exact arithmetic, and Adam's
    # normalisation would turn float32 rounding noise in it into lr-sized steps of random sign.
    reference, model = gpt().double(), gpt().double()
    plain = build_optimizer(reference.parameters(), OPTIM)
    apply_reference_ddp(model, dist.group.WORLD, bucket_mb=SMALL_BUCKET_MB)
    sharded = ShardedOptimizer(list(model.parameters()), lambda ps: build_optimizer(ps, OPTIM), dist.group.WORLD)
    for step in range(3):
        x, y = batch(4, step)
        for net, optimizer, rows in ((reference, plain, (x, y)), (model, sharded, my_rows((x, y), rank))):
            mean_loss(net, *rows).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


CHECKS = {
    "broadcast": check_broadcast,
    "gradients, bucket hooks": functools.partial(check_gradients, overlap=True),
    "gradients, one all-reduce after backward": functools.partial(check_gradients, overlap=False),
    "timeline": check_timeline,
    "accumulation": check_accumulation,
    "zero1 bytes": check_zero1_bytes,
    "zero1 steps": check_zero1_steps,
}


def run_checks(rank: int, out_dir: str) -> None:
    """Every check on this rank, in the same order on both; each one's failure written to `out_dir`."""
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=WORLD)
    for i, check in enumerate(CHECKS.values()):
        try:
            check(rank)
            failure = ""
        except Exception as e:  # reported by the check's own test
            failure = f"rank {rank}: {type(e).__name__}: {e}"
        (Path(out_dir) / f"{i}.rank{rank}").write_text(failure)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> dict[str, str]:
    """Each check's failures on either rank ("" where it passed), from one start of WORLD ranks."""
    out = tmp_path_factory.mktemp("reference_ddp")
    mp.spawn(run_checks, args=(str(out),), nprocs=WORLD)
    return {name: "\n".join((out / f"{i}.rank{r}").read_text() for r in range(WORLD)).strip()
            for i, name in enumerate(CHECKS)}


@pytest.mark.multiprocess
def test_every_rank_starts_from_the_first_ranks_weights(failures):
    assert not failures["broadcast"], failures["broadcast"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("check", ["gradients, bucket hooks", "gradients, one all-reduce after backward"])
def test_gradients_equal_one_process_full_batch_gradients(check, failures):
    assert not failures[check], failures[check]


@pytest.mark.multiprocess
def test_buckets_are_all_reduced_during_backward_in_reverse_registration_order(failures):
    assert not failures["timeline"], failures["timeline"]


@pytest.mark.multiprocess
def test_accumulation_without_sync_then_one_synced_micro_step_equals_one_big_batch(failures):
    assert not failures["accumulation"], failures["accumulation"]


@pytest.mark.multiprocess
def test_zero1_rank_holds_at_most_1_05_over_n_of_one_process_optimizer_bytes(failures):
    assert not failures["zero1 bytes"], failures["zero1 bytes"]


@pytest.mark.multiprocess
def test_zero1_after_reference_ddp_updates_weights_as_plain_adamw(failures):
    assert not failures["zero1 steps"], failures["zero1 steps"]
