"""The checks that run before any process starts: `validate` rejects an impossible combination in
one sentence (`ConfigError`), saying what is wrong and how to fix it, so no rank is ever spawned
for a run that cannot work.

Single fields are held to the domains schema.py declares beside them (`validate_domains`); what
is written out here relates fields of different groups or needs the mesh, the data or torch.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from nanodist.config.domains import domain_errors
from nanodist.config.resolvers import resolved_mesh
from nanodist.config.schema import MESH_DIMS, PP_SCHEDULES, Config, ConfigError


def validate_pipeline(cfg: Any, pp: int, dp: int) -> None:
    """The pipeline checks of `validate`: schedule, stage count and layout, microbatches."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    pc = p.pp
    if pc.schedule == "DualPipeV":
        import torch.distributed.pipelining as pipelining

        if not hasattr(pipelining, "ScheduleDualPipeV"):
            raise ConfigError("parallel.pp.schedule=DualPipeV needs a newer torch than this one; pick ZBVZeroBubble.")
    if pp < 2:
        raise ConfigError(f"parallel={p.name} pipelines over mesh.pp ranks but mesh.pp={pp}; set mesh.pp=2 or more.")
    if p.data_parallel == "ddp":
        raise ConfigError(f"parallel={p.name} cannot use DDP inside pipeline stages; set parallel.data_parallel=fsdp.")
    kind, spr = PP_SCHEDULES[pc.schedule], pc.stages_per_rank
    wanted = {"single": "exactly 1", "looped": "at least 2", "v": "exactly 2"}[kind]
    if (kind == "single" and spr != 1) or (kind == "looped" and spr < 2) or (kind == "v" and spr != 2):
        raise ConfigError(f"parallel.pp.schedule={pc.schedule} needs parallel.pp.stages_per_rank {wanted}, not {spr}.")
    if kind == "v" and m.tie_embeddings and p.data_parallel == "fsdp":
        raise ConfigError(
            f"parallel.pp.schedule={pc.schedule} puts the first and last stage on one rank, where FSDP cannot share "
            "the tied embedding between two stages; set model.tie_embeddings=false or pick a 1F1B or interleaved schedule."
        )
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
    # Accumulation micro-steps run as more microbatches of one schedule step (nanodist.parallel.pp).
    total, named = n * t.grad_accum, "parallel.pp.n_microbatches x train.grad_accum"
    rounds = max(1, total // pp)
    if pc.schedule == "1F1B" and total < pp:
        raise ConfigError(f"parallel.pp.schedule=1F1B needs {named} >= mesh.pp={pp}, not {total}.")
    if pc.schedule in ("Interleaved1F1B", "InterleavedZeroBubble") and total % rounds:
        raise ConfigError(
            f"parallel.pp.schedule={pc.schedule} runs microbatches in rounds of mesh.pp={pp}, so "
            f"{named}={total} must be a multiple of {rounds}."
        )
    if pc.schedule == "DualPipeV" and total < n_stages:
        raise ConfigError(f"parallel.pp.schedule=DualPipeV needs {named} >= its {n_stages} stages, not {total}.")


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


def validate_context_parallel(cfg: Any, sizes: dict[str, int], seq_len: int) -> None:
    """The context-parallel checks of `validate`: the cp size, the chunk layout, and what cp cannot combine with."""
    p, cp = cfg.parallel, sizes["cp"]
    if cp < 2:
        raise ConfigError(f"parallel={p.name} splits sequences over mesh.cp ranks but mesh.cp={cp}; set mesh.cp=2 or more.")
    if seq_len % (2 * cp):
        raise ConfigError(
            f"context parallelism cuts each {seq_len}-token sequence into 2 x mesh.cp = {2 * cp} equal chunks, which "
            f"does not divide it; set train.seq_len to a multiple of {2 * cp}."
        )
    if cfg.model.dropout > 0:
        raise ConfigError(
            f"model.dropout={cfg.model.dropout} cannot match one process under context parallelism (each rank would "
            "draw attention and residual masks for its own chunks only); set model.dropout=0."
        )
    if p.data_parallel == "ddp" or sizes["dp_replicate"] > 1:
        raise ConfigError("context parallelism shards over dp_shard x cp with FSDP; use mesh.dp_shard and parallel=fsdp_cp, not DDP or HSDP.")
    if p.data_parallel == "none" and (p.pipeline or p.tensor_parallel):
        raise ConfigError(
            f"parallel={p.name} reduces gradients over cp with DDP only for plain cp; with pipelining or tensor "
            "parallelism set parallel.data_parallel=fsdp (parallel=pp_cp or fsdp_tp_cp)."
        )
    if cfg.train.compile:
        raise ConfigError("train.compile=true does not combine with context parallelism (its attention's ring "
                          "collectives run eagerly); set train.compile=false.")


def validate_implementation(cfg: Any) -> None:
    """The checks of `validate` for nanodist's own implementations (`parallel.implementation=reference`)
    and for ZeRO-1: what they cover, and what they leave to the native strategies."""
    p, t = cfg.parallel, cfg.train
    if p.shard_optimizer and (p.data_parallel != "ddp" or p.pipeline):
        raise ConfigError(
            f"parallel.shard_optimizer=true (ZeRO-1) shards the optimizer over DDP replicas, which parallel={p.name} "
            "does not have; use parallel=zero1, or parallel=fsdp for sharded gradients and weights too."
        )
    if p.implementation != "reference":
        return
    why = None
    if p.pipeline or p.context_parallel:
        why = "covers data and tensor parallelism only; use parallel.implementation=native for pipelines and context parallelism"
    elif p.data_parallel == "none" and not p.tensor_parallel:
        why = "has nothing to replace in a single-process layout; pick ddp, fsdp, hsdp, tp, tp_sp, fsdp_tp, ddp_tp or zero1"
    elif t.compile or p.async_tp:
        why = "runs eagerly (its collectives are Python hooks); set train.compile=false and parallel.async_tp=false"
    elif p.fsdp.cpu_offload and p.data_parallel == "fsdp":
        why = "keeps shards on the training device; set parallel.fsdp.cpu_offload=false"
    elif cfg.checkpoint.init_from:
        why = ("does not load Hugging Face weights; start with parallel.implementation=native and resume its "
               "checkpoint (checkpoint.resume_from) under reference")
    elif t.fused_loss_chunk and p.data_parallel == "fsdp":
        why = "gathers the head's weight only around its forward, not inside a fused loss; set train.fused_loss_chunk=0"
    if why:
        raise ConfigError(f"parallel.implementation=reference with parallel={p.name} {why}.")


def padded_vocab_size(model_cfg: Any, dataset_vocab: int) -> int:
    """The model's vocabulary: its own size or the dataset's, rounded up to model.pad_vocab_to_multiple."""
    vocab = model_cfg.vocab_size or dataset_vocab
    multiple = model_cfg.pad_vocab_to_multiple
    return (vocab + multiple - 1) // multiple * multiple


def validate_vocab(cfg: Any, dataset_vocab: int) -> None:
    """The checks that need the dataset's vocabulary: the model has a row for every token id, and
    under tp the embedding and head split it evenly."""
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < dataset_vocab:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than data={cfg.data.name}'s {dataset_vocab} tokens; "
            f"set model.vocab_size={dataset_vocab} or more, or null to take the data's."
        )
    vocab = padded_vocab_size(cfg.model, dataset_vocab)
    tp = resolved_mesh(cfg)["tp"]
    if cfg.parallel.tensor_parallel and vocab % tp:
        raise ConfigError(
            f"the vocabulary of {vocab} tokens cannot be split over mesh.tp={tp}; pad it with "
            f"model.pad_vocab_to_multiple={tp * 8 if tp * 8 <= 64 else tp} (or 64)."
        )


