"""The step-time model: compute, communication and pipeline bubble of one optimizer step, per rank.

- compute: the rank's share of the training FLOPs (6 N + attention per token, PaLM's count, per
  layer, so an uneven last stage holding the LM head shows) over peak x efficiency; activation
  checkpointing adds its recomputed forwards (a third of a block's FLOPs for each block recomputed).
- communication: the collectives the dry run's fake forward counted on the meta model, once per
  forward (every microbatch and accumulation step), once more as their conjugates in backward
  (all-gather <-> reduce-scatter, all-reduce <-> all-reduce) and again for recomputed blocks; plus
  the gradient all-reduce of DDP and HSDP's replicas, which the forward never issues, and the
  pipeline's point-to-point activations and gradients. A ring collective moves (n - 1) / n of its
  payload per rank (twice for all-reduce), over the intra-node bandwidth when the group stays in
  one node, else the inter-node one. Nothing is assumed to overlap with compute: an upper bound
  where FSDP prefetches or DDP buckets overlap.
- bubble: (pp - 1) / (microbatches x stages per rank) of the compute, a third of that for the
  zero-bubble schedules (ZB-H1's split backward fills two thirds of it).
"""

from __future__ import annotations

import math

from nanodist.config import MESH_DIMS, seq_len_of
from nanodist.model import GPTConfig
from nanodist.parallel.dims import ParallelDims
from nanodist.tools.collectives import parse_key
from nanodist.tools.dryrun import stage_input_tokens

ZERO_BUBBLE = ("InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")
RING_FACTOR = {"all_gather": 1, "reduce_scatter": 1, "all_to_all": 1, "all_reduce": 2}


def highest_rank(dims: dict, dim: str) -> int:
    """The highest rank in rank 0's group along `dim`: ranks are laid out in MESH_DIMS order, last fastest."""
    stride = math.prod(dims[d] for d in MESH_DIMS[MESH_DIMS.index(dim) + 1:])
    return (dims[dim] - 1) * stride


def seconds_on_link(cluster, kind: str, size: int, highest: int, payload: float) -> float:
    """One collective's time for each rank of its group: per-rank traffic over the link it spans."""
    if size < 2:
        return 0.0
    traffic = payload * (RING_FACTOR[kind] * (size - 1) / size if kind in RING_FACTOR else 1)
    gbps = cluster.intra_node_gbps if highest < cluster.gpus_per_node else cluster.inter_node_gbps
    return traffic / (gbps * 1e9)


def recompute_fraction(cfg) -> float:
    """Forwards recomputed per forward: every block under full AC, every ac_every-th under selective."""
    t = cfg.train
    return {"none": 0.0, "full": 1.0, "selective": 1.0 / t.ac_every}[t.activation_checkpointing]


def forwards_per_step(cfg, micro_batches: int) -> int:
    """Forwards each rank runs per optimizer step: accumulation steps x pipeline microbatches."""
    return cfg.train.grad_accum * micro_batches


def comm_seconds(cfg, cluster, dims: dict, position: dict, forwards: int, rows: int, config: GPTConfig) -> float:
    """Communication time of one rank position for one optimizer step."""
    passes = 2 + recompute_fraction(cfg)
    total = 0.0
    for key, payload in position["collectives"][rows].items():
        kind, size, highest = parse_key(key)
        total += seconds_on_link(cluster, kind, size, highest, payload * forwards * passes)
    p = cfg.parallel
    if p.data_parallel == "ddp" or (p.data_parallel == "fsdp" and dims["dp_replicate"] > 1):
        total += seconds_on_link(cluster, "all_reduce", dims["dp_replicate"], highest_rank(dims, "dp_replicate"),
                                 position["grad_bytes"])
    if p.pipeline:
        tokens = stage_input_tokens(cfg, ParallelDims(**dims), seq_len_of(cfg))
        width = 2 if cfg.train.dtype == "bfloat16" else 4
        sent = rows * tokens * config.n_embd * width * 2 * forwards  # activations forward, gradients back
        total += seconds_on_link(cluster, "send", 2, highest_rank(dims, "pp"), sent) * len(position["stages"])
    return total


def layer_flops_per_token(config: GPTConfig, seq: int) -> float:
    """Training FLOPs per token of one block: 6 x its 12 d^2 weights plus attention's 12 d T."""
    return 6 * 12 * config.n_embd**2 + 12 * config.n_embd * seq


def stage_flops_per_token(config: GPTConfig, seq: int, layers: int, last: bool) -> float:
    head = 6 * config.vocab_size * config.n_embd if last else 0.0
    return layers * layer_flops_per_token(config, seq) + head


def peak_flops(cfg, cluster) -> float:
    return 1e12 * (cluster.peak_tflops_bf16 if cfg.train.dtype == "bfloat16" else cluster.peak_tflops_fp32)


def compute_seconds(cfg, cluster, dims: dict, stages: list[tuple[int, bool]], config: GPTConfig) -> float:
    """One rank's compute for a step: its stages' share of the step's tokens, recomputation included."""
    seq = seq_len_of(cfg)
    tokens = cfg.train.batch_size * seq / (math.prod(dims.values()) // dims["pp"])
    flops = sum(stage_flops_per_token(config, seq, layers, last) for layers, last in stages) * tokens
    flops += recompute_fraction(cfg) / 3 * sum(layers * layer_flops_per_token(config, seq) for layers, _ in stages) * tokens
    return flops / (peak_flops(cfg, cluster) * cluster.compute_efficiency)


def bubble_fraction(cfg, dims: dict, micro_batches: int) -> float:
    """The pipeline's idle share of a step, relative to its compute."""
    if not cfg.parallel.pipeline:
        return 0.0
    pc = cfg.parallel.pp
    bubble = (dims["pp"] - 1) / (micro_batches * cfg.train.grad_accum * pc.stages_per_rank)
    return bubble / 3 if pc.schedule in ZERO_BUBBLE else bubble
