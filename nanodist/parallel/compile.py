"""torch.compile per transformer block, and of the loss.

Each block's `forward` is compiled, not the whole model: compile time stays that of one block (all
blocks share its code and reuse the compiled kernels), and whatever is hooked onto the block
itself runs eagerly around the compiled code: FSDP's per-block all-gather and reshard, and
activation checkpointing, which wraps the compiled forward (see `nanodist.parallel`). Replacing
`forward` on the instance keeps parameter names free of an `_orig_mod.` prefix.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each block of `model` (or of a pipeline stage); compilation happens at the first forward."""
    for block in model.transformer.h.values():
        block.forward = torch.compile(block.forward, fullgraph=True)
    return model


def compile_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """The loss, compiled: the fp32 upcast of the logits, log-softmax and NLL fuse into kernels that
    read the (bf16) logits once, where eager writes an fp32 copy of the whole (batch, seq, vocab)
    tensor and makes several passes over it, forward and backward. With GPT-2's 50k vocabulary that
    eager tail measured about a quarter of an H100 step (benchmarks/README.md)."""
    return torch.compile(loss_fn, fullgraph=True)
