"""Dry run: check a plan for any number of ranks in one CPU process, and say what each rank would hold.

`python launch.py dry_run=true ...` validates the config as a launch would, joins a fake process
group as rank 0 of the full world (collectives return at once without data) and builds the mesh;
then, for each pipeline rank, it builds that rank's stages exactly as training does (the same
`apply_on_meta`: TP, activation checkpointing, FSDP) on the meta device, and reads off:

- parameter bytes: the rank's local shards, exact;
- gradient bytes: the same shards (gradients take their parameter's layout and dtype);
- optimizer bytes: AdamW's exp_avg and exp_avg_sq per parameter shard, plus its 4-byte step;
- activation bytes: one micro-batch forward run on fake tensors (shapes only, no memory) under the
  same saved-tensor meter that training uses, times the microbatches a pipeline stage holds at once;
  under context parallelism on this rank's 1/cp of each sequence, through the cp attention itself
  (so what the ring or the all-gather keeps of the other ranks' K/V is counted).

Pipeline ranks differ only in the stages they hold, so one process group serves them all: the
figures are those of each pp rank's first rank (dp and tp coordinates 0), which holds FSDP's
largest shards (uneven splits pad the last ranks), its stage's worst case. torch.compile is left
out: it changes no shard and saves at most as many activations, so the eager figure bounds a
compiled run's.

The same fake forward counts the collectives the rank issues (`nanodist.tools.collectives`), for
the planner's step-time model. Speed, for the planner's hundreds of layouts: a stage of L alike
blocks is measured from its first block and one block's share (every figure is a sum over modules,
so f(L) = f(1) + (L - 1) x block exactly; `stage_figures`), stages already measured for one layout are reused
by its other pipeline ranks, and one build serves every micro-batch size asked for. Two more
extrapolations, both exact because each figure is a sum of like terms:

- micro-batch rows: every saved tensor and collective payload is either proportional to the rows
  (activations, TP/SP/CP exchanges) or independent of them (FSDP's gathers, autocast's weight
  copies), so a stage needed at more than three sizes (pipelines try four microbatch counts) is run
  at 2 and 3 rows, f(r) = f(2) + (r - 2) (f(3) - f(2)), and at 1 row where that is needed: one row
  is not on the line (a few bytes off: ops keep size-1 dims differently);
- context parallelism's ring runs one step per cp rank, each step past the first adding the same
  K/V exchange and nothing saved for backward (RingAttention keeps only this rank's q, k, v, output
  and log-sum-exp), so a ring of more than FULL_RING_UP_TO ranks is run as rings of 1 and 2 steps
  over the same chunks, f(cp) = f(1) + (cp - 1) (f(2) - f(1)): a gpt2_xl block forward at cp=256
  takes a fraction of a second instead of 50 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import OmegaConf
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor.parallel import loss_parallel

from nanodist.config import (
    MESH_DIMS,
    ConfigError,
    pipeline_microbatches,
    seq_len_of,
    validate_vocab,
)
from nanodist.data import GPT2Tokenizer, is_prepared, read_meta
from nanodist.model import GPT, GPTConfig, cross_entropy, gpt_config, num_params
from nanodist.parallel.cp_attention import ContextParallelAttention, SequenceLayout
from nanodist.parallel.dims import ParallelDims
from nanodist.parallel.parallelize import apply_on_meta
from nanodist.parallel.pp import build_stage_model, split_layers, stage_ids
from nanodist.parallel.tensors import local_bytes
from nanodist.tools.collectives import CollectiveBytes
from nanodist.train.meters import SavedActivations

# AdamW keeps a scalar float32 `step` tensor per parameter next to its two moment buffers.
ADAM_STEP_BYTES = 4
# Longer cp rings are measured from rings of 1 and 2 steps, and a stage needed at more micro-batch
# sizes than this from 2 and 3 rows (see the module's docstring).
FULL_RING_UP_TO = 2
MEASURED_SIZES_UP_TO = 3
GIB = 2**30


def dry_run(cfg) -> dict:
    """Estimate every pipeline stage's memory per rank, print the table, write dry_run.json."""
    start = time.perf_counter()
    cfg = OmegaConf.merge(cfg, {"train": {"compile": False}})
    dims = ParallelDims.from_config(cfg)
    vocab = vocab_size(cfg)
    validate_vocab(cfg, vocab)
    config = gpt_config(cfg, vocab)
    with fake_process_group(0, dims.world_size):
        estimates = estimate_layout(cfg, dims, config)
    report = {
        "status": "dry_run",
        "world_size": dims.world_size,
        "mesh": {dim: getattr(dims, dim) for dim in MESH_DIMS},
        "parallel": cfg.parallel.name,
        "model": cfg.model.name,
        "params": num_params(config),
        "micro_batch": micro_batch(cfg, dims),
        "ranks": estimates,
        "seconds": time.perf_counter() - start,
    }
    print(format_report(report, cfg, config))
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    Path(cfg.output_dir, "dry_run.json").write_text(json.dumps(report, indent=1))
    return report


