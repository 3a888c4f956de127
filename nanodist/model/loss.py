"""The training loss, shared by every strategy, the evaluation and the dry run.

A padded vocabulary (`GPTConfig.true_vocab_size` < `vocab_size`) is left out of the softmax: the
padding ids are never targets, so the loss and its gradients equal the unpadded model's, and the
padding rows of the head get no gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, true_vocab_size: Optional[int] = None) -> torch.Tensor:
    """Mean token loss in fp32; under loss parallelism `logits` is a vocab-sharded DTensor and so is the math."""
    if true_vocab_size is not None:
        logits = without_padding(logits, true_vocab_size)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))


def without_padding(logits: torch.Tensor, true_vocab_size: int) -> torch.Tensor:
    """The logits of the real vocabulary: a view of the first columns, or, sharded, the padding at -inf.

    A vocab-sharded DTensor (loss parallelism) cannot be sliced across its shards, so each rank
    masks the padding ids in its own shard instead; no softmax then gives them any mass.
    """
    if not isinstance(logits, DTensor):
        return logits[..., :true_vocab_size]
    local = logits.to_local()
    start = logits.device_mesh.get_local_rank() * local.size(-1)
    ids = torch.arange(start, start + local.size(-1), device=local.device)
    local = local.masked_fill(ids >= true_vocab_size, float("-inf"))
    return DTensor.from_local(local, logits.device_mesh, logits.placements, run_check=False)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T`, computed `chunk` tokens at a time, never holding all logits.

    The head's logits are the largest tensor of a GPT-2 step (tokens x 50k, fp32 in the loss): this
    computes each chunk's logits, its loss and its gradients at once, keeps the gradients of the
    hidden states and the weight, and frees the chunk, so peak memory holds one chunk's logits. The
    backward only scales the kept gradients by the incoming one (the loss is a scalar).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, true_vocab_size: Optional[int]):
        h, t = hidden.flatten(0, -2), targets.flatten()
        n, vocab = t.numel(), true_vocab_size or weight.size(0)
        w = weight[:vocab]
        grad_h, full_grad_w = torch.empty_like(h), torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_w = full_grad_w[:vocab]  # the padding rows get no gradient
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, n, chunk):
            h_c, t_c = h[start:start + chunk], t[start:start + chunk]
            logits = (h_c @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t_c[:, None]).squeeze(1)).sum()
            grad_logits = torch.softmax(logits, dim=-1)
            grad_logits[torch.arange(t_c.numel(), device=t_c.device), t_c] -= 1
            grad_logits = (grad_logits / n).to(h.dtype)
            grad_h[start:start + chunk] = grad_logits @ w
            grad_w += grad_logits.t().float() @ h_c.float()
        ctx.save_for_backward(grad_h.view_as(hidden), full_grad_w.to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None, None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 4096,
                                 true_vocab_size: Optional[int] = None) -> torch.Tensor:
    """`cross_entropy(hidden @ weight.T, targets, true_vocab_size)` without materialising the logits (see the class).

    Without autograd (evaluation) only the chunks' losses are computed, not their gradients.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk, true_vocab_size)
    h, t, w = hidden.flatten(0, -2), targets.flatten(), weight[: true_vocab_size or weight.size(0)]
    total = sum(F.cross_entropy((h[i:i + chunk] @ w.t()).float(), t[i:i + chunk], reduction="sum")
                for i in range(0, t.numel(), chunk))
    return total / t.numel()
