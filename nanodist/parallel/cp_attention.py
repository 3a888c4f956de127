"""Exact causal attention when each cp rank holds two chunks of the sequence (`nanodist.parallel.cp`).

Two methods, both exact and both differentiable:

- "ring": the K/V of one rank's chunks at a time, passed around the cp ring; blocks merge by the
  online-softmax rule (numerators and denominators rescaled to a running row maximum), and chunk
  pairs that causality hides entirely (key chunk after query chunk) are skipped. Its backward is
  explicit (`RingAttention`): K/V go around the ring again with their gradients, and each block's
  softmax is recomputed from the saved log-sum-exp, so only this rank's q, k, v, output and
  log-sum-exp are kept for backward, never another rank's K/V or a score matrix.
- "allgather": all K/V gathered at once (`AllGather`, whose backward sums each rank's gradient
  back to its owner), then each local query chunk attends to the keys up to its own end with
  torch's SDPA under a causal mask at the true positions. Autograd keeps the gathered K/V of
  every layer for the backward: full K/V per layer per rank.

Both run the same on gloo (CPU) and nccl. The exchanges are synchronous: the ring does not yet
overlap a block's transfer with the previous block's compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

# (numerator, denominator, row maximum) of queries' softmax attention against some of the keys
Block = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SequenceLayout:
    """Cp rank `rank` of `size` holds chunks `rank` and 2 x size - 1 - rank of 2 x size equal chunks."""

    rank: int
    size: int

    @property
    def chunks(self) -> tuple[int, int]:
        return self.chunks_of(self.rank)

    def chunks_of(self, rank: int) -> tuple[int, int]:
        return rank, 2 * self.size - 1 - rank

    def positions(self, length: int, device: torch.device) -> torch.Tensor:
        """The true positions of this rank's `length` tokens (its two chunks, in order)."""
        c = length // 2
        return torch.cat([torch.arange(a * c, (a + 1) * c, device=device) for a in self.chunks])


