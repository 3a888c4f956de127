"""One step-runner interface for plain and pipelined models: the Trainer's only view of a strategy.

A runner owns this rank's model parts and answers three questions, whatever the layout:
`forward_backward` (one optimizer step's gradients, from its accumulation micro-batches, and this
rank's share of the step's mean loss), `eval_loss` (one micro-batch's mean loss), and
`next_logits` (the model's prediction after a context, on every rank, for sampling). A reference
layout (`parallel.implementation=reference`) comes with its `layout`: its own loss (vocab-parallel)
and its way to the full logits; native layouts have none. The loss is
scaled in one place, `micro_step_loss`. Under context parallelism each rank's inputs and labels are
its two chunks of every sequence (`shard`), and sampling runs whole contexts on every cp rank. `uncounted` lists the parameters whose gradients another
rank already counts in the global grad norm (a tied embedding's second copy).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.distributed.tensor.parallel import loss_parallel

from nanodist.config import pipeline_microbatches
from nanodist.model import GPT, GPTConfig, cross_entropy
from nanodist.model.generate import next_token_logits, padded_window
from nanodist.parallel.compile import compile_loss
from nanodist.parallel.cp import batch_shard, whole_sequences
from nanodist.parallel.dims import Mesh, ParallelDims
from nanodist.parallel.parallelize import parallelize, set_gradient_sync
from nanodist.parallel.pp import Pipeline, build_pipeline
from nanodist.parallel.reference import apply_reference
from nanodist.parallel.reference.layout import Layout
from nanodist.parallel.tensors import as_plain

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Shard = Callable[[torch.Tensor], torch.Tensor]
MicroBatches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Contexts:
    """What every forward runs under: autocast (bf16 or off) and, under loss parallelism, `loss_parallel`."""

    autocast: torch.autocast
    loss: Callable[[], contextlib.AbstractContextManager]


def micro_step_loss(loss_fn: LossFn, grad_accum: int, n_microbatches: int = 1) -> LossFn:
    """The loss of one forward, scaled so that the gradients summed over a step are those of its mean loss.

    A step's batch is cut into `grad_accum` micro-steps, and under pipelining each micro-step into
    `n_microbatches`; each forward sees 1 / (grad_accum x n_microbatches) of the batch.
    """
    scale = grad_accum * n_microbatches
    return lambda *args: loss_fn(*args) / scale


class PlainRunner:
    """A whole (possibly sharded) model on every rank: forward, loss, backward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, grad_accum: int, contexts: Contexts, pad_to: int, shard: Shard,
                 loss_chunk: int = 0, layout: Optional[Layout] = None):
        self.parts, self.model, self.contexts, self.layout = [model], model, contexts, layout
        self.pad_to, self.uncounted, self.shard = pad_to, [], shard
        if layout is not None and layout.loss_fn is not None:
            loss_fn = layout.loss_fn
        # The mean loss of one micro-batch: the head's logits into the loss, or both fused in the model.
        self.loss = (lambda x, y: model(x, y, loss_chunk)) if loss_chunk else (lambda x, y: loss_fn(model(x), y))
        self.train_loss = micro_step_loss(self.loss, grad_accum)

    def forward_backward(self, micro_batches: MicroBatches) -> torch.Tensor:
        """Accumulate the micro-batches' gradients, reducing them over dp once, on the last."""
        total = torch.zeros((), device=micro_batches[0][0].device)
        for i, (x, y) in enumerate(micro_batches):
            set_gradient_sync(self.parts, i == len(micro_batches) - 1)
            with self.contexts.loss():  # loss parallelism must cover the backward too
                with self.contexts.autocast:
                    loss = self.train_loss(self.shard(x), self.shard(y))
                loss.backward()
            total += as_plain(loss)
        return total

    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.contexts.loss(), self.contexts.autocast:
            return as_plain(self.loss(self.shard(x), self.shard(y)))

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        gather = self.layout.full_logits if self.layout is not None else None
        with self.contexts.autocast, whole_sequences(self.parts):
            return next_token_logits(self.model, ids, self.pad_to, gather)


class PipelineRunner:
    """This rank's pipeline stages; the loss exists on the last stage's rank only (0 elsewhere)."""

    def __init__(self, pipeline: Pipeline, loss_fn: LossFn, contexts: Contexts, config: GPTConfig, pad_to: int,
                 shard: Shard):
        self.pipeline, self.parts, self.loss_fn, self.contexts = pipeline, pipeline.parts, loss_fn, contexts
        self.config, self.pad_to, self.shard, self.layout = config, pad_to, shard, None
        self.uncounted = pipeline.tied.uncounted if pipeline.tied is not None else []

    def forward_backward(self, micro_batches: MicroBatches) -> torch.Tensor:
        """All micro-batches as the microbatches of one schedule step (see `nanodist.parallel.pp`)."""
        # One micro-batch stays the loader's view (no copy); several are joined.
        x, y = micro_batches[0] if len(micro_batches) == 1 else (torch.cat(rows) for rows in zip(*micro_batches))
        with self.contexts.loss(), self.contexts.autocast:  # the schedule runs the backward inside step()
            return self.pipeline.step(self.shard(x), self.shard(y))

    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self.shard(x), self.shard(y)
        with self.contexts.loss(), self.contexts.autocast:
            out = self.pipeline.forward(x)
            return as_plain(self.loss_fn(out, y)) if out is not None else torch.zeros((), device=x.device)

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The last stage's logits at the last real position, broadcast to every pp rank."""
        window, length = padded_window(ids, self.config.block_size, self.pad_to)
        with self.contexts.autocast, whole_sequences(self.parts):
            out = self.pipeline.forward(window)
        logits = torch.empty(1, self.config.vocab_size, device=ids.device)
        if out is not None:
            logits.copy_(as_plain(out)[:, length - 1, :].float())
        return self.pipeline.broadcast_from_last_stage(logits)


def build_runner(cfg, dims: ParallelDims, mesh: Mesh | None, config: GPTConfig, device: torch.device):
    """This rank's share of the model, built on meta, split into stages if pipelined, sharded, materialised."""
    p, t = cfg.parallel, cfg.train
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    contexts = Contexts(autocast, loss_parallel if p.loss_parallel else contextlib.nullcontext)
    # Under loss parallelism the logits are vocab-sharded DTensors: that loss stays eager.
    loss = compile_loss(cross_entropy) if t.compile and not p.loss_parallel else cross_entropy
    loss_fn = functools.partial(loss, true_vocab_size=config.true_vocab_size)
    pad_to = dims.tp if p.sequence_parallel else 1  # SP splits every sequence over tp
    shard = batch_shard(mesh["cp"] if p.context_parallel else None)
    if p.pipeline:
        n = pipeline_microbatches(cfg, dims.dp)
        pipeline = build_pipeline(config, dims, mesh, cfg, device, micro_step_loss(loss_fn, t.grad_accum, n), n * t.grad_accum)
        return PipelineRunner(pipeline, loss_fn, contexts, config, pad_to, shard)
    with torch.device("meta"):
        model = GPT(config)
    layout = None
    if p.implementation == "reference":
        model, layout = apply_reference(model, dims, mesh, cfg, device)
    else:
        model = parallelize(model, dims, mesh, cfg, device)
    return PlainRunner(model, loss_fn, t.grad_accum, contexts, pad_to, shard, t.fused_loss_chunk, layout)
