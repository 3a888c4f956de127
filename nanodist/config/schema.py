"""The typed configuration: the dataclasses behind conf/, so that Hydra refuses a mistyped key or a
wrong type at composition, and beside each field its domain (range, choices, relation to a sibling;
see nanodist.config.domains), which `validate` checks before any process starts.

No torch at import: the launcher and the SLURM plugin compose and check configs before any rank
(or torch) starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from nanodist.config.domains import Choice, Number, Text, choice, flag, integer, items, number, section, text

# Outermost first; cp sits between dp_shard and tp, as in torchtitan, so FSDP can shard over
# dp_shard x cp (adjacent dims) and tp keeps the innermost, fastest links.
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
CP_METHODS = ("ring", "allgather")
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
FSDP_DTYPES = ("bfloat16", "float32")
IMPLEMENTATIONS = ("native", "reference")


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one sentence saying what to change."""


@dataclass
class ModelConfig:
    name: str = text(MISSING, "the model's name")
    n_layer: int = integer(low=1)
    n_head: int = integer(low=1)
    n_embd: int = integer(low=1)
    block_size: int = integer(low=1)
    # null: take the vocabulary size from the dataset's meta file.
    vocab_size: Optional[int] = integer(None, low=1, nullable=True)
    # Round the vocabulary up to a multiple of this (64 is the classic speed-up; tp needs divisibility).
    pad_vocab_to_multiple: int = integer(1, low=1)
    dropout: float = number(0.0, low=0, high=1, high_open=True)
    bias: bool = flag(True)
    tie_embeddings: bool = flag(True)


@dataclass
class DataConfig:
    # The dataset (nanodist.data knows which it can prepare).
    name: str = text(MISSING, "a dataset's name")
    # "char", "gpt2" or "none" (synthetic data needs no tokenizer).
    tokenizer: str = choice("gpt2", ("char", "gpt2", "none"), "a tokenizer")
    # Folder holding train.bin / val.bin / meta.json; relative paths are taken from the project root.
    dir: str = text("data/${data.name}", "a folder")
    # A local copy of the raw source (file or folder); null: $NANODIST_DATA_MIRROR, then the internet.
    source: Optional[str] = text(None, "a file or folder", nullable=True)
    # A local GPT-2 tiktoken ranks file; null: $NANODIST_TIKTOKEN_FILE, then tiktoken's own download.
    tokenizer_file: Optional[str] = text(None, "a file", nullable=True)
    # Stop preparing after this many bytes of raw text (big corpora); null: all of it.
    max_bytes: Optional[int] = integer(None, low=1, nullable=True)
    # Worker processes tokenizing the big corpora (tinystories, openwebtext); null: the cores, at most 8.
    num_proc: Optional[int] = integer(None, low=1, nullable=True)
    # Tokens per output file: null writes one <split>.bin; a number writes <split>_0000.bin, ... shards.
    shard_tokens: Optional[int] = integer(None, low=1, nullable=True)
    # Check every token file's SHA-256 against meta.json before any rank starts (sizes are always checked).
    verify: bool = flag(False)
    # Synthetic data only: vocabulary size of the random tokens.
    synthetic_vocab_size: int = integer(50304, low=1)


@dataclass
class FSDPConfig:
    # Free each block's gathered parameters after its forward (true) or keep them for the backward
    # (false); null: automatic, false under pipelining (a stage's backward follows soon), else true.
    reshard_after_forward: Optional[bool] = flag(None, nullable=True)
    # null: keep the parameters' dtype. "bfloat16" / "float32".
    param_dtype: Optional[str] = choice(None, FSDP_DTYPES, "a dtype FSDP casts to", nullable=True)
    reduce_dtype: Optional[str] = choice(None, FSDP_DTYPES, "a dtype FSDP reduces in", nullable=True)
    cpu_offload: bool = flag(False)


