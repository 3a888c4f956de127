"""Context parallelism: every sequence split over the cp ranks, attention still exact over all of it.

Layout (head-tail, or zig-zag): a sequence of T tokens is cut into 2 x cp equal chunks and cp rank
r holds chunks r and 2cp-1-r, one early and one late. Under causal attention a late chunk attends
to many keys and an early one to few, so every rank does the same work; a plain split would leave
the last rank with cp times the first's. Labels are cut the same way, so each rank's loss is the
mean over its own tokens, and with equal shares the mean of the ranks' losses is the sequence's
(gradients are averaged over cp: DDP for plain cp, FSDP over dp_shard x cp otherwise).

The model knows nothing of this: `apply_cp` fills its two seams, `GPT.positions` with the true
positions of the local tokens (for the learned wpe) and each `CausalSelfAttention.attention` with
`ContextParallelAttention` (`nanodist.parallel.cp_attention`: ring or all-gather, exact either way).
Everything else (MLP, LayerNorms, the head, the loss) is per token and needs no change.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from nanodist.model.gpt import GPT, causal_attention, contiguous_positions
from nanodist.parallel.cp_attention import ContextParallelAttention, SequenceLayout


@dataclass(frozen=True)
class BatchShard:
    """Cut a (batch, seq) tensor of inputs or labels to this cp rank's two chunks."""

    layout: SequenceLayout

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, seq = tokens.shape
        chunks = tokens.view(batch, 2 * self.layout.size, seq // (2 * self.layout.size))
        return chunks[:, list(self.layout.chunks)].reshape(batch, -1)


def layout_of(cp_mesh: DeviceMesh) -> SequenceLayout:
    return SequenceLayout(cp_mesh.get_local_rank(), cp_mesh.size())


def batch_shard(cp_mesh: DeviceMesh | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """This rank's cut of inputs and labels: its two chunks under cp, everything without."""
    return BatchShard(layout_of(cp_mesh)) if cp_mesh is not None else (lambda tokens: tokens)


def apply_cp(model: GPT, cp_mesh: DeviceMesh, method: str) -> GPT:
    """Make `model` (or a pipeline stage of it) run on this rank's chunks: true positions, exact attention."""
    layout = layout_of(cp_mesh)
    model.positions = layout.positions
    attention = ContextParallelAttention(layout, cp_mesh.get_group(), method)
    for block in model.transformer.h.values():
        block.attn.attention = attention
    return model


@contextlib.contextmanager
def whole_sequences(parts: list[nn.Module]) -> Iterator[None]:
    """Run `parts` on whole sequences for a while (text sampling: every cp rank feeds the same context).

    Each rank then computes the same thing; FSDP's gathers over cp still pair up, since all run it.
    """
    attns = [block.attn for part in parts for block in part.transformer.h.values()]
    saved = [part.positions for part in parts], [attn.attention for attn in attns]
    for part in parts:
        part.positions = contiguous_positions
    for attn in attns:
        attn.attention = causal_attention
    try:
        yield
    finally:
        for part, positions in zip(parts, saved[0]):
            part.positions = positions
        for attn, attention in zip(attns, saved[1]):
            attn.attention = attention
