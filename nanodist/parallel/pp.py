"""Pipeline parallelism: cut the GPT into stages, place them on the pp ranks, run a torch schedule.

A stage is the same `GPT` class with the pieces it does not own deleted (the first stage keeps the
embeddings, the last the final LayerNorm and head), so its parameters keep the full model's names
and `init_weights` gives it exactly the values one process would. Each stage is then parallelised
like a whole model (TP, then FSDP, over the stage's own sub-meshes) before it is wrapped in a
`torch.distributed.pipelining.PipelineStage`.

Placement follows the schedule: one stage per rank (GPipe, 1F1B), loops (stage s on rank s % pp:
Interleaved1F1B, LoopedBFS, InterleavedZeroBubble), or a V (rank r holds stages r and 2pp-1-r:
ZBVZeroBubble, DualPipeV), so the first and last stage of a V share rank 0. A tied embedding
spans the first and last stage (`nanodist.parallel.tied`).

Gradient accumulation runs as more microbatches of one schedule step (grad_accum x
n_microbatches): torch's stage reduces FSDP gradients at the end of every step, so one step per
optimizer step reduces them once, and the 1F1B family's in-flight bound (pp microbatches) keeps
activation memory as it was, while the bubble shrinks. GPipe holds every microbatch in flight.

Loss scaling: the schedule runs with `scale_grads=False` and the loss it is given already carries
1 / (grad_accum x n_microbatches) (`nanodist.parallel.runner.micro_step_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.pipelining as pipelining
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle

from nanodist.config import PP_SCHEDULES, ConfigError
from nanodist.model import GPT, GPTConfig
from nanodist.parallel.dims import Mesh, ParallelDims
from nanodist.parallel.parallelize import parallelize
from nanodist.parallel.tensors import as_plain
from nanodist.parallel.tied import TiedEmbedding, tie_embedding


def split_layers(n_layer: int, n_stages: int, layers_per_stage: list[int]) -> list[range]:
    """The layer indices of each stage: as given, or an even split with the remainder on the first stages.

    Early stages take the extra layers because the last stage already carries the LM head.
    """
    counts = list(layers_per_stage) or [n_layer // n_stages + (s < n_layer % n_stages) for s in range(n_stages)]
    starts = [sum(counts[:s]) for s in range(n_stages)]
    return [range(start, start + count) for start, count in zip(starts, counts)]


def stage_ids(schedule: str, pp: int, stages_per_rank: int, pp_rank: int) -> list[int]:
    """The stages `pp_rank` holds, in order: looped (s % pp == rank) or V-shaped (r and 2pp-1-r, two per rank)."""
    if PP_SCHEDULES[schedule] == "v":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(stages_per_rank)]


def build_stage_model(config: GPTConfig, layers: range, first: bool, last: bool) -> GPT:
    """A meta-device GPT holding only `layers`, plus the embeddings if first and the norm and head if last."""
    with torch.device("meta"):
        model = GPT(config)
    t = model.transformer
    for i in range(config.n_layer):
        if i not in layers:
            del t.h[str(i)]
    if not first:
        for name in ("wte", "wpe", "drop"):
            del t[name]
    if not last:
        del t["ln_f"]
        model.lm_head = None
    return model


def schedule_class(name: str) -> type:
    """torch's class for a schedule name; DualPipeV only exists in newer torch releases."""
    cls = getattr(pipelining, f"Schedule{name}", None)
    if cls is None:
        raise ConfigError(f"parallel.pp.schedule={name} is not in torch {torch.__version__}; pick another schedule.")
    return cls