def shift(x: torch.Tensor, group: dist.ProcessGroup, step: int) -> torch.Tensor:
    """Send `x` to the rank `step` places on around the ring; return what the rank `step` places back sent."""
    n, me = dist.get_world_size(group), dist.get_rank(group)
    out, x = torch.empty_like(x), x.contiguous()
    ops = [dist.P2POp(dist.isend, x, dist.get_global_rank(group, (me + step) % n), group),
           dist.P2POp(dist.irecv, out, dist.get_global_rank(group, (me - step) % n), group)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return out


class AllGather(torch.autograd.Function):
    """Every rank's `x`, stacked in rank order; each rank's gradient is the sum of all ranks' for its part."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "gloo":  # gloo has no reduce-scatter
            dist.all_reduce(grad, group=ctx.group)
            return grad[dist.get_rank(ctx.group)], None
        out = torch.empty_like(grad[0])
        dist.reduce_scatter_tensor(out, grad, group=ctx.group)
        return out, None


def scores_of(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """Scaled scores of q against one key block, at fp32 at least; the diagonal block hides later keys."""
    scores = (q @ k.transpose(-2, -1)).to(torch.promote_types(q.dtype, torch.float32)) * q.size(-1) ** -0.5
    if causal:  # query i of the chunk sees keys 0..i of the same chunk
        hidden = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(hidden, float("-inf"))
    return scores


def visible_pairs(layout: SequenceLayout, step: int) -> list[tuple[int, int, bool]]:
    """(local query chunk, key chunk of the block held at ring step `step`, diagonal?) for every pair
    that causality does not hide entirely (a key chunk after the query chunk is skipped)."""
    source = layout.chunks_of((layout.rank - step) % layout.size)
    return [(i, j, kc == qc) for i, qc in enumerate(layout.chunks) for j, kc in enumerate(source) if kc <= qc]


def merge(a: Block | None, b: Block) -> Block:
    """Two key sets' partial attention as one: both rescaled to the larger row maximum (online softmax)."""
    if a is None:
        return b
    peak = torch.maximum(a[2], b[2])
    scale_a, scale_b = torch.exp(a[2] - peak), torch.exp(b[2] - peak)
    return a[0] * scale_a + b[0] * scale_b, a[1] * scale_a + b[1] * scale_b, peak


class RingAttention(torch.autograd.Function):
    """Ring attention with an explicit backward that recomputes each block's softmax from the saved
    log-sum-exp, as flash attention's does, so only q, k, v, out and lse are kept for it."""

    @staticmethod
    def forward(ctx, q, k, v, layout: SequenceLayout, group: dist.ProcessGroup):
        queries, acc, kv = q.chunk(2, dim=2), [None, None], torch.stack([k, v])
        for step in range(layout.size):
            keys, values = kv[0].chunk(2, dim=2), kv[1].chunk(2, dim=2)
            for i, j, causal in visible_pairs(layout, step):
                scores = scores_of(queries[i], keys[j], causal)
                peak = scores.amax(dim=-1, keepdim=True)
                weights = torch.exp(scores - peak)
                acc[i] = merge(acc[i], (weights @ values[j].to(weights.dtype), weights.sum(dim=-1, keepdim=True), peak))
            if step < layout.size - 1:
                kv = shift(kv, group, 1)
        out = torch.cat([num / den for num, den, _ in acc], dim=2)
        ctx.save_for_backward(q, k, v, out, torch.cat([peak + den.log() for _, den, peak in acc], dim=2))
        ctx.layout, ctx.group = layout, group
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        """dQ stays here; dK and dV travel around the ring with their block and are home after cp hops."""
        q, k, v, out, lse = ctx.saved_tensors
        layout, wide, scale = ctx.layout, out.dtype, q.size(-1) ** -0.5
        grad_out = grad_out.to(wide)
        queries, grads, lses = q.to(wide).chunk(2, dim=2), grad_out.chunk(2, dim=2), lse.chunk(2, dim=2)
        deltas = (grad_out * out).sum(dim=-1, keepdim=True).chunk(2, dim=2)
        dq = [torch.zeros_like(c) for c in queries]
        kv = torch.stack([k, v]).to(wide)
        dkv = torch.zeros_like(kv)
        for step in range(layout.size):
            keys, values = kv[0].chunk(2, dim=2), kv[1].chunk(2, dim=2)
            dkeys, dvalues = dkv[0].chunk(2, dim=2), dkv[1].chunk(2, dim=2)  # views: add_ writes into dkv
            for i, j, causal in visible_pairs(layout, step):
                weights = torch.exp(scores_of(queries[i], keys[j], causal) - lses[i])
                dvalues[j].add_(weights.transpose(-2, -1) @ grads[i])
                dscores = weights * (grads[i] @ values[j].transpose(-2, -1) - deltas[i]) * scale
                dq[i] += dscores @ keys[j]
                dkeys[j].add_(dscores.transpose(-2, -1) @ queries[i])
            if step < layout.size - 1:
                kv = shift(kv, ctx.group, 1)
            dkv = shift(dkv, ctx.group, 1)
        return torch.cat(dq, dim=2).to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SequenceLayout,
                   group: dist.ProcessGroup) -> torch.Tensor:
    """Local queries against every rank's K/V, one rank's chunks per ring step, merged as they come."""
    return RingAttention.apply(q, k, v, layout, group)


def allgather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SequenceLayout,
                        group: dist.ProcessGroup) -> torch.Tensor:
    """Local queries against all K/V gathered at once, put back in sequence order, under a causal mask."""
    n, c = layout.size, q.size(2) // 2
    held = AllGather.apply(torch.stack([k, v]), group).unflatten(-2, (2, c))  # (cp, k|v, B, H, 2, c, D)
    ordered = [held[a, :, :, :, 0] if a < n else held[2 * n - 1 - a, :, :, :, 1] for a in range(2 * n)]
    kv = torch.cat(ordered, dim=-2)  # (k|v, B, H, T, D)
    outs = []
    for qc, queries in zip(layout.chunks, q.chunk(2, dim=2)):
        end = (qc + 1) * c  # keys after this chunk's end are hidden from all of it
        seen = torch.arange(qc * c, end, device=q.device)[:, None] >= torch.arange(end, device=q.device)
        outs.append(F.scaled_dot_product_attention(queries, kv[0, :, :, :end], kv[1, :, :, :end], attn_mask=seen))
    return torch.cat(outs, dim=2)


METHODS = {"ring": ring_attention, "allgather": allgather_attention}


@dataclass(frozen=True)
class ContextParallelAttention:
    """The attention seam's value under cp: (q, k, v, dropout_p) of this rank's chunks -> its output."""

    layout: SequenceLayout
    group: dist.ProcessGroup
    method: str

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        if dropout_p > 0:
            raise ValueError(f"attention dropout ({dropout_p}) cannot match one process under context parallelism; set model.dropout=0.")
        return METHODS[self.method](q, k, v, self.layout, self.group)
