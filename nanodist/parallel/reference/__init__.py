"""nanodist's own DDP, FSDP and TP (`parallel.implementation=reference`), beside torch's native ones.

Short modules with plain torch.distributed collectives (no DistributedDataParallel, no fully_shard,
no DTensor in the math), for researchers who want to see what the native strategies do, and test an
idea of their own in a real harness: `ddp` (gradient buckets all-reduced from backward hooks),
`fsdp` (one flat parameter per block, sharded, gathered around its forward and backward), `tp`
(column- and row-parallel linears, vocab-parallel embedding and loss, sequence parallelism), and
`zero1` (the optimizer state sharded over the replicas). Each answers the Trainer's, the clip's and
the checkpointer's questions through a `Layout` (`layout.py`), so checkpoints move between the
native and reference layouts.

`apply_reference` composes them in the native order: TP rewrites modules on meta, activation
checkpointing wraps the blocks, FSDP shards (and initialises) what it finds, or else the weights
are materialised; DDP last, on real tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nanodist.model import GPT
from nanodist.parallel.ac import apply_ac
from nanodist.parallel.dims import Mesh, ParallelDims
from nanodist.parallel.parallelize import materialize
from nanodist.parallel.reference.ddp import apply_reference_ddp
from nanodist.parallel.reference.fsdp import apply_reference_fsdp
from nanodist.parallel.reference.layout import Layout
from nanodist.parallel.reference.tp import apply_reference_tp


def apply_reference(model: GPT, dims: ParallelDims, mesh: Mesh, cfg, device: torch.device) -> tuple[nn.Module, Layout]:
    """Shard a meta-device GPT for this rank with the reference implementations; the model and its layout."""
    p, seed = cfg.parallel, cfg.train.seed
    tp_layout = apply_reference_tp(model, mesh["tp"], p.sequence_parallel, p.loss_parallel) if p.tensor_parallel else None
    apply_ac(model, cfg.train.activation_checkpointing, cfg.train.ac_every)
    if p.data_parallel == "fsdp":
        replicate = mesh["dp_replicate"] if dims.dp_replicate > 1 else None
        return model, apply_reference_fsdp(model, mesh["dp_shard"], replicate, p.fsdp, device, seed, inner=tp_layout)
    if tp_layout is not None:
        tp_layout.materialize(device, seed)
    else:
        materialize(model, device, seed)
    if p.data_parallel == "ddp":
        apply_reference_ddp(model, mesh["dp_replicate"].get_group(), p.ddp.bucket_mb)
    return model, tp_layout if tp_layout is not None else Layout(model)
