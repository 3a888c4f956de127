"""The checks that run before any process starts: `validate` rejects an impossible combination in
one sentence (`ConfigError`), saying what is wrong and how to fix it, so no rank is ever spawned
for a run that cannot work.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from nanodist.config.resolvers import resolved_mesh
from nanodist.config.schema import MESH_DIMS, PP_SCHEDULES, ConfigError


def validate_pipeline(cfg: Any, pp: int, dp: int) -> None:
    """The pipeline checks of `validate`: schedule, stage count and layout, microbatches, tied weights."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    pc = p.pp
    if pc.schedule not in PP_SCHEDULES:
        raise ConfigError(f"parallel.pp.schedule={pc.schedule} is not a pipeline schedule; pick one of {', '.join(PP_SCHEDULES)}.")
    if pc.schedule == "DualPipeV":
        import torch.distributed.pipelining as pipelining

        if not hasattr(pipelining, "ScheduleDualPipeV"):
            raise ConfigError("parallel.pp.schedule=DualPipeV needs a newer torch than this one; pick ZBVZeroBubble.")
    if pp < 2:
        raise ConfigError(f"parallel={p.name} pipelines over mesh.pp ranks but mesh.pp={pp}; set mesh.pp=2 or more.")
    if m.tie_embeddings:
        raise ConfigError(
            "model.tie_embeddings=true would split the tied embedding and head across pipeline stages; "
            "set model.tie_embeddings=false."
        )
    if p.data_parallel == "ddp":
        raise ConfigError(f"parallel={p.name} cannot use DDP inside pipeline stages; set parallel.data_parallel=fsdp.")
    kind, spr = PP_SCHEDULES[pc.schedule], pc.stages_per_rank
    wanted = {"single": "exactly 1", "looped": "at least 2", "v": "exactly 2"}[kind]
    if (kind == "single" and spr != 1) or (kind == "looped" and spr < 2) or (kind == "v" and spr != 2):
        raise ConfigError(f"parallel.pp.schedule={pc.schedule} needs parallel.pp.stages_per_rank {wanted}, not {spr}.")
    n_stages = pp * spr
    if n_stages > m.n_layer:
        raise ConfigError(
            f"{n_stages} pipeline stages (mesh.pp={pp} x parallel.pp.stages_per_rank={spr}) need at least one layer "
            f"each but model.n_layer={m.n_layer}; use fewer stages or more layers."
        )
    layout = list(pc.layers_per_stage)
    if layout and (len(layout) != n_stages or min(layout) < 1 or sum(layout) != m.n_layer):
        raise ConfigError(
            f"parallel.pp.layers_per_stage={layout} must give {n_stages} stages at least one layer each, "
            f"{m.n_layer} in all; fix it or leave it empty for an even split."
        )
    micro = t.batch_size // (dp * t.grad_accum)
    n = pipeline_microbatches(cfg, dp)
    if n < 1 or micro % n:
        raise ConfigError(
            f"parallel.pp.n_microbatches={n} does not divide the per-rank micro-batch of {micro} sequences "
            f"(train.batch_size / (data-parallel ranks x train.grad_accum)); pick a divisor of {micro}."
        )
    rounds = max(1, n // pp)
    if pc.schedule == "1F1B" and n < pp:
        raise ConfigError(f"parallel.pp.schedule=1F1B needs parallel.pp.n_microbatches >= mesh.pp={pp}, not {n}.")
    if pc.schedule in ("Interleaved1F1B", "InterleavedZeroBubble") and n % rounds:
        raise ConfigError(
            f"parallel.pp.schedule={pc.schedule} runs microbatches in rounds of mesh.pp={pp}, so "
            f"parallel.pp.n_microbatches={n} must be a multiple of {rounds}."
        )
    if pc.schedule == "DualPipeV" and n < n_stages:
        raise ConfigError(f"parallel.pp.schedule=DualPipeV needs parallel.pp.n_microbatches >= its {n_stages} stages, not {n}.")


def pipeline_microbatches(cfg: Any, dp: int) -> int:
    """parallel.pp.n_microbatches, or by default the per-rank micro-batch: one sequence per microbatch."""
    n = cfg.parallel.pp.n_microbatches
    return n if n is not None else cfg.train.batch_size // (dp * cfg.train.grad_accum)


def validate_tensor_parallel(cfg: Any, tp: int, seq_len: int) -> None:
    """The tensor-parallel checks of `validate` that need no data: heads and sequence split over tp."""
    m, p = cfg.model, cfg.parallel
    if m.n_head % tp:
        raise ConfigError(f"model.n_head={m.n_head} is not divisible by mesh.tp={tp}; pick a tp that divides the heads.")
    if p.sequence_parallel and seq_len % tp:
        raise ConfigError(
            f"sequence parallelism splits the {seq_len}-token sequence over mesh.tp={tp}, which does not divide it; "
            "set train.seq_len to a multiple of the tp size."
        )
    if p.async_tp:
        import torch

        if not (torch.cuda.is_available() and cfg.train.compile):
            raise ConfigError("parallel.async_tp=true needs CUDA GPUs and train.compile=true; turn it off on CPU.")


def padded_vocab_size(model_cfg: Any, dataset_vocab: int) -> int:
    """The model's vocabulary: its own size or the dataset's, rounded up to model.pad_vocab_to_multiple."""
    vocab = model_cfg.vocab_size or dataset_vocab
    multiple = model_cfg.pad_vocab_to_multiple
    return (vocab + multiple - 1) // multiple * multiple


def validate_vocab(cfg: Any, dataset_vocab: int) -> None:
    """The check that needs the dataset's vocabulary: under tp the embedding and head split it evenly."""
    vocab = padded_vocab_size(cfg.model, dataset_vocab)
    tp = resolved_mesh(cfg)["tp"]
    if cfg.parallel.tensor_parallel and vocab % tp:
        raise ConfigError(
            f"the vocabulary of {vocab} tokens cannot be split over mesh.tp={tp}; pad it with "
            f"model.pad_vocab_to_multiple={tp * 8 if tp * 8 <= 64 else tp} (or 64)."
        )


def validate_checkpoint(cfg: Any) -> None:
    """The checkpoint checks of `validate` that need no files (the launcher checks `resume_from` itself)."""
    c, t = cfg.checkpoint, cfg.train
    if t.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"train.nan_policy={t.nan_policy} is not a policy; use stop or skip.")
    if c.interval < 0 or c.keep_last < 0:
        raise ConfigError("checkpoint.interval and checkpoint.keep_last must be 0 or more.")