def estimate_layout(cfg, dims: ParallelDims, config: GPTConfig) -> list[dict]:
    """One record per pipeline rank (its first rank), inside a fake process group of the full world."""
    mesh = dims.build_mesh("cpu")
    rows, built = micro_batch(cfg, dims), {}
    records = []
    for pp_rank in range(dims.pp):
        position = estimate_position(cfg, dims, mesh, config, pp_rank, [rows], built)
        records.append(layout_record(cfg, dims, position, rows))
    return records


def layout_record(cfg, dims: ParallelDims, position: dict, rows: int) -> dict:
    """A rank position's figures for one micro-batch size: its state, and its stages' activations
    times the microbatches each holds at its peak."""
    per_stage = position["activations"][rows]
    activations = sum(b * in_flight(cfg, dims, stage) for stage, b in zip(position["stages"], per_stage))
    record = {k: position[k] for k in ("rank", "stages", "param_bytes", "grad_bytes", "optim_bytes")}
    return {**record, "activation_bytes": activations, "collectives": position["collectives"][rows]}


def vocab_size(cfg) -> int:
    """The vocabulary without preparing any data: the config's, the prepared dataset's, or GPT-2's."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if is_prepared(cfg.data):
        return read_meta(cfg.data)["vocab_size"]
    if cfg.data.tokenizer == "gpt2":
        return GPT2Tokenizer.vocab_size
    raise ConfigError(
        f"data={cfg.data.name} is not prepared and its vocabulary comes from its text; "
        "give model.vocab_size=N for the dry run, or prepare the data first."
    )


def micro_batch(cfg, dims: ParallelDims) -> int:
    """Sequences in one forward on one rank: per dp rank and accumulation step, per pipeline microbatch."""
    rows = cfg.train.batch_size // (dims.dp * cfg.train.grad_accum)
    return rows // pipeline_microbatches(cfg, dims.dp) if cfg.parallel.pipeline else rows


@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int):
    """This process as rank `rank` of `world_size`: every collective returns at once, moving nothing.

    torch's fake backend lives in its test utilities (an internal module); this is its one user.
    """
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def estimate_position(cfg, dims: ParallelDims, mesh, config: GPTConfig, pp_rank: int, rows: list[int],
                      built: Optional[dict] = None) -> dict:
    """What the first rank of pipeline rank `pp_rank` holds, built on meta as training builds it.

    State bytes do not depend on the micro-batch, so one build serves every size in `rows`: each
    stage's activation bytes and forward collectives are measured per size (per microbatch), for
    the caller to multiply by the microbatches in flight. `built` keeps measured stages across the
    pipeline ranks of one layout: middle stages of equal depth are alike, so each is built once.
    """
    built = {} if built is None else built
    figures = [stage_figures(cfg, dims, mesh, config, spec, rows, built) for spec in stage_specs(cfg, dims, config, pp_rank)]
    param_bytes = sum(f["param_bytes"] for f in figures)
    optim_bytes = 2 * param_bytes + ADAM_STEP_BYTES * sum(f["tensors"] for f in figures)
    if cfg.parallel.shard_optimizer:  # ZeRO-1: each replica keeps the state of ~1/dp_replicate of the parameters
        optim_bytes = -(-optim_bytes // dims.dp_replicate)
    return {
        "rank": pp_rank * (dims.world_size // dims.pp),
        "stages": [f["stage"] for f in figures],
        "param_bytes": param_bytes,
        "grad_bytes": param_bytes,
        "optim_bytes": optim_bytes,
        "activations": {r: [f["activations"][r] for f in figures] for r in rows},
        "collectives": {r: merged([f["collectives"][r] for f in figures]) for r in rows},
    }


def stage_specs(cfg, dims: ParallelDims, config: GPTConfig, pp_rank: int) -> list[tuple[int, range, bool, bool]]:
    """`pp_rank`'s stages as (index, layers, first, last): the whole model as stage 0, or its pipeline stages."""
    if not cfg.parallel.pipeline:
        return [(0, range(config.n_layer), True, True)]
    pc = cfg.parallel.pp
    n_stages = dims.pp * pc.stages_per_rank
    layers = split_layers(config.n_layer, n_stages, list(pc.layers_per_stage))
    return [(s, layers[s], s == 0, s == n_stages - 1) for s in stage_ids(pc.schedule, dims.pp, pc.stages_per_rank, pp_rank)]


