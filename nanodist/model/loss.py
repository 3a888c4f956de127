"""The training loss, shared by every strategy, the evaluation and the dry run."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token loss in fp32; under loss parallelism `logits` is a vocab-sharded DTensor and so is the math."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))
