"""A tied embedding under pipelining: one weight that the first stage reads tokens with and the last stage's head writes logits with.

The first stage holds the embedding, the last stage keeps the head's own copy of it
(`build_stage_model` deletes only the embedding there), and both start from the same values (the
init seeds by the embedding's name; pretrained weights load the embedding's tensor into both).
After each optimizer step's backward, the two copies' gradients are summed over the two ranks
that hold them (the pp group's first and last rank, one such pair per data- and tensor-parallel
coordinate), so both copies take the update one process's single parameter takes, and stay
equal. Megatron-LM ties the same way, with its "embedding group".

Where one rank holds both stages (the V schedules), the two stages share one parameter and
autograd sums the two gradients itself. FSDP cannot do that (a parameter belongs to one
fully_shard root), so the validator refuses FSDP with a V schedule and a tied model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor

from nanodist.model import GPT
from nanodist.parallel.dims import Mesh


@dataclass
class TiedEmbedding:
    """This rank's copy of the tied weight (None if it holds neither end) and the pair it sums over."""

    copy: Optional[nn.Parameter]
    group: Optional[dist.ProcessGroup]  # None where one rank holds both ends as one parameter
    is_head_copy: bool  # the last stage's copy: its gradient equals the embedding's, counted there

    @torch.no_grad()
    def sum_gradients(self) -> None:
        """Sum the two copies' gradients (both ranks of the pair call this after the step's backward)."""
        if self.group is None or self.copy is None:
            return
        grad = self.copy.grad
        if isinstance(grad, DTensor) and grad.placements != self.copy.placements:
            # TP's vocab-sharded embedding hands back a replicated gradient: keep this rank's rows, as the head's are.
            grad = self.copy.grad = grad.redistribute(self.copy.device_mesh, self.copy.placements)
        dist.all_reduce(grad.to_local() if isinstance(grad, DTensor) else grad, group=self.group)

    @property
    def uncounted(self) -> list[nn.Parameter]:
        """Parameters whose gradient another rank's copy already counts in the global grad norm."""
        return [self.copy] if self.is_head_copy and self.group is not None else []


def tie_embedding(stages: dict[int, GPT], owner: list[int], pp_rank: int, mesh: Mesh) -> TiedEmbedding:
    """Tie the first stage's embedding to the last stage's head, for this rank's `stages`.

    Every rank makes the same `new_group` calls in the same order, one per pair of end ranks, as
    torch requires; each keeps the pair it belongs to.
    """
    first, last = 0, len(owner) - 1
    if owner[first] == owner[last]:
        if pp_rank == owner[first]:
            stages[last].lm_head.weight = stages[first].transformer.wte.weight
        return TiedEmbedding(None, None, False)
    ranks = mesh.world.mesh  # global ranks, dims (pp, dp_replicate, dp_shard, cp, tp)
    ends = ranks[[owner[first], owner[last]]].reshape(2, -1).t().tolist()
    me, group = dist.get_rank(), None
    for pair in ends:
        made = dist.new_group(pair)
        if me in pair:
            group = made
    if first in stages:
        return TiedEmbedding(stages[first].transformer.wte.weight, group, False)
    if last in stages:
        return TiedEmbedding(stages[last].lm_head.weight, group, True)
    return TiedEmbedding(None, group, False)
