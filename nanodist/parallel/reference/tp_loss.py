"""Cross-entropy on vocab-sharded logits (loss parallelism): no rank ever holds a whole row of logits.

The softmax needs three numbers per token that span the vocabulary, each one all-reduce over tp of
a (tokens,)-sized tensor: the row's max (for a stable exp), the sum of exps, and the target's
logit (found on the one rank whose columns hold the target id, zero elsewhere). The gradient,
softmax minus the target's one-hot, is then local to each rank's columns, so backward sends
nothing. Padding ids (>= `true_vocab_size`) are masked to -inf first, as `nanodist.model.loss`
leaves them out of the softmax: they get no probability and no gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


class VocabParallelCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (tokens, vocab / tp) local logits against (tokens,) global target ids."""

    @staticmethod
    def forward(ctx, logits, targets, group, true_vocab_size: Optional[int]):
        local = logits.float()
        start = dist.get_rank(group) * local.size(-1)
        if true_vocab_size is not None:
            ids = torch.arange(start, start + local.size(-1), device=local.device)
            local = local.masked_fill(ids >= true_vocab_size, float("-inf"))
        row_max = local.max(dim=-1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exps = (local - row_max.unsqueeze(-1)).exp()
        sum_exps = exps.sum(dim=-1)
        dist.all_reduce(sum_exps, group=group)
        mine = (targets >= start) & (targets < start + local.size(-1))
        column = torch.where(mine, targets - start, 0)
        target_logit = torch.where(mine, local.gather(-1, column.unsqueeze(-1)).squeeze(-1) - row_max, 0.0)
        dist.all_reduce(target_logit, group=group)
        ctx.save_for_backward(exps / sum_exps.unsqueeze(-1), column, mine)
        ctx.logits_dtype = logits.dtype
        return (sum_exps.log() - target_logit).mean()

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, column, mine = ctx.saved_tensors
        # softmax - one_hot(target), where this rank's columns hold the target.
        grad = softmax.scatter_add(-1, column.unsqueeze(-1), -mine.to(softmax.dtype).unsqueeze(-1))
        grad = grad * (grad_loss / column.numel())
        return grad.to(ctx.logits_dtype), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, group: dist.ProcessGroup,
                                 true_vocab_size: Optional[int] = None) -> torch.Tensor:
    """The mean token loss of (batch, seq, vocab / tp) local logits and (batch, seq) targets, equal on every tp rank."""
    return VocabParallelCrossEntropy.apply(logits.flatten(0, -2), targets.flatten(), group, true_vocab_size)
