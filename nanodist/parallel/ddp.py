"""Data parallelism by replication: every dp rank holds the whole model, gradients are all-reduced.

Two torch implementations, picked by what the model holds. A plain model gets composable DDP
(`torch.distributed._composable.replicate`): gradient buckets all-reduced from autograd hooks.
DDP does not understand DTensor parameters: under tensor parallelism it dies in "Expected to have
finished reduction in the prior iteration". A tensor-parallel model (DTensor parameters on the tp
mesh) gets the FSDP2-based `replicate` instead (`replicate_with_fsdp`, in torch 2.11 to 2.13 with
the same signature): FSDP2 with nothing to shard, which lays the parameters out as 2-D DTensors
over (dp_replicate, tp) and all-reduces their gradients over dp_replicate, one unit per transformer
block so each block's reduction overlaps the earlier blocks' backward. Both keep the parameter
names (no `module.` prefix), so checkpoints move between layouts, and both have
`set_requires_gradient_sync` on the model for gradient accumulation.
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor


def apply_ddp(model: nn.Module, dp_mesh: DeviceMesh) -> nn.Module:
    """Replicate `model` over the 1-D `dp_mesh`, whichever way its parameters are laid out."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return replicate_sharded(model, dp_mesh)
    replicate(model, device_mesh=dp_mesh)
    return model


def replicate_sharded(model: nn.Module, dp_mesh: DeviceMesh) -> nn.Module:
    """FSDP2-based replication of a tensor-parallel model: each transformer block, then the root."""
    try:
        from torch.distributed._composable.replicate_with_fsdp import replicate as replicate_with_fsdp
    except ImportError as e:  # absent from older torch (it is in 2.11 to 2.13)
        raise RuntimeError(f"DDP over a tensor-parallel model needs torch's FSDP2-based replicate "
                           f"(torch.distributed._composable.replicate_with_fsdp, torch >= 2.11): {e}") from e
    for block in model.transformer.h.values():
        replicate_with_fsdp(block, mesh=dp_mesh)
    replicate_with_fsdp(model, mesh=dp_mesh)
    return model
