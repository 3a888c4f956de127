"""Compose the parallel strategies on one mesh: which apply_* runs, in which order, and why.

Order matters: tensor parallelism first (it rewrites modules into DTensor layouts), then
torch.compile of each block's forward, then activation checkpointing around the compiled forward
(recomputation reruns the compiled code; the other way round, a checkpoint traced inside a
compiled region holding DTensor ops fails in torch 2.13's AOTAutograd, which saves a DeviceMesh
for backward), then FSDP (it shards whatever layout it finds, making 2-D DTensors over
(dp_shard, tp)), all on the meta device; then the weights are materialised and initialised shard
by shard; DDP last, since it needs real tensors. The dry run (`nanodist.tools.dryrun`) stops after the
meta-device steps. Pipeline parallelism cuts the model into stages before any of this
(`nanodist.parallel.pp`), and each stage is then parallelised like a whole model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from nanodist.model import GPT
from nanodist.parallel.ac import apply_ac
from nanodist.parallel.compile import apply_compile
from nanodist.parallel.cp import apply_cp
from nanodist.parallel.ddp import apply_ddp
from nanodist.parallel.dims import Mesh, ParallelDims
from nanodist.parallel.fsdp import apply_fsdp
from nanodist.parallel.tp import apply_tp, enable_async_tp


def data_parallel_mesh(mesh: Mesh, dims: ParallelDims) -> DeviceMesh:
    """The mesh FSDP shards over: dp_shard alone, (dp_replicate, dp_shard) for HSDP, or dp_shard x cp
    flattened under context parallelism (validation refuses HSDP with cp)."""
    if dims.cp > 1:
        return mesh["dp_shard_cp"]
    return mesh[("dp_replicate", "dp_shard")] if dims.dp_replicate > 1 else mesh["dp_shard"]


def parallelize(model: GPT, dims: ParallelDims, mesh: Mesh | None, cfg, device: torch.device) -> nn.Module:
    """Shard a meta-device GPT (or pipeline stage) for this rank, then materialise and initialise it."""
    apply_on_meta(model, dims, mesh, cfg)
    materialize(model, device, cfg.train.seed)
    if cfg.parallel.data_parallel == "ddp":
        apply_ddp(model, mesh["dp_replicate"])
    elif cfg.parallel.context_parallel and cfg.parallel.data_parallel == "none":
        apply_ddp(model, mesh["cp"])  # plain cp: each rank's gradient covers its own tokens; average them
    return model


def apply_on_meta(model: GPT, dims: ParallelDims, mesh: Mesh | None, cfg) -> nn.Module:
    """The steps that need no real weights: TP -> CP -> compile -> activation checkpointing -> FSDP."""
    p, t = cfg.parallel, cfg.train
    if p.tensor_parallel:
        apply_tp(model, mesh["tp"], p.sequence_parallel, p.loss_parallel)
        if p.async_tp:  # validation allows it only with CUDA and compile
            enable_async_tp(mesh["tp"])
    if p.context_parallel:
        apply_cp(model, mesh["cp"], p.cp.method)
    if t.compile:
        apply_compile(model)
    apply_ac(model, t.activation_checkpointing, t.ac_every)
    if p.data_parallel == "fsdp":
        apply_fsdp(model, data_parallel_mesh(mesh, dims), p.fsdp, pipelined=p.pipeline)
    return model


def materialize(model: GPT, device: torch.device, seed: int) -> None:
    """Allocate this rank's shards on `device` and fill them as one process would fill the full model."""
    tied = model.lm_head is not None and "wte" in model.transformer and model.lm_head.weight is model.transformer.wte.weight
    model.to_empty(device=device)
    if tied and model.lm_head.weight is not model.transformer.wte.weight:
        model.lm_head.weight = model.transformer.wte.weight  # to_empty swaps DTensor parameters
    model.init_weights(seed)


def set_gradient_sync(modules: list[nn.Module], enabled: bool) -> None:
    """Skip the dp gradient reduction on accumulation micro-steps that are not the last."""
    for module in modules:
        if hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(enabled)
