"""AdamW with weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
import functools
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from nanodist.parallel.reference.zero1 import ShardedOptimizer


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg,
                    decays: Optional[Callable[[torch.nn.Parameter], bool]] = None) -> torch.optim.AdamW:
    """Decay 2-D weights (matmuls, embeddings), not biases or norms, as GPT-2 training does; a
    reference layout's flat parameters say through `decays` whether they hold matrices.

    Parameters are also grouped by kind (plain tensor, or DTensor on a given mesh): one foreach
    kernel cannot mix them, and under tensor parallelism a rank holds both.
    """
    groups: dict = {}
    for p in params:
        if not p.requires_grad:
            continue
        decay = decays(p) if decays is not None else p.dim() >= 2
        kind = (p.device_mesh, p.placements) if isinstance(p, DTensor) else None
        groups.setdefault((decay, kind), []).append(p)
    param_groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0} for (decay, _), ps in groups.items()
    ]
    # The fused kernel takes plain tensors only; sharded (DTensor) parameters use foreach.
    fused = cfg.fused and all(kind is None for _, kind in groups)
    return torch.optim.AdamW(
        param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None, foreach=None if fused else True
    )


def build_sharded_optimizer(params: list[torch.nn.Parameter], cfg, group: dist.ProcessGroup,
                            decays: Optional[Callable[[torch.nn.Parameter], bool]] = None) -> ShardedOptimizer:
    """ZeRO-1: this rank's AdamW over its share of the parameters only, the others' updates broadcast."""
    return ShardedOptimizer(params, functools.partial(build_optimizer, cfg=cfg, decays=decays), group)


def lr_at(step: int, cfg, max_steps: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at max_steps (or constant)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or max_steps <= cfg.warmup_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / (max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