@dataclass
class PipelineConfig:
    # GPipe, 1F1B, Interleaved1F1B, LoopedBFS, InterleavedZeroBubble, ZBVZeroBubble, DualPipeV.
    schedule: str = choice("1F1B", tuple(PP_SCHEDULES), "a pipeline schedule")
    # Microbatches per micro-step; null: one sequence each (the per-rank micro-batch), the smallest bubble.
    n_microbatches: Optional[int] = integer(None, low=1, nullable=True)
    # Stages held by each pp rank (>1 for the looped, interleaved and V schedules).
    stages_per_rank: int = integer(1, low=1)
    # Layers of each stage, first to last; empty: split evenly.
    layers_per_stage: list[int] = items(Number(True, low=1))


@dataclass
class ContextParallelConfig:
    # How each rank's queries meet the other ranks' keys and values: "ring" (K/V blocks passed
    # around the cp ring, merged by log-sum-exp) or "allgather" (all of K/V gathered at once).
    method: str = choice("ring", CP_METHODS, "a context-parallel attention method")


@dataclass
class DDPConfig:
    # The reference DDP all-reduces gradients in buckets of about this many MiB, each as soon as it is full.
    bucket_mb: float = number(25.0, low=0, low_open=True)


@dataclass
class ParallelConfig:
    name: str = text("single", "the strategy's name")
    # The mesh dims this strategy uses, in canonical order; `mesh=AxB` fills them.
    mesh_dims: list[str] = items(Choice(MESH_DIMS, "a mesh dim"))
    # "none", "ddp", "fsdp" (dp_shard, and dp_replicate too for HSDP).
    data_parallel: str = choice("none", ("none", "ddp", "fsdp"), "a data-parallel strategy")
    tensor_parallel: bool = flag(False)
    sequence_parallel: bool = flag(False)
    loss_parallel: bool = flag(False)
    async_tp: bool = flag(False)
    pipeline: bool = flag(False)
    # Split every sequence over mesh.cp ranks (two chunks each, head and tail) for attention.
    context_parallel: bool = flag(False)
    # ZeRO-1: each data-parallel rank keeps the optimizer state of its share of the parameters only.
    shard_optimizer: bool = flag(False)
    # "native" (torch's replicate, fully_shard, DTensor TP) or "reference" (nanodist's own, written with
    # plain collectives: nanodist.parallel.reference) for ddp, fsdp, hsdp, tp, tp_sp, fsdp_tp, ddp_tp, zero1.
    implementation: str = choice("native", IMPLEMENTATIONS, "an implementation")
    ddp: DDPConfig = section(DDPConfig)
    fsdp: FSDPConfig = section(FSDPConfig)
    pp: PipelineConfig = section(PipelineConfig)
    cp: ContextParallelConfig = section(ContextParallelConfig)


@dataclass
class MeshConfig:
    # "2", "2x2", "2x2x2": sizes for parallel.mesh_dims, in order. null: use the fields below.
    shape: Optional[str] = text(None, "sizes like 2x2", nullable=True)
    pp: int = integer(1, low=1)
    dp_replicate: int = integer(1, low=1)
    # -1: infer from the number of processes (only under torchrun or SLURM, where it is known).
    dp_shard: int = integer(1, low=1, also=(-1,))
    cp: int = integer(1, low=1)
    tp: int = integer(1, low=1)


@dataclass
class OptimConfig:
    name: str = choice("adamw", ("adamw",), "an optimizer")
    lr: float = number(1e-3, low=0, low_open=True)
    # Where the cosine ends: at most lr.
    min_lr: float = number(1e-4, low=0, high="lr")
    weight_decay: float = number(0.1, low=0)
    beta1: float = number(0.9, low=0, high=1, high_open=True)
    beta2: float = number(0.99, low=0, high=1, high_open=True)
    eps: float = number(1e-8, low=0, low_open=True)
    # Clip the global gradient norm to this; 0: no clipping.
    grad_clip: float = number(1.0, low=0)
    warmup_steps: int = integer(100, low=0)
    # "cosine" or "constant" after warmup.
    schedule: str = choice("cosine", ("cosine", "constant"), "an lr schedule")
    # Use the fused (or foreach) AdamW kernels where the device has them.
    fused: bool = flag(True)


