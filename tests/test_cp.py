"""Context parallelism's pieces: the head-tail layout, the exact attention of both methods, the dry run.

Training under cp matches one process in tests/test_parity.py; here each piece is checked alone.
The attention tests run 2 or 4 gloo ranks in this process's children (torch.multiprocessing), each
holding its two chunks of q, k and v, and compare the output, the summed loss and every gradient
with plain causal attention over the whole sequence.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import NANO, launch

from nanodist.model.gpt import causal_attention
from nanodist.parallel.cp import BatchShard
from nanodist.parallel.cp_attention import METHODS, SequenceLayout


@pytest.mark.parametrize("cp", [2, 4])
def test_chunks_hold_every_token_once_at_its_true_position(cp):
    seq = 6 * cp
    tokens = torch.arange(seq).repeat(2, 1)  # each token id is its position
    layouts = [SequenceLayout(r, cp) for r in range(cp)]
    shards = [BatchShard(layout)(tokens) for layout in layouts]
    positions = [layout.positions(seq // cp, torch.device("cpu")) for layout in layouts]
    assert all(torch.equal(shard, pos.repeat(2, 1)) for shard, pos in zip(shards, positions))
    assert torch.equal(torch.cat(positions).sort().values, torch.arange(seq))


@pytest.mark.parametrize("cp", [2, 4])
def test_head_tail_layout_gives_every_rank_the_same_causal_work(cp):
    seq = 4 * cp
    # Query at position p attends to p + 1 keys.
    work = [int((SequenceLayout(r, cp).positions(seq // cp, torch.device("cpu")) + 1).sum()) for r in range(cp)]
    assert len(set(work)) == 1


def attention_worker(rank: int, cp: int, method: str, init_file: str) -> None:
    """One cp rank: its chunks' output, loss and gradients against plain attention's, on the same tensors."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=cp)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6 * cp, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    weights = torch.randn(2, 3, 6 * cp, 4, dtype=torch.float64)
    full_loss = (causal_attention(q, k, v, 0.0) * weights).sum()
    full_loss.backward()
    layout = SequenceLayout(rank, cp)
    mine = layout.positions(6, torch.device("cpu"))
    local = [t.detach()[:, :, mine].clone().requires_grad_() for t in (q, k, v)]
    out = METHODS[method](*local, layout, dist.group.WORLD)
    loss = (out * weights[:, :, mine]).sum()
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    torch.testing.assert_close(total, full_loss.detach(), rtol=1e-12, atol=1e-12)
    for ours, full in zip(local, (q, k, v)):
        torch.testing.assert_close(ours.grad, full.grad[:, :, mine], rtol=1e-10, atol=1e-12)
    dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.parametrize("method,cp", [("ring", 2), ("ring", 4), ("allgather", 2), ("allgather", 4)])
def test_cp_attention_equals_plain_attention_in_loss_and_gradients(method, cp, tmp_path):
    mp.spawn(attention_worker, args=(cp, method, str(tmp_path / "init")), nprocs=cp)


@pytest.mark.parametrize("method", ["ring", "allgather"])
def test_dry_run_activations_per_rank_fall_under_cp(method, tmp_path):
    def activation_bytes(name: str, *overrides: str) -> int:
        launch(tmp_path / name, *NANO, "dry_run=true", "train.batch_size=2", "model.block_size=256", *overrides)
        return json.loads((tmp_path / name / "dry_run.json").read_text())["ranks"][0]["activation_bytes"]

    single = activation_bytes("single", "parallel=single")
    assert activation_bytes("cp", "parallel=cp", "mesh.cp=2", f"parallel.cp.method={method}") < single
