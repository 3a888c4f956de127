"""FSDP2: parameters, gradients and optimizer state sharded over the dp mesh (HSDP when it is 2-D)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, cfg, pipelined: bool = False) -> nn.Module:
    """Shard each transformer block as one unit, then the root (embeddings, final norm, head).

    Per-block units let FSDP all-gather one block while the previous one computes, and free it
    after; the root unit holds the tied embedding/head weight once. A 2-D dp_mesh
    (dp_replicate, dp_shard) gives HSDP: sharded inside a replica group, replicated across groups.

    Resharding after forward (`cfg.reshard_after_forward`, null: automatic) frees a block's gathered
    weights until its backward gathers them again. In a pipeline stage the many microbatches of a
    step would each gather them twice, so there the default keeps them gathered for the whole step.
    """
    mp_policy = MixedPrecisionPolicy(param_dtype=_dtype(cfg.param_dtype), reduce_dtype=_dtype(cfg.reduce_dtype))
    offload = CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy()
    options = dict(mesh=dp_mesh, mp_policy=mp_policy, offload_policy=offload)
    reshard = cfg.reshard_after_forward if cfg.reshard_after_forward is not None else not pipelined
    for block in model.transformer.h.values():
        fully_shard(block, reshard_after_forward=reshard, **options)
    # The root's parameters are needed again first in backward: keeping them saves one all-gather.
    fully_shard(model, reshard_after_forward=False, **options)
    return model


def _dtype(name):
    return None if name is None else getattr(torch, name)
