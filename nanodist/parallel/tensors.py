"""What this rank holds of values that parallelism may have turned into DTensors."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor


def as_plain(value: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (the loss under loss parallelism) as the plain tensor every rank holds, detached."""
    return (value.full_tensor() if isinstance(value, DTensor) else value).detach()


def unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of all `modules` (a rank's pipeline stages), each once: a tied weight appears twice."""
    return list({id(p): p for module in modules for p in module.parameters()}.values())


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds of the given tensors (a DTensor counts only its local shard; None counts 0)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total
