"""Typed configuration: the dataclasses behind conf/, and the checks that run before any process starts.

Hydra composes conf/ on top of `Config`, so a mistyped key or a wrong type fails at composition.
`validate` then rejects impossible combinations with one sentence each (`ConfigError`), so that a
user learns what is wrong and how to fix it before any rank is spawned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
# Pipeline schedules (torch's names) by stage placement: one stage per rank, looped (stage s on
# rank s % pp, several per rank) or V-shaped (rank r holds stages r and 2pp-1-r).
PP_SCHEDULES = {
    "GPipe": "single",
    "1F1B": "single",
    "Interleaved1F1B": "looped",
    "LoopedBFS": "looped",
    "InterleavedZeroBubble": "looped",
    "ZBVZeroBubble": "v",
    "DualPipeV": "v",
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one sentence saying what to change."""


@dataclass
class ModelConfig:
    name: str = MISSING
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    block_size: int = MISSING
    # null: take the vocabulary size from the dataset's meta file.
    vocab_size: Optional[int] = None
    # Round the vocabulary up to a multiple of this (64 is the classic speed-up; tp needs divisibility).
    pad_vocab_to_multiple: int = 1
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True


@dataclass
class DataConfig:
    name: str = MISSING
    # "char", "gpt2" or "none" (synthetic data needs no tokenizer).
    tokenizer: str = "gpt2"
    # Folder holding train.bin / val.bin / meta.json; relative paths are taken from the project root.
    dir: str = "data/${data.name}"
    # A local copy of the raw source (file or folder); null: $NANODIST_DATA_MIRROR, then the internet.
    source: Optional[str] = None
    # A local GPT-2 tiktoken ranks file; null: $NANODIST_TIKTOKEN_FILE, then tiktoken's own download.
    tokenizer_file: Optional[str] = None
    # Stop preparing after this many bytes of raw text (big corpora); null: all of it.
    max_bytes: Optional[int] = None
    # Synthetic data only: vocabulary size of the random tokens.
    synthetic_vocab_size: int = 50257


@dataclass
class FSDPConfig:
    reshard_after_forward: bool = True
    # null: keep the parameters' dtype. "bfloat16" / "float32".
    param_dtype: Optional[str] = None
    reduce_dtype: Optional[str] = None
    cpu_offload: bool = False


@dataclass
class PipelineConfig:
    # GPipe, 1F1B, Interleaved1F1B, LoopedBFS, InterleavedZeroBubble, ZBVZeroBubble, DualPipeV.
    schedule: str = "1F1B"
    n_microbatches: int = 4
    # Stages held by each pp rank (>1 for the looped, interleaved and V schedules).
    stages_per_rank: int = 1
    # Layers of each stage, first to last; empty: split evenly.
    layers_per_stage: list[int] = field(default_factory=list)


@dataclass
class ParallelConfig:
    name: str = "single"
    # The mesh dims this strategy uses, in canonical order; `mesh=AxB` fills them.
    mesh_dims: list[str] = field(default_factory=list)
    # "none", "ddp", "fsdp" (dp_shard, and dp_replicate too for HSDP).
    data_parallel: str = "none"
    tensor_parallel: bool = False
    sequence_parallel: bool = False
    loss_parallel: bool = False
    async_tp: bool = False
    pipeline: bool = False
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    pp: PipelineConfig = field(default_factory=PipelineConfig)


@dataclass
class MeshConfig:
    # "2", "2x2", "2x2x2": sizes for parallel.mesh_dims, in order. null: use the fields below.
    shape: Optional[str] = None
    pp: int = 1
    dp_replicate: int = 1
    # -1: infer from the number of processes (only under torchrun or SLURM, where it is known).
    dp_shard: int = 1
    tp: int = 1


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 100
    # "cosine" or "constant" after warmup.
    schedule: str = "cosine"
    # Use the fused (or foreach) AdamW kernels where the device has them.
    fused: bool = True


@dataclass
class TrainConfig:
    max_steps: int = 2000
    # Sequences per optimizer step, over all data-parallel ranks and accumulation steps.
    batch_size: int = 12
    grad_accum: int = 1
    # Tokens per sequence; null: the model's block size.
    seq_len: Optional[int] = None
    seed: int = 1337
    # "auto" (CUDA when present), "cpu" or "cuda".
    device: str = "auto"
    # "float32" or "bfloat16" (autocast; parameters stay fp32).
    dtype: str = "float32"
    log_interval: int = 10
    eval_interval: int = 250
    eval_iters: int = 20
    sample_tokens: int = 200
    sample_prompt: str = "\n"
    # Local launches: restart all ranks up to this many times after one dies (resuming from a checkpoint).
    max_restarts: int = 0
    # A NaN or inf loss (or gradient norm): "stop" the run, keeping the last good checkpoint, or
    # "skip" the update and go on.
    nan_policy: str = "stop"
    # torch.compile each transformer block and the loss (inductor; on CPU it needs a C++ compiler).
    compile: bool = False
    # Recompute block activations in backward instead of keeping them: "none", "full" (every
    # block) or "selective" (every `ac_every`-th block).
    activation_checkpointing: str = "none"
    ac_every: int = 2
    # Attention kernel: "auto" (PyTorch picks), "flash", "efficient", "math" or "cudnn".
    sdpa_backend: str = "auto"
    # TF32 matmuls on GPU (ignored on CPU).
    tf32: bool = True
    # Steps (0-based, as in metrics.jsonl) to trace with torch.profiler into <output_dir>/profile/rank<r>/.
    profile_steps: list[int] = field(default_factory=list)


@dataclass
class LoggerConfig:
    # "wandb", "tensorboard" or "none"; metrics.jsonl is written in every case.
    name: str = "none"
    # wandb: "offline" (default, files stay in the job dir), "online" or "disabled".
    mode: str = "offline"
    project: str = "nanodist"
    group: Optional[str] = None