def stage_figures(cfg, dims: ParallelDims, mesh, config: GPTConfig, spec, rows: list[int], built: dict) -> dict:
    """One stage's figures, from its first block and one block's share.

    Blocks are alike (the same shapes, wrapping and shards), and every figure is a sum over modules
    (saved tensors are all still held at the end of the forward), so a stage of L blocks measures
    f(1) + (L - 1) x (one block), exactly. One block's share is the same in every stage of the layout
    (past a later stage's first block, whose input is a leaf that autograd does not save): it is a
    first stage of one block less a first stage of none, or under sequence parallelism (whose stage
    cannot go from the embedding to the head without a block between) of two blocks less one.
    Selective checkpointing treats blocks by their index, so there every block is built.
    """
    stage, layers, first, last = spec

    def measured(part: range, first: bool = first, last: bool = last) -> dict:
        key = (part.start if selective else 0, len(part), first, last)
        if key not in built:
            built[key] = measure_stage(cfg, dims, mesh, config, part, first, last, rows)
        return built[key]

    selective = cfg.train.activation_checkpointing == "selective"
    if len(layers) <= 1 or selective:
        return {"stage": stage, **measured(layers)}
    fewer = 1 if cfg.parallel.tensor_parallel and cfg.parallel.sequence_parallel else 0
    whole = first and last  # no pipeline: the first stage is the whole model
    low, high = (measured(range(n), True, whole) for n in (fewer, fewer + 1))
    return {"stage": stage, **extrapolate(low, high, len(layers) - 1, start=measured(layers[:1]))}


def extrapolate(one, two, extra: int, start=None):
    """start + extra x (two - one), start defaulting to one, for every number in like-shaped nests of
    dicts and tuples (a key missing from a dict counts 0, and stays missing where it adds nothing)."""
    start = one if start is None else start
    if isinstance(one, dict):
        found = {k: extrapolate(one.get(k, 0), two.get(k, 0), extra, start.get(k, 0)) for k in one.keys() | two.keys() | start.keys()}
        return {k: v for k, v in found.items() if k in start or v != 0}
    if isinstance(one, tuple):
        return tuple(extrapolate(a, b, extra, c) for a, b, c in zip(one, two, start))
    return start + extra * (two - one)


def merged(counts: list[dict]) -> dict:
    total: dict = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return total