@dataclass
class Pipeline:
    """This rank's stages and the schedule that drives them; the step runner's view of a pipeline."""

    parts: list[GPT]
    schedule: object
    stages: dict[int, GPT]  # stage index -> this rank's module for it
    owner: list[int]  # stage index -> the pp rank that holds it
    pp_rank: int
    pp_group: dist.ProcessGroup
    hidden_size: int
    seq_shards: int  # sequence parallelism passes 1/tp of the sequence between stages
    tied: Optional[TiedEmbedding]  # the embedding and head as one weight across stages, if tied

    @property
    def holds_last_stage(self) -> bool:
        return len(self.owner) - 1 in self.stages

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one optimizer step's rows; this rank's share of the loss (0 off the last stage)."""
        losses: list[torch.Tensor] = []
        inputs = (x,) if 0 in self.stages else ()
        self.schedule.step(*inputs, target=y if self.holds_last_stage else None, losses=losses, return_outputs=False)
        if self.tied is not None:
            self.tied.sum_gradients()
        # Each loss already carries its 1/(grad_accum x n_microbatches), so their sum is the step's share.
        return sum((as_plain(loss) for loss in losses), torch.zeros((), device=x.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """Forward only, whole micro-batch at once: the last stage's output on its rank, None elsewhere.

        Stages run in order, each rank receiving its stage's input from the previous stage's owner.
        torch's `schedule.eval()` is not used: for the V placements (torch 2.13) it runs the local
        backward hand-off between a rank's two adjacent stages and fails, and every switch between
        eval and train makes a schedule infer its stage metadata again.
        """
        last, h = len(self.owner) - 1, x
        for s, module in sorted(self.stages.items()):
            if s > 0 and self.owner[s - 1] != self.pp_rank:
                h = torch.empty(x.size(0), x.size(1) // self.seq_shards, self.hidden_size, device=x.device)
                dist.recv(h, src=self._global_rank(s - 1), group=self.pp_group)
            h = module(h)
            if s != last and self.owner[s + 1] != self.pp_rank:
                # Sent as fp32 whatever the compute dtype (lossless); the next stage casts as it computes.
                dist.send(h.float().contiguous(), dst=self._global_rank(s + 1), group=self.pp_group)
        return h if self.holds_last_stage else None

    def broadcast_from_last_stage(self, value: torch.Tensor) -> torch.Tensor:
        """`value` as the last stage's rank holds it, on every pp rank (same shape everywhere)."""
        dist.broadcast(value, src=self._global_rank(len(self.owner) - 1), group=self.pp_group)
        return value

    def _global_rank(self, stage: int) -> int:
        return dist.get_global_rank(self.pp_group, self.owner[stage])


def build_pipeline(config: GPTConfig, dims: ParallelDims, mesh: Mesh, cfg, device: torch.device,
                   train_loss: Callable, n_microbatches: int) -> Pipeline:
    """Build, parallelise and materialise this rank's stages, and the schedule over mesh["pp"].

    `train_loss` is the loss of one microbatch, already scaled for accumulation and microbatches;
    `n_microbatches` counts those of a whole optimizer step.
    """
    p, pc = cfg.parallel, cfg.parallel.pp
    pp_mesh, pp_rank = mesh["pp"], mesh["pp"].get_local_rank()
    n_stages = dims.pp * pc.stages_per_rank
    layers = split_layers(config.n_layer, n_stages, list(pc.layers_per_stage))
    owner = [0] * n_stages
    for r in range(dims.pp):
        for s in stage_ids(pc.schedule, dims.pp, pc.stages_per_rank, r):
            owner[s] = r
    modules = {s: parallelize(build_stage_model(config, layers[s], s == 0, s == n_stages - 1), dims, mesh, cfg, device)
               for s in stage_ids(pc.schedule, dims.pp, pc.stages_per_rank, pp_rank)}
    tied = tie_embedding(modules, owner, pp_rank, mesh) if config.tie_embeddings else None
    stages = [PipelineStage(module, s, n_stages, device, group=pp_mesh.get_group()) for s, module in modules.items()]
    cls = schedule_class(pc.schedule)
    schedule = cls(
        stages[0] if issubclass(cls, PipelineScheduleSingle) else stages,
        n_microbatches=n_microbatches,
        loss_fn=train_loss,
        scale_grads=False,
    )
    return Pipeline(
        parts=list(modules.values()),
        schedule=schedule,
        stages=modules,
        owner=owner,
        pp_rank=pp_rank,
        pp_group=pp_mesh.get_group(),
        hidden_size=config.n_embd,
        seq_shards=dims.tp if p.tensor_parallel and p.sequence_parallel else 1,
        tied=tied,
    )