def validate(cfg: Any, world_size: Optional[int] = None) -> None:
    """Reject a configuration that cannot run, in one sentence, before any process starts.

    `world_size` is the number of processes already started (torchrun, SLURM), or None for a local
    launch, where the mesh decides how many to start.
    """
    validate_domains(cfg)
    validate_relations(cfg, world_size)


def validate_relations(cfg: Any, world_size: Optional[int] = None) -> None:
    """`validate` without the per-field domains: for a planner trying many layouts of one checked config."""
    validate_basics(cfg)
    validate_implementation(cfg)
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
    if not p.context_parallel and sizes["cp"] > 1:
        raise ConfigError(f"mesh.cp={sizes['cp']} needs a context-parallel strategy; pick parallel=cp, fsdp_cp, fsdp_tp_cp or pp_cp.")
    if p.context_parallel:
        validate_context_parallel(cfg, sizes, seq_len_of(cfg))
    if p.tensor_parallel:  # under cp, sequence parallelism splits each rank's share of the sequence
        validate_tensor_parallel(cfg, sizes["tp"], seq_len_of(cfg) // sizes["cp"])
    if p.data_parallel == "none" and dp > 1:
        raise ConfigError(f"a data-parallel mesh of {dp} needs a data-parallel strategy; pick parallel=ddp, fsdp or hsdp.")
    if p.data_parallel == "ddp" and sizes["dp_shard"] > 1:
        raise ConfigError("parallel=ddp replicates the model; size it with mesh.dp_replicate (or mesh=N), not mesh.dp_shard.")
    if t.fused_loss_chunk and (p.tensor_parallel or p.pipeline or p.context_parallel):
        raise ConfigError(
            f"train.fused_loss_chunk={t.fused_loss_chunk} fuses the head into the loss on one rank's whole logits, "
            f"which parallel={p.name} splits; set train.fused_loss_chunk=0."
        )


def validate_domains(cfg: Any) -> None:
    """Every field's value against the domain schema.py declares for it; the first misfit is the error."""
    for error in domain_errors(cfg, Config):
        raise ConfigError(error)


def seq_len_of(cfg: Any) -> int:
    """Tokens per training sequence: train.seq_len, or the model's block size."""
    return cfg.train.seq_len if cfg.train.seq_len is not None else cfg.model.block_size


def validate_basics(cfg: Any) -> None:
    """The checks of `validate` that relate two fields of different groups: model shape, sequence length."""
    m = cfg.model
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; pick sizes where it is.")
    if seq_len_of(cfg) > m.block_size:
        raise ConfigError(
            f"train.seq_len={seq_len_of(cfg)} exceeds model.block_size={m.block_size}; lower train.seq_len or raise model.block_size."
        )


def validate_mesh(cfg: Any, world_size: Optional[int]) -> dict[str, int]:
    """The mesh sizes, checked against the processes started; dp_shard=-1 is inferred from them."""
    sizes = resolved_mesh(cfg)
    for dim, size in sizes.items():
        if size == 0:  # the fields' domains exclude 0, but mesh.shape may give one (mesh=0x2)
            raise ConfigError(f"mesh={cfg.mesh.shape} gives mesh.{dim}=0; use positive sizes.")
    inferred = [d for d, s in sizes.items() if s == -1]
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
            f"the mesh {'x'.join(str(sizes[d]) for d in MESH_DIMS)} (pp x dp_replicate x dp_shard x cp x tp) needs "
            f"{known} processes but {world_size} were started; make their product {world_size}."
        )
    return sizes
