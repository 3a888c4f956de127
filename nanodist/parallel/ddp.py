"""Data parallelism by replication: every dp rank holds the whole model, gradients are all-reduced."""

from __future__ import annotations

import torch.nn as nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.device_mesh import DeviceMesh


def apply_ddp(model: nn.Module, dp_mesh: DeviceMesh) -> nn.Module:
    """Composable DDP: keeps parameter names (no `module.` prefix), so checkpoints move between layouts."""
    replicate(model, device_mesh=dp_mesh)
    return model
