"""Activation checkpointing: keep a block's input only, recompute its insides during backward.

A checkpointed block saves one (batch, seq, n_embd) tensor instead of every intermediate
(attention inputs and outputs, the 4x-wide MLP hidden, norm statistics), at the cost of a second
forward of the block in backward. "full" checkpoints every block; "selective" every `every`-th
one, trading part of the saving back for less recomputation.

The block's `forward` is replaced on the instance rather than wrapped in a new module, so
parameter names (and with them weight init, checkpoints and export) stay those of the plain model.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def apply_ac(model: nn.Module, mode: str, every: int) -> nn.Module:
    """Checkpoint the blocks of `model` (or of a pipeline stage) chosen by `mode` ("none", "full", "selective").

    Blocks are picked by their global layer index, so a pipelined model checkpoints the same
    layers as the whole one.
    """
    if mode == "none":
        return model
    for index, block in model.transformer.h.items():
        if mode == "full" or int(index) % every == 0:
            block.forward = partial(checkpoint, block.forward, use_reentrant=False)
    return model
