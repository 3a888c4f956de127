"""Tensor-parallel layers written by hand: Megatron-LM's collectives as autograd functions, and the modules using them.

Every collective of tensor parallelism comes with its mirror image in backward, because the
gradient of "copy x to every rank" is "sum the ranks' gradients of x", and so on:

    forward                          backward                  where
    identity (x is replicated)       all-reduce                into a column-parallel linear (plain TP)
    all-reduce (partial sums)        identity                  out of a row-parallel linear (plain TP)
    all-gather the sequence          reduce-scatter            into attention, MLP and head (SP)
    reduce-scatter the sequence      all-gather                out of a row-parallel linear (SP)
    keep this rank's sequence part   all-gather                after the embedding (SP)
    all-gather the vocabulary        keep this rank's part     out of the LM head (no loss parallelism)

The modules hold only this rank's shard, as a plain nn.Parameter under the plain module's
attribute names (`weight`, `bias`), and say which dim of each is split (`tp_dims`, None: whole).
torch's DTensor layer (`nanodist.parallel.tp`) runs the same collectives, chosen by placements.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

Group = dist.ProcessGroup


def all_gather(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """The ranks' tensors concatenated along `dim`, in rank order."""
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def reduce_scatter(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """This rank's slice along `dim` of the ranks' tensors summed."""
    parts = [part.contiguous() for part in x.chunk(dist.get_world_size(group), dim=dim)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=group)
    return out


def own_slice(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """This rank's slice along `dim` of a tensor every rank holds whole."""
    return x.chunk(dist.get_world_size(group), dim=dim)[dist.get_rank(group)].contiguous()


def all_reduce(x: torch.Tensor, group: Group) -> torch.Tensor:
    """The ranks' tensors summed, in a new tensor: autograd may hand the same gradient to several consumers."""
    x = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(x, group=group)
    return x


class CopyToTP(torch.autograd.Function):
    """Identity forward; backward sums the ranks' partial gradients of a tensor every rank used whole."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, ctx.group), None


class ReduceFromTP(torch.autograd.Function):
    """Forward sums the ranks' partial results; each rank's gradient of the sum is already whole."""

    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class GatherSequence(torch.autograd.Function):
    """Forward gathers the whole sequence from its 1/tp parts (dim 1); backward sums and keeps this rank's part."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather(x, 1, group)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter(grad, 1, ctx.group), None


class ReduceScatterSequence(torch.autograd.Function):
    """Forward sums the partial results and keeps this rank's part of the sequence; backward gathers the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter(x, 1, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, 1, ctx.group), None


class SplitSequence(torch.autograd.Function):
    """Forward keeps this rank's part of a replicated sequence; backward gathers the whole sequence's gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return own_slice(x, 1, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, 1, ctx.group), None


class GatherVocab(torch.autograd.Function):
    """Forward gathers the whole vocabulary's logits (last dim); backward keeps this rank's columns' gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather(x, -1, group)

    @staticmethod
    def backward(ctx, grad):
        return own_slice(grad, -1, ctx.group), None


def split_sequence_hook(group: Group, module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook for the first block under SP: from there on each rank holds 1/tp of the sequence."""
    return (SplitSequence.apply(args[0], group), *args[1:])


def gather_sequence_hook(group: Group, module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook for attention, MLP and head under SP: they see the whole sequence (attention needs it)."""
    return (GatherSequence.apply(args[0], group), *args[1:])


def _local(size: int, group: Group) -> int:
    tp = dist.get_world_size(group)
    if size % tp:
        raise ValueError(f"a dim of {size} cannot be split evenly over {tp} tensor-parallel ranks")
    return size // tp


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b for this rank's rows of W (output features); each rank's output is a slice of y's last dim.

    Its input is the whole activation, replicated on every rank: under plain TP each rank's gradient
    of it is partial, so it is all-reduced here; under SP (`input_gathered`) the caller gathered the
    sequence with `GatherSequence`, whose backward already sums it. `gather_output` gathers the
    slices (the LM head, when the loss takes whole logits).
    """

    tp_dims = {"weight": 0, "bias": 0}

    def __init__(self, in_features: int, out_features: int, bias: bool, group: Group, input_gathered: bool,
                 gather_output: bool = False, device: Optional[torch.device] = None):
        super().__init__()
        self.group, self.input_gathered, self.gather_output = group, input_gathered, gather_output
        rows = _local(out_features, group)
        self.weight = nn.Parameter(torch.empty(rows, in_features, device=device))
        self.bias = nn.Parameter(torch.empty(rows, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x if self.input_gathered else CopyToTP.apply(x, self.group), self.weight, self.bias)
        return GatherVocab.apply(y, self.group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x W^T + b for this rank's columns of W (input features), fed by a column-parallel layer's slice.

    Each rank's product is a partial sum: all-reduced (plain TP) or reduce-scattered over the
    sequence (SP). The bias is whole on every rank and added once, after the sum; under SP each
    rank adds it to its own tokens only, so its gradient is summed over the ranks.
    """

    tp_dims = {"weight": 1, "bias": None}

    def __init__(self, in_features: int, out_features: int, bias: bool, group: Group, sequence_parallel: bool,
                 device: Optional[torch.device] = None):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = nn.Parameter(torch.empty(out_features, _local(in_features, group), device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)
        if self.sequence_parallel:
            y = ReduceScatterSequence.apply(partial, self.group)
        else:
            y = ReduceFromTP.apply(partial, self.group)
        if self.bias is None:
            return y
        bias = CopyToTP.apply(self.bias, self.group) if self.sequence_parallel else self.bias
        return y + bias.to(y.dtype)  # in the matmul's dtype, as nn.Linear under autocast adds it


class VocabParallelEmbedding(nn.Module):
    """This rank's rows of the token embedding (a contiguous range of ids): ids outside it look up zeros,
    and the all-reduce fills every token's vector from the rank that owns its id."""

    tp_dims = {"weight": 0}

    def __init__(self, num_embeddings: int, embedding_dim: int, group: Group, device: Optional[torch.device] = None):
        super().__init__()
        self.group = group
        rows = _local(num_embeddings, group)
        self.start = dist.get_rank(group) * rows
        self.weight = nn.Parameter(torch.empty(rows, embedding_dim, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.start) & (ids < self.start + self.weight.size(0))
        vectors = F.embedding(torch.where(mine, ids - self.start, 0), self.weight)
        return ReduceFromTP.apply(vectors.masked_fill(~mine.unsqueeze(-1), 0.0), self.group)


class SequenceParallelLayerNorm(nn.LayerNorm):
    """A LayerNorm over this rank's part of the sequence: its weight and bias are whole on every rank, but
    each rank's gradient covers its own tokens only, so the gradients are summed over the ranks (in
    backward, before they reach `.grad`: right under gradient accumulation too)."""

    tp_dims = {"weight": None, "bias": None}

    def __init__(self, norm: nn.LayerNorm, group: Group):
        super().__init__(norm.normalized_shape, norm.eps, norm.elementwise_affine, norm.bias is not None,
                         device=norm.weight.device if norm.weight is not None else None)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = CopyToTP.apply(self.weight, self.group) if self.weight is not None else None
        bias = CopyToTP.apply(self.bias, self.group) if self.bias is not None else None
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
