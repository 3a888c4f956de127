"""Estimate and rank layouts: each distinct rank position built once on meta, in one fake world.

Layouts that differ only in accumulation, microbatches or the micro-batch size share their rank
positions (same strategy, mesh and checkpointing: the same shards), so the planner groups them,
builds each position once, measures its forward at every micro-batch size they need, and derives
each layout's memory and step time from those figures.
"""

from __future__ import annotations

from collections import defaultdict

from nanodist.config import MESH_DIMS, seq_len_of
from nanodist.model import GPTConfig, flops_per_token
from nanodist.parallel.dims import ParallelDims
from nanodist.plan.cost import bubble_fraction, comm_seconds, compute_seconds, forwards_per_step, peak_flops
from nanodist.plan.layouts import Layout
from nanodist.tools.dryrun import estimate_position, fake_process_group, layout_record, micro_batch, stage_specs

GIB = 2**30


def position_key(layout: Layout) -> tuple:
    t = layout.cfg.train
    return layout.strategy, tuple(sorted(layout.mesh.items())), t.activation_checkpointing, t.ac_every


def plan_layouts(layouts: list[Layout], world: int, config: GPTConfig, cluster) -> None:
    """Fill every valid layout's `estimate`, and its `reason` when it does not fit in memory."""
    groups: dict[tuple, list[Layout]] = defaultdict(list)
    for layout in layouts:
        if layout.reason is None:
            groups[position_key(layout)].append(layout)
    with fake_process_group(0, world):
        meshes = {}
        for members in groups.values():
            cfg = members[0].cfg
            dims = ParallelDims(**{d: cfg.mesh[d] for d in MESH_DIMS})
            if dims not in meshes:  # a mesh's process groups are made once per shape
                meshes[dims] = dims.build_mesh("cpu")
            mesh = meshes[dims]
            rows = sorted({micro_batch(m.cfg, dims) for m in members})
            built: dict = {}
            positions = [estimate_position(cfg, dims, mesh, config, r, rows, built) for r in range(dims.pp)]
            for layout in members:
                layout.estimate = estimate(layout, dims, positions, config, cluster)
                layout.reason = memory_reason(layout.estimate, cluster)


def estimate(layout: Layout, dims: ParallelDims, positions: list[dict], config: GPTConfig, cluster) -> dict:
    """Memory of the fullest rank and the step time of the slowest, for one layout."""
    cfg = layout.cfg
    rows = micro_batch(cfg, dims)
    sizes = {d: getattr(dims, d) for d in MESH_DIMS}
    micro_batches = cfg.train.batch_size // (dims.dp * cfg.train.grad_accum * rows)
    forwards = forwards_per_step(cfg, micro_batches)
    bubble = bubble_fraction(cfg, sizes, micro_batches)
    records, steps = [], []
    for position, pp_rank in zip(positions, range(dims.pp)):
        record = layout_record(cfg, dims, position, rows)
        compute = compute_seconds(cfg, cluster, sizes, stage_layers(cfg, dims, config, pp_rank), config)
        comm = comm_seconds(cfg, cluster, sizes, position, forwards, rows, config)
        steps.append((compute * (1 + bubble) + comm, compute, comm))
        records.append(record)
    step, compute, comm = max(steps)
    tokens = cfg.train.batch_size * seq_len_of(cfg)
    fullest = max(records, key=total_bytes)
    return {
        "memory_bytes": total_bytes(fullest), "fullest_rank": fullest["rank"], "ranks": records,
        "micro_batch": rows, "step_s": step, "compute_s": compute, "comm_s": comm, "bubble": bubble,
        "tokens_per_s": tokens / step,
        "mfu": flops_per_token(config, seq_len_of(cfg)) * tokens / step / (dims.world_size * peak_flops(cfg, cluster)),
    }


def total_bytes(record: dict) -> int:
    return sum(record[k] for k in ("param_bytes", "grad_bytes", "optim_bytes", "activation_bytes"))


def stage_layers(cfg, dims: ParallelDims, config: GPTConfig, pp_rank: int) -> list[tuple[int, bool]]:
    """(layers, holds the head) of each stage of `pp_rank`."""
    return [(len(layers), last) for _, layers, _, last in stage_specs(cfg, dims, config, pp_rank)]


def memory_reason(estimate: dict, cluster) -> str | None:
    budget = (cluster.gpu_memory_gb - cluster.memory_reserve_gb) * GIB
    if estimate["memory_bytes"] <= budget:
        return None
    return (f"rank {estimate['fullest_rank']} needs {estimate['memory_bytes'] / GIB:.2f} GiB, over the "
            f"{budget / GIB:.2f} GiB of cluster.gpu_memory_gb={cluster.gpu_memory_gb:g} less "
            f"cluster.memory_reserve_gb={cluster.memory_reserve_gb:g}")


def ranked(layouts: list[Layout]) -> list[Layout]:
    """Fitting layouts fastest first, then those over memory (smallest first), then the invalid ones."""
    def key(layout: Layout):
        e = layout.estimate
        if not e:
            return (2, 0.0)
        return (0, e["step_s"]) if layout.reason is None else (1, e["memory_bytes"])
    return sorted(layouts, key=key)
