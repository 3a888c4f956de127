"""The typed configuration: the dataclasses behind conf/, so that Hydra refuses a mistyped key or a
wrong type at composition, and the domains of the fields that name things (mesh dims, schedules).

No torch at import: the launcher and the SLURM plugin compose and check configs before any rank
(or torch) starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

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
    synthetic_vocab_size: int = 50304


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
    # Microbatches per micro-step; null: one sequence each (the per-rank micro-batch), the smallest bubble.
    n_microbatches: Optional[int] = None
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