def measure_stage(cfg, dims: ParallelDims, mesh, config: GPTConfig, layers: range, first: bool, last: bool,
                  rows: list[int]) -> dict:
    """Build one stage holding `layers` on meta, parallelised as in training; its state and forward figures."""
    part = apply_on_meta(meta_stage(config, layers, first, last), dims, mesh, cfg)
    params = [q for q in part.parameters() if q.requires_grad]
    forwards = stage_forward(part, cfg, dims, config, first, last, rows)
    return {
        "param_bytes": local_bytes(params),
        "tensors": len(params),
        "activations": {r: saved for r, (saved, _) in zip(rows, forwards)},
        "collectives": {r: comms for r, (_, comms) in zip(rows, forwards)},
    }


def in_flight(cfg, dims: ParallelDims, stage: int) -> int:
    """Microbatches whose activations a stage holds at its peak.

    1F1B: stage s runs pp - s forwards before its first backward. GPipe runs every forward first,
    accumulation micro-steps included (they are microbatches of the same schedule step).
    The interleaved, looped and V schedules are counted as GPipe: an upper bound.
    """
    if not cfg.parallel.pipeline:
        return 1
    n = pipeline_microbatches(cfg, dims.dp) * cfg.train.grad_accum
    return min(n, dims.pp - stage) if cfg.parallel.pp.schedule == "1F1B" else n


def meta_stage(config: GPTConfig, layers: range, first: bool, last: bool) -> GPT:
    """The stage `build_stage_model` builds, without first building the whole model's blocks to delete
    most of them (48 for gpt2_xl, per stage measured): the blocks made for `layers` alone, under their
    own indices (selective checkpointing reads them). The config's layer count only scales the init,
    which meta tensors never run."""
    model = build_stage_model(dataclasses.replace(config, n_layer=len(layers)), range(len(layers)), first, last)
    model.transformer.h = nn.ModuleDict({str(i): block for i, block in zip(layers, model.transformer.h.values())})
    return model


def stage_forward(part: GPT, cfg, dims: ParallelDims, config: GPTConfig, first: bool, last: bool, rows: list[int]):
    """(saved-for-backward bytes, forward collective bytes) of one micro-batch forward (and loss, on
    the last stage) per size in `rows`, on fake tensors.

    The model's meta parameters are swapped for fake ones on the CPU, once for all sizes, so every op
    (FSDP's all-gathers, TP's redistributions, the CPU attention kernel) runs as in training, on
    shapes only. Many sizes and long cp rings are measured small and extrapolated (module docstring).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    measured = rows if len(rows) <= MEASURED_SIZES_UP_TO else sorted({2, 3} | {r for r in rows if r < 2})
    with FakeTensorMode(allow_non_fake_inputs=True):  # to_empty reads the meta parameters
        part.to_empty(device="cpu")
        figures = {r: ring_figures(part, lambda: forward_figures(part, cfg, dims, config, first, last, r)) for r in measured}
    return [figures[r] if r in figures else extrapolate(figures[2], figures[3], r - 2) for r in rows]


def ring_figures(part: GPT, forward) -> tuple:
    """forward()'s figures; under a cp ring longer than FULL_RING_UP_TO, from rings of 1 and 2 steps."""
    ring = ring_size(part)
    if ring is None or ring <= FULL_RING_UP_TO:
        return forward()
    short = []
    for steps in (1, 2):
        with_ring_steps(part, steps)
        short.append(forward())
    with_ring_steps(part, ring)
    return extrapolate(*short, ring - 1)