def validate_levers(cfg: Any) -> None:
    """The speed and memory levers of `validate`: activation checkpointing, attention kernel, profiler steps."""
    t = cfg.train
    if t.activation_checkpointing not in ("none", "full", "selective"):
        raise ConfigError(f"train.activation_checkpointing={t.activation_checkpointing} is not a mode; use none, full or selective.")
    if t.ac_every < 1:
        raise ConfigError(f"train.ac_every={t.ac_every} must be at least 1; selective checkpointing takes every Nth block.")
    if t.sdpa_backend not in ("auto", "flash", "efficient", "math", "cudnn"):
        raise ConfigError(f"train.sdpa_backend={t.sdpa_backend} is not a backend; use auto, flash, efficient, math or cudnn.")
    if any(step < 0 for step in t.profile_steps):
        raise ConfigError(f"train.profile_steps={list(t.profile_steps)} holds a negative step; use 0-based steps as in metrics.jsonl.")


def validate(cfg: Any, world_size: Optional[int] = None) -> None:
    """Reject a configuration that cannot run, in one sentence, before any process starts.

    `world_size` is the number of processes already started (torchrun, SLURM), or None for a local
    launch, where the mesh decides how many to start.
    """
    validate_basics(cfg)
    sizes = validate_mesh(cfg, world_size)
    p, t = cfg.parallel, cfg.train
    if p.data_parallel == "fsdp" and p.name == "hsdp" and sizes["dp_replicate"] < 2:
        raise ConfigError("parallel=hsdp needs at least 2 replica groups; set mesh.dp_replicate>=2 or use parallel=fsdp.")
    dp = sizes["dp_replicate"] * sizes["dp_shard"]
    if t.batch_size % (dp * t.grad_accum):
        raise ConfigError(
            f"train.batch_size={t.batch_size} cannot be split into {dp} data-parallel ranks x {t.grad_accum} "
            f"accumulation steps; make it a multiple of {dp * t.grad_accum}."
        )
    if not p.pipeline and sizes["pp"] > 1:
        raise ConfigError(f"mesh.pp={sizes['pp']} needs a pipeline strategy; pick parallel=pp_1f1b (or another pp_*).")
    if p.pipeline:
        validate_pipeline(cfg, sizes["pp"], dp)
    if not p.tensor_parallel and sizes["tp"] > 1:
        raise ConfigError(f"mesh.tp={sizes['tp']} needs a tensor-parallel strategy; pick parallel=tp, tp_sp or fsdp_tp.")
    if p.tensor_parallel:
        validate_tensor_parallel(cfg, sizes["tp"], seq_len_of(cfg))
    if p.data_parallel == "none" and dp > 1:
        raise ConfigError(f"a data-parallel mesh of {dp} needs a data-parallel strategy; pick parallel=ddp, fsdp or hsdp.")
    if p.data_parallel == "ddp" and sizes["dp_shard"] > 1:
        raise ConfigError("parallel=ddp replicates the model; size it with mesh.dp_replicate (or mesh=N), not mesh.dp_shard.")
    validate_checkpoint(cfg)
    validate_levers(cfg)