@dataclass
class TrainConfig:
    max_steps: int = integer(2000, low=0)
    # Sequences per optimizer step, over all data-parallel ranks and accumulation steps.
    batch_size: int = integer(12, low=1)
    grad_accum: int = integer(1, low=1)
    # Tokens per sequence; null: the model's block size.
    seq_len: Optional[int] = integer(None, low=1, nullable=True)
    # Below 2**32: the weight init seeds torch generators with seed x 1_000_003 + a name hash, < 2**64.
    seed: int = integer(1337, low=0, high=2**32 - 1)
    # "auto" (CUDA when present), "cpu" or "cuda".
    device: str = choice("auto", ("auto", "cpu", "cuda"), "a device")
    # "float32" or "bfloat16" (autocast; parameters stay fp32).
    dtype: str = choice("float32", ("float32", "bfloat16"), "a supported dtype")
    log_interval: int = integer(10, low=1)
    # Evaluate every this many steps and at the end; 0: never.
    eval_interval: int = integer(250, low=0)
    # Validation batches per evaluation (train.eval_interval=0 turns evaluation off instead).
    eval_iters: int = integer(20, low=1)
    sample_tokens: int = integer(200, low=0)
    sample_prompt: str = text("\n", "a prompt", may_be_empty=True)
    # Local launches: restart all ranks up to this many times after one dies (resuming from a checkpoint).
    max_restarts: int = integer(0, low=0)
    # How long a collective may wait for its peers before it fails. Long on purpose (a first compile,
    # a checkpoint write): a rank that fails tells the others at once (nanodist.train.failure).
    collective_timeout_s: int = integer(600, low=1)
    # Tests' fault injection, "RANK:STEP:PHASE:KIND": PHASE step|eval|save|write, KIND raise|kill|enospc
    # (e.g. "1:3:step:raise"; nanodist.train.faults).
    fault: Optional[str] = text(None, "a fault spec", nullable=True)
    # A NaN or inf loss (or gradient norm): "stop" the run, keeping the last good checkpoint, or
    # "skip" the update and go on.
    nan_policy: str = choice("stop", ("stop", "skip"), "a policy")
    # torch.compile each transformer block and the loss (inductor; on CPU it needs a C++ compiler).
    compile: bool = flag(False)
    # Recompute block activations in backward instead of keeping them: "none", "full" (every
    # block) or "selective" (every `ac_every`-th block).
    activation_checkpointing: str = choice("none", ("none", "full", "selective"), "a mode")
    ac_every: int = integer(2, low=1)
    # Attention kernel: "auto" (PyTorch picks), "flash", "efficient", "math" or "cudnn".
    sdpa_backend: str = choice("auto", ("auto", "flash", "efficient", "math", "cudnn"), "a backend")
    # TF32 matmuls on GPU (ignored on CPU).
    tf32: bool = flag(True)
    # 0: the LM head's full logits, then the loss. N: the head and the loss fused, N tokens at a time
    # (never all of the fp32 logits at once; nanodist.model.loss). Whole-model layouts only (no tp, pp, cp).
    fused_loss_chunk: int = integer(0, low=0)
    # Steps (0-based, as in metrics.jsonl) to trace with torch.profiler into <output_dir>/profile/rank<r>/.
    profile_steps: list[int] = items(Number(True, low=0))


@dataclass
class LoggerConfig:
    # "wandb", "tensorboard" or "none"; metrics.jsonl is written in every case.
    name: str = choice("none", ("none", "wandb", "tensorboard"), "a logger")
    # wandb: "offline" (default, files stay in the job dir), "online" or "disabled".
    mode: str = choice("offline", ("offline", "online", "disabled"), "a wandb mode")
    project: str = text("nanodist", "a project name")
    group: Optional[str] = text(None, "a group name", nullable=True)


@dataclass
class LauncherConfig:
    # Local runs start this many processes per node when no torchrun/SLURM environment is found;
    # null: the mesh's product.
    nproc: Optional[int] = integer(None, low=1, nullable=True)
    # Rendezvous port for locally started ranks; 0 picks a free one.
    master_port: int = integer(0, low=0, high=65535)


