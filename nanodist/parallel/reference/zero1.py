"""ZeRO-1: the optimizer state sharded over the data-parallel ranks, the model and gradients replicated.

Under DDP every rank holds AdamW's two moments for every parameter and runs the same update, N
times over. Here each parameter has one owner rank (greedy by bytes, so the ranks hold about 1/N
of the state each); a rank keeps optimizer state for and updates only the parameters it owns, then
every parameter is broadcast from its owner, so all ranks hold the same new weights again. The
gradients must already be averaged over the group when `step()` runs (DDP's all-reduce, native or
`nanodist.parallel.reference.ddp`); the per-step traffic is DDP's plus one broadcast of the weights.

`param_groups` and `state` are the inner optimizer's, so the Trainer's lr schedule and the
checkpointer (which saves `state` keyed by parameter name) see this rank's owned parameters: each
rank saves its share and DCP's union is the whole state, loadable under any layout.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

MakeOptimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def partition_by_bytes(params: list[nn.Parameter], n_ranks: int) -> list[int]:
    """Each parameter's owner (a group rank): largest first, each to the least-loaded rank (the lowest
    on a tie), so every rank computes the same split and holds within one parameter of 1/N of the bytes."""
    if len(params) < n_ranks:
        raise ValueError(f"ZeRO-1 over {n_ranks} ranks needs at least as many parameters; the model has {len(params)}")
    load, owners = [0] * n_ranks, [0] * len(params)
    by_size = sorted(range(len(params)), key=lambda i: -params[i].numel() * params[i].element_size())
    for i in by_size:
        owner = min(range(n_ranks), key=lambda r: (load[r], r))
        owners[i] = owner
        load[owner] += params[i].numel() * params[i].element_size()
    return owners


class ShardedOptimizer:
    """`make_optimizer` over this rank's owned parameters; `step` updates them, then broadcasts every
    parameter from its owner. Duck-types the parts of `torch.optim.Optimizer` the Trainer and the
    checkpointer use: `param_groups`, `state`, `step`, `zero_grad`."""

    def __init__(self, params: list[nn.Parameter], make_optimizer: MakeOptimizer, group: dist.ProcessGroup):
        self.params = list({id(p): p for p in params if p.requires_grad}.values())  # a tied weight once
        self.group = group
        owners = partition_by_bytes(self.params, dist.get_world_size(group))
        ranks = dist.get_process_group_ranks(group)
        self.sources = [ranks[owner] for owner in owners]  # global rank of each parameter's owner
        rank = dist.get_rank(group)
        self.owned = [p for p, owner in zip(self.params, owners) if owner == rank]
        self.optimizer = make_optimizer(self.owned)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict:
        return self.optimizer.state

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        works = [dist.broadcast(p.detach(), src=source, group=self.group, async_op=True)
                 for p, source in zip(self.params, self.sources)]
        for work in works:
            work.wait()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Every parameter's gradient, not only the owned ones': all ranks computed all of them."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