def forward_figures(part: GPT, cfg, dims: ParallelDims, config: GPTConfig, first: bool, last: bool, rows: int) -> tuple:
    """(saved bytes, collective bytes) of one forward of `rows` sequences, inside the caller's fake mode."""
    t, p = cfg.train, cfg.parallel
    seq = seq_len_of(cfg)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    # Inputs and targets are two views of one (rows, seq + 1) window, as the loader makes them
    # (under context parallelism, of this rank's two chunks: seq / cp tokens).
    window = torch.zeros(rows, seq // dims.cp + 1, dtype=torch.long)
    if first:
        x = window[:, :-1]
    else:
        # A later stage receives the previous stage's output: this rank's sequence shard.
        x = torch.zeros(rows, stage_input_tokens(cfg, dims, seq), config.n_embd, requires_grad=True)
    loss_ctx = loss_parallel() if p.loss_parallel else contextlib.nullcontext()
    with CollectiveBytes(dims.world_size) as comms, SavedActivations() as meter, loss_ctx, autocast:
        out = part(x)
        if last:
            cross_entropy(out, window[:, 1:])
    del out
    for module in part.modules():  # a stage that keeps its gathered weights would skip the next forward's gathers
        if isinstance(module, FSDPModule):
            module.reshard()
    return meter.peak, comms.bytes


def ring_size(part: GPT) -> Optional[int]:
    """The cp ring's length (its steps per forward) of a stage under ring attention, on cp rank 0 (the
    rank the dry run measures, whose chunks 0 and 2 x steps - 1 exist in a ring of any length); None otherwise."""
    attentions = [block.attn.attention for block in part.transformer.h.values()]
    ring = [a for a in attentions if isinstance(a, ContextParallelAttention) and a.method == "ring" and a.layout.rank == 0]
    return ring[0].layout.size if ring else None


def with_ring_steps(part: GPT, steps: int) -> None:
    """Run `part`'s ring attention over `steps` ring steps on the same chunks of the same rank: each
    step past the first exchanges one K/V block and computes two chunk pairs, whatever the ring's
    length, so the figures of any length follow from two short rings."""
    for block in part.transformer.h.values():
        attention = block.attn.attention
        block.attn.attention = dataclasses.replace(attention, layout=SequenceLayout(attention.layout.rank, steps))


def stage_input_tokens(cfg, dims: ParallelDims, seq: int) -> int:
    """Tokens per sequence a later pipeline stage receives: split over tp under SP, over cp under CP."""
    p = cfg.parallel
    if p.tensor_parallel and p.sequence_parallel:
        seq //= dims.tp
    if p.context_parallel:
        seq //= dims.cp
    return seq


def format_report(report: dict, cfg, config: GPTConfig) -> str:
    mesh = " x ".join(f"{dim} {size}" for dim, size in report["mesh"].items())
    lines = [
        f"dry run: parallel={report['parallel']} on {report['world_size']} ranks ({mesh}), "
        f"model={report['model']} {report['params'] / 1e6:.0f}M params "
        f"({config.n_layer}L/{config.n_head}H/{config.n_embd}d, vocab {config.vocab_size})",
        f"per rank: micro-batch of {report['micro_batch']} x {seq_len_of(cfg) // report['mesh']['cp']} tokens, "
        f"dtype {cfg.train.dtype}, activation checkpointing {cfg.train.activation_checkpointing}; plan is valid",
        f"{'rank':>6} {'stages':>8} {'params':>10} {'grads':>10} {'optim':>10} {'activations':>12} {'total':>10}  (GiB)",
    ]
    for r in report["ranks"]:
        parts = [r["param_bytes"], r["grad_bytes"], r["optim_bytes"], r["activation_bytes"]]
        stages = ",".join(map(str, r["stages"]))
        lines.append(
            f"{r['rank']:>6} {stages:>8} " + " ".join(f"{b / GIB:>10.3f}" for b in parts[:3])
            + f" {parts[3] / GIB:>12.3f} {sum(parts) / GIB:>10.3f}"
        )
    lines.append(
        "one rank per pipeline rank (dp/tp coordinates 0: FSDP's largest shards); activations are the "
        "eager saved-for-backward peak, without temporaries, buffers or allocator overhead"
        + (", pipeline: x microbatches in flight (1F1B exact, other schedules an upper bound)" if cfg.parallel.pipeline else "")
        + f"; estimated in {report['seconds']:.1f} s"
    )
    if cfg.parallel.get("implementation") == "reference":
        lines.append("parallel.implementation=reference: these are the native implementation's figures; the dry run "
                     "builds the native modules, not the reference ones (their shards and collectives may differ)")
    return "\n".join(lines)