@dataclass
class CheckpointConfig:
    # Checkpoints go to <output_dir>/checkpoints, every `interval` steps (0: only at the end) and at the end.
    enabled: bool = flag(True)
    interval: int = integer(500, low=0)
    # Keep the newest k complete checkpoints (0: all).
    keep_last: int = integer(3, low=0)
    # Copy the state to CPU memory, then write it in a background thread while training goes on.
    async_save: bool = flag(False)
    # Start from another run's checkpoint: a step_N dir, a checkpoints dir or a run dir (its newest).
    # The run's own checkpoints, if it has any (a restart, a requeue), take precedence.
    resume_from: Optional[str] = text(None, "a checkpoint or run dir", nullable=True)
    # Start from pretrained weights: a Hugging Face GPT-2 directory (config.json + model.safetensors or
    # pytorch_model.bin, as our export writes and the hub's gpt2* repos hold) or, with network, a hub name.
    init_from: Optional[str] = text(None, "a Hugging Face GPT-2 dir or hub name", nullable=True)


@dataclass
class ClusterConfig:
    """The machines a plan is for (conf/cluster/): what `python -m nanodist.plan` and `plan.prune` fit layouts into."""

    name: str = text("custom", "the cluster's name")
    # Accelerators (ranks) in all, and per node: a collective inside one node uses the intra-node bandwidth.
    gpus: int = integer(8, low=1)
    gpus_per_node: int = integer(8, low=1)
    # Memory per accelerator; a layout fits when its per-rank estimate stays below this less the reserve.
    gpu_memory_gb: float = number(80.0, low=0, low_open=True)
    # Held back for what the estimate leaves out: temporaries, the allocator's caching, CUDA context, buffers.
    memory_reserve_gb: float = number(4.0, low=0)
    # Dense peak FLOP/s per accelerator (in TFLOP/s) for bfloat16 and float32 steps.
    peak_tflops_bf16: float = number(989.0, low=0, low_open=True)
    peak_tflops_fp32: float = number(494.0, low=0, low_open=True)
    # Achieved / peak in the matmul-bound part of a step (calibrate: benchmarks/calibrate_plan.py).
    compute_efficiency: float = number(0.4, low=0, high=1, low_open=True)
    # Per-rank bus bandwidth of collectives inside one node and across nodes, GB/s.
    intra_node_gbps: float = number(450.0, low=0, low_open=True)
    inter_node_gbps: float = number(50.0, low=0, low_open=True)


@dataclass
class PlanConfig:
    # Sweeps: skip grid points the planner finds infeasible (invalid, or over the cluster's memory), with the reason.
    prune: bool = flag(False)
    # Ranked layouts printed in full, and emitted as a ready multirun.
    top_k: int = integer(5, low=1)
    # Strategies to consider (conf/parallel/ option names); empty: every option in the group.
    strategies: list[str] = items(Text("a strategy's name (a conf/parallel/ option)"))
    # Activation checkpointing modes tried per layout; empty: none and full (selective builds every block: slower).
    activation_checkpointing: list[str] = items(Choice(("none", "full", "selective"), "a mode"))
    # Gradient accumulation steps tried (those that divide the batch); empty: train.grad_accum alone.
    grad_accum: list[int] = items(Number(True, low=1))
    # Pipelines: parallel.pp.n_microbatches tried, as multiples of mesh.pp (empty: 1, 2 and 4), besides
    # the default of one sequence per microbatch.
    microbatches_per_stage: list[int] = items(Number(True, low=1))


@dataclass
class Config:
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    parallel: ParallelConfig = section(ParallelConfig)
    mesh: MeshConfig = section(MeshConfig)
    optim: OptimConfig = section(OptimConfig)
    train: TrainConfig = section(TrainConfig)
    logger: LoggerConfig = section(LoggerConfig)
    launcher: LauncherConfig = section(LauncherConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)
    cluster: ClusterConfig = section(ClusterConfig)
    plan: PlanConfig = section(PlanConfig)
    # Where this run writes; Hydra sets it to the job's output dir.
    output_dir: str = text("${hydra:runtime.output_dir}", "a folder")
    # Validate the plan and print per-rank memory estimates from a meta-device model; train nothing.
    dry_run: bool = flag(False)


def register_configs() -> None:
    """Make `Config` the schema that conf/config.yaml is merged into."""
    ConfigStore.instance().store(name="nanodist_schema", node=Config)