def seq_len_of(cfg: Any) -> int:
    """Tokens per training sequence: train.seq_len, or the model's block size."""
    return cfg.train.seq_len if cfg.train.seq_len is not None else cfg.model.block_size


def validate_basics(cfg: Any) -> None:
    """The checks of `validate` on single fields: model shape, sequence length, lr, steps, batch, dtype."""
    m, t, o = cfg.model, cfg.train, cfg.optim
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; pick sizes where it is.")
    if seq_len_of(cfg) > m.block_size:
        raise ConfigError(
            f"train.seq_len={seq_len_of(cfg)} exceeds model.block_size={m.block_size}; lower train.seq_len or raise model.block_size."
        )
    if o.lr <= 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive; set e.g. optim.lr=6e-4.")
    if t.max_steps < 0:
        raise ConfigError(f"train.max_steps={t.max_steps} is negative; give the number of optimizer steps to run.")
    if t.grad_accum < 1 or t.batch_size < 1:
        raise ConfigError("train.batch_size and train.grad_accum must be at least 1.")
    if t.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"train.dtype={t.dtype} is not supported; use float32 or bfloat16.")


def validate_mesh(cfg: Any, world_size: Optional[int]) -> dict[str, int]:
    """The mesh sizes, checked against the processes started; dp_shard=-1 is inferred from them."""
    sizes = resolved_mesh(cfg)
    for dim, size in sizes.items():
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{dim}={size} is not a size; use a positive number (or -1 for dp_shard).")
    inferred = [d for d, s in sizes.items() if s == -1]
    if inferred and inferred != ["dp_shard"]:
        raise ConfigError(f"only mesh.dp_shard may be -1 (inferred), not {', '.join('mesh.' + d for d in inferred)}.")
    known = math.prod(s for s in sizes.values() if s != -1)
    if inferred:
        if world_size is None:
            raise ConfigError(
                "mesh.dp_shard=-1 can only be inferred under torchrun or SLURM; give its size, e.g. mesh.dp_shard=2."
            )
        if world_size % known:
            raise ConfigError(f"{world_size} processes cannot be split over the fixed mesh dims of product {known}.")
        sizes["dp_shard"] = world_size // known
    elif world_size is not None and known != world_size:
        raise ConfigError(
            f"the mesh {'x'.join(str(sizes[d]) for d in MESH_DIMS)} (pp x dp_replicate x dp_shard x tp) needs "
            f"{known} processes but {world_size} were started; make their product {world_size}."
        )
    return sizes
