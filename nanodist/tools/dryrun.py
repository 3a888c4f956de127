"""Dry run: check a plan for any number of ranks in one CPU process, and say what each rank would hold.

`python launch.py dry_run=true ...` validates the config as a launch would, joins a fake process
group as rank 0 of the full world (collectives return at once without data) and builds the mesh;
then, for each pipeline rank, it builds that rank's stages exactly as training does (the same
`apply_on_meta`: TP, activation checkpointing, FSDP) on the meta device, and reads off:

- parameter bytes: the rank's local shards, exact;
- gradient bytes: the same shards (gradients take their parameter's layout and dtype);
- optimizer bytes: AdamW's exp_avg and exp_avg_sq per parameter shard, plus its 4-byte step;
- activation bytes: one micro-batch forward run on fake tensors (shapes only, no memory) under the
  same saved-tensor meter that training uses, times the microbatches a pipeline stage holds at once.

Pipeline ranks differ only in the stages they hold, so one process group serves them all: the
figures are those of each pp rank's first rank (dp and tp coordinates 0), which holds FSDP's
largest shards (uneven splits pad the last ranks), its stage's worst case. torch.compile is left
out: it changes no shard and saves at most as many activations, so the eager figure bounds a
compiled run's.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.tensor.parallel import loss_parallel

from nanodist.config import (
    ConfigError,
    pipeline_microbatches,
    seq_len_of,
    validate_vocab,
)
from nanodist.data import GPT2Tokenizer, is_prepared, read_meta
from nanodist.model import GPT, GPTConfig, cross_entropy, gpt_config, num_params
from nanodist.parallel.dims import ParallelDims
from nanodist.parallel.parallelize import apply_on_meta
from nanodist.parallel.pp import build_stage_model, split_layers, stage_ids
from nanodist.parallel.tensors import local_bytes, unique_parameters
from nanodist.train.meters import SavedActivations

# AdamW keeps a scalar float32 `step` tensor per parameter next to its two moment buffers.
ADAM_STEP_BYTES = 4
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
        mesh = dims.build_mesh("cpu")
        estimates = [estimate_pp_rank(cfg, dims, mesh, config, pp_rank) for pp_rank in range(dims.pp)]
    report = {
        "status": "dry_run",
        "world_size": dims.world_size,
        "mesh": {"pp": dims.pp, "dp_replicate": dims.dp_replicate, "dp_shard": dims.dp_shard, "tp": dims.tp},
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


def estimate_pp_rank(cfg, dims: ParallelDims, mesh, config: GPTConfig, pp_rank: int) -> dict:
    """Build the first rank of pipeline rank `pp_rank` on meta as training would; measure what it holds."""
    stages = build_stages(cfg, dims, mesh, config, pp_rank)
    params = [q for q in unique_parameters(part for _, part in stages) if q.requires_grad]
    activations = sum(
        stage_activation_bytes(part, cfg, dims, config, first, last) * in_flight(cfg, dims, stage)
        for (stage, part), (first, last) in zip(stages, stage_ends(cfg, dims, stages))
    )
    param_bytes = local_bytes(params)
    return {
        "rank": pp_rank * (dims.world_size // dims.pp),
        "stages": [stage for stage, _ in stages],
        "param_bytes": param_bytes,
        "grad_bytes": param_bytes,
        "optim_bytes": 2 * param_bytes + ADAM_STEP_BYTES * len(params),
        "activation_bytes": activations,
    }


def build_stages(cfg, dims: ParallelDims, mesh, config: GPTConfig, pp_rank: int) -> list[tuple[int, GPT]]:
    """`pp_rank`'s (stage index, meta model) pairs: the whole model as stage 0, or its pipeline stages."""
    if not cfg.parallel.pipeline:
        with torch.device("meta"):
            model = GPT(config)
        return [(0, apply_on_meta(model, dims, mesh, cfg))]

    pc = cfg.parallel.pp
    n_stages = dims.pp * pc.stages_per_rank
    layers = split_layers(config.n_layer, n_stages, list(pc.layers_per_stage))
    return [
        (s, apply_on_meta(build_stage_model(config, layers[s], s == 0, s == n_stages - 1), dims, mesh, cfg))
        for s in stage_ids(pc.schedule, dims.pp, pc.stages_per_rank, pp_rank)
    ]


def stage_ends(cfg, dims: ParallelDims, stages) -> list[tuple[bool, bool]]:
    n_stages = dims.pp * cfg.parallel.pp.stages_per_rank if cfg.parallel.pipeline else 1
    return [(stage == 0, stage == n_stages - 1) for stage, _ in stages]


def in_flight(cfg, dims: ParallelDims, stage: int) -> int:
    """Microbatches whose activations a stage holds at its peak.

    1F1B: stage s runs pp - s forwards before its first backward. GPipe runs every forward first.
    The interleaved, looped and V schedules are counted as GPipe: an upper bound.
    """
    if not cfg.parallel.pipeline:
        return 1
    n = pipeline_microbatches(cfg, dims.dp)
    return min(n, dims.pp - stage) if cfg.parallel.pp.schedule == "1F1B" else n


def stage_activation_bytes(part: GPT, cfg, dims: ParallelDims, config: GPTConfig, first: bool, last: bool) -> int:
    """Saved-for-backward bytes of one micro-batch forward (and loss, on the last stage), on fake tensors.

    The model's meta parameters are swapped for fake ones on the CPU, so every op (FSDP's
    all-gathers, TP's redistributions, the CPU attention kernel) runs as in training, on shapes only.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    t, p = cfg.train, cfg.parallel
    rows, seq = micro_batch(cfg, dims), seq_len_of(cfg)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    with FakeTensorMode(allow_non_fake_inputs=True):  # to_empty reads the meta parameters
        part.to_empty(device="cpu")
        # Inputs and targets are two views of one (rows, seq + 1) window, as the loader makes them.
        window = torch.zeros(rows, seq + 1, dtype=torch.long)
        if first:
            x = window[:, :-1]
        else:
            # A later stage receives the previous stage's output: this rank's sequence shard under SP.
            shard = seq // dims.tp if p.tensor_parallel and p.sequence_parallel else seq
            x = torch.zeros(rows, shard, config.n_embd, requires_grad=True)
        with SavedActivations() as meter, loss_parallel() if p.loss_parallel else contextlib.nullcontext(), autocast:
            out = part(x)
            if last:
                cross_entropy(out, window[:, 1:])
    return meter.peak


def format_report(report: dict, cfg, config: GPTConfig) -> str:
    m = report["mesh"]
    lines = [
        f"dry run: parallel={report['parallel']} on {report['world_size']} ranks "
        f"(pp {m['pp']} x dp_replicate {m['dp_replicate']} x dp_shard {m['dp_shard']} x tp {m['tp']}), "
        f"model={report['model']} {report['params'] / 1e6:.0f}M params "
        f"({config.n_layer}L/{config.n_head}H/{config.n_embd}d, vocab {config.vocab_size})",
        f"per rank: micro-batch of {report['micro_batch']} x {seq_len_of(cfg)} tokens, "
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
    return "\n".join(lines)
