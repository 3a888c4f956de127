"""torch.compile per transformer block.

Each block's `forward` is compiled, not the whole model: compile time stays that of one block (all
blocks share its code and reuse the compiled kernels), and whatever is hooked onto the block
itself runs eagerly around the compiled code: FSDP's per-block all-gather and reshard, and
activation checkpointing, which wraps the compiled forward (see `nanodist.parallel`). Replacing
`forward` on the instance keeps parameter names free of an `_orig_mod.` prefix.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each block of `model` (or of a pipeline stage); compilation happens at the first forward."""
    for block in model.transformer.h.values():
        block.forward = torch.compile(block.forward, fullgraph=True)
    return model
