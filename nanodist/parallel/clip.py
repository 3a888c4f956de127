"""Gradient-norm clipping by the true global norm, whatever mix of sharded and plain gradients a rank holds."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


NormGroups = Callable[[torch.nn.Parameter], tuple[dist.ProcessGroup, ...]]


@torch.no_grad()
def clip_grad_norm_(params: list[torch.nn.Parameter], max_norm: float, pp_group: Optional[dist.ProcessGroup] = None,
                    uncounted: Sequence[torch.nn.Parameter] = (), norm_groups: Optional[NormGroups] = None) -> torch.Tensor:
    """Clip in place to `max_norm` (0 disables clipping) and return the global norm before clipping.

    Gradients are grouped by mesh, since one foreach norm cannot mix DTensors of different meshes
    (or DTensors and plain tensors); each group's norm is reduced over its own mesh. Pipeline
    stages hold disjoint parameters, so their squared norms add up over the pp group; a tied
    embedding's copy on the last stage (in `uncounted`) is scaled but counted once, on the first.
    The reference layouts' plain shards say through `norm_groups` over which groups their squared
    norms are partial sums (nanodist.parallel.reference.layout).
    """
    groups: dict = defaultdict(list)
    skip = {id(p) for p in uncounted}
    for p in params:
        if p.grad is not None:
            mesh = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            partial_over = norm_groups(p) if norm_groups is not None else ()
            groups[(mesh, partial_over, id(p) in skip)].append(p.grad)
    squares = []
    for (_, partial_over, skipped), grads in groups.items():
        if skipped:
            continue
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        square = (norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2
        for group in partial_over:
            dist.all_reduce(square, group=group)
        squares.append(square)
    total_sq = torch.stack(squares).sum() if squares else torch.zeros(())
    if pp_group is not None:
        dist.all_reduce(total_sq, group=pp_group)
    total = total_sq.sqrt()
    if max_norm > 0:
        # The coefficient stays on the device (1 when the norm is within bounds): reading it on the
        # host would stop the CPU from queuing the next step's kernels ahead of the GPU, every step.
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for grads in groups.values():
            torch._foreach_mul_(grads, coef)
    return total