@dataclass
class LauncherConfig:
    # Local runs start this many processes per node when no torchrun/SLURM environment is found;
    # null: the mesh's product.
    nproc: Optional[int] = None
    # Rendezvous port for locally started ranks; 0 picks a free one.
    master_port: int = 0


@dataclass
class CheckpointConfig:
    # Checkpoints go to <output_dir>/checkpoints, every `interval` steps (0: only at the end) and at the end.
    enabled: bool = True
    interval: int = 500
    # Keep the newest k complete checkpoints (0: all).
    keep_last: int = 3
    # Copy the state to CPU memory, then write it in a background thread while training goes on.
    async_save: bool = False
    # Start from another run's checkpoint: a step_N dir, a checkpoints dir or a run dir (its newest).
    # The run's own checkpoints, if it has any (a restart, a requeue), take precedence.
    resume_from: Optional[str] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # Where this run writes; Hydra sets it to the job's output dir.
    output_dir: str = "${hydra:runtime.output_dir}"
    # Validate the plan and print per-rank memory estimates from a meta-device model; train nothing.
    dry_run: bool = False


def register_configs() -> None:
    """Make `Config` the schema that conf/config.yaml is merged into."""
    ConfigStore.instance().store(name="nanodist_schema", node=Config)


def spread_ranks(dims: Any, ranks: int) -> Optional[str]:
    """A mesh.shape laying `ranks` (a power of two) over a strategy's mesh dims, so sweeps can say
    "at 4 ranks" for every strategy: factors of 2 go to the first dim, the last, then those between."""
    dims, ranks = list(dims), int(ranks)
    if ranks & (ranks - 1) or ranks < 1 or (not dims and ranks > 1):
        raise ConfigError(f"cannot lay {ranks} ranks over the mesh dims {dims or 'none'}; use a power of two and a parallel strategy.")
    if not dims:
        return None
    order = list(dict.fromkeys([0, len(dims) - 1, *range(1, len(dims) - 1)]))
    sizes = [1] * len(dims)
    for i in range(ranks.bit_length() - 1):
        sizes[order[i % len(order)]] *= 2
    return "x".join(map(str, sizes))


def register_resolvers() -> None:
    """The resolvers conf/ uses (mesh/ranks*.yaml, experiments). Registered on import, because a SLURM
    job resolves its config in a process where launch.py's top level never ran."""
    OmegaConf.register_new_resolver("nanodist.spread", spread_ranks, replace=True)
    OmegaConf.register_new_resolver("nanodist.mul", lambda a, b: int(a) * int(b), replace=True)
    # Run and job dir names carry the overrides; a file name holds at most 255 bytes.
    OmegaConf.register_new_resolver("nanodist.clip", lambda text, n: str(text)[: int(n)], replace=True)


register_resolvers()


def resolved_mesh(cfg: Any) -> dict[str, int]:
    """The mesh sizes after applying `mesh.shape` to the strategy's dims (may still hold -1)."""
    sizes = {dim: int(cfg.mesh[dim]) for dim in MESH_DIMS}
    if cfg.mesh.shape is not None:
        parts = str(cfg.mesh.shape).lower().split("x")
        dims = list(cfg.parallel.mesh_dims)
        if not all(p.isdigit() for p in parts) or len(parts) != len(dims):
            raise ConfigError(
                f"mesh={cfg.mesh.shape} does not fit parallel={cfg.parallel.name}, whose mesh dims are "
                f"{dims or 'none'}; give {len(dims)} sizes like mesh={'x'.join(['2'] * len(dims)) or 'single'}."
            )
        sizes.update({dim: int(p) for dim, p in zip(dims, parts)})
    return sizes


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
    n = pc.n_microbatches
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
    """The checkpoint checks of `validate`: a resume_from of another model is refused before any rank starts."""
    c, t = cfg.checkpoint, cfg.train
    if t.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"train.nan_policy={t.nan_policy} is not a policy; use stop or skip.")
    if c.interval < 0 or c.keep_last < 0:
        raise ConfigError("checkpoint.interval and checkpoint.keep_last must be 0 or more.")
    if c.resume_from:
        from nanodist.checkpoint import check_resume_from

        check_resume_from(c.resume_from, cfg.model)


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
    m, t, o, p = cfg.model, cfg.train, cfg.optim, cfg.parallel
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; pick sizes where it is.")
    seq_len = t.seq_len if t.seq_len is not None else m.block_size
    if seq_len > m.block_size:
        raise ConfigError(
            f"train.seq_len={seq_len} exceeds model.block_size={m.block_size}; lower train.seq_len or raise model.block_size."
        )
    if o.lr <= 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive; set e.g. optim.lr=6e-4.")
    if t.max_steps < 0:
        raise ConfigError(f"train.max_steps={t.max_steps} is negative; give the number of optimizer steps to run.")
    if t.grad_accum < 1 or t.batch_size < 1:
        raise ConfigError("train.batch_size and train.grad_accum must be at least 1.")
    if t.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"train.dtype={t.dtype} is not supported; use float32 or bfloat16.")

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
        validate_tensor_parallel(cfg, sizes["tp"], seq_len)
    if p.data_parallel == "none" and dp > 1:
        raise ConfigError(f"a data-parallel mesh of {dp} needs a data-parallel strategy; pick parallel=ddp, fsdp or hsdp.")
    if p.data_parallel == "ddp" and sizes["dp_shard"] > 1:
        raise ConfigError("parallel=ddp replicates the model; size it with mesh.dp_replicate (or mesh=N), not mesh.dp_shard.")
    validate_checkpoint(cfg)
    validate_levers(cfg)
