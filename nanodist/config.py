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
from omegaconf import MISSING

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


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
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # Where this run writes; Hydra sets it to the job's output dir.
    output_dir: str = "${hydra:runtime.output_dir}"


def register_configs() -> None:
    """Make `Config` the schema that conf/config.yaml is merged into."""
    ConfigStore.instance().store(name="nanodist_schema", node=Config)


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
    if not p.tensor_parallel and sizes["tp"] > 1:
        raise ConfigError(f"mesh.tp={sizes['tp']} needs a tensor-parallel strategy; pick parallel=tp, tp_sp or fsdp_tp.")
    if p.data_parallel == "none" and dp > 1:
        raise ConfigError(f"a data-parallel mesh of {dp} needs a data-parallel strategy; pick parallel=ddp, fsdp or hsdp.")
    if p.data_parallel == "ddp" and sizes["dp_shard"] > 1:
        raise ConfigError("parallel=ddp replicates the model; size it with mesh.dp_replicate (or mesh=N), not mesh.dp_shard.")
