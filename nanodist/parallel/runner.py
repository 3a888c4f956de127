"""One step-runner interface for plain and pipelined models: the Trainer's only view of a strategy.

A runner owns this rank's model parts and answers three questions, whatever the layout:
`forward_backward` (one micro-step's gradients and this rank's share of the step's mean loss),
`eval_loss` (one micro-batch's mean loss), and `next_logits` (the model's prediction after a
context, on every rank, for sampling). The loss is scaled in one place, `micro_step_loss`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.distributed.tensor.parallel import loss_parallel

from nanodist.config import pipeline_microbatches
from nanodist.model import GPT, GPTConfig, cross_entropy
from nanodist.model.generate import next_token_logits, padded_window
from nanodist.parallel.compile import compile_loss
from nanodist.parallel.dims import Mesh, ParallelDims
from nanodist.parallel.parallelize import parallelize
from nanodist.parallel.pp import Pipeline, build_pipeline
from nanodist.parallel.tensors import as_plain

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    return lambda out, y: loss_fn(out, y) / scale


class PlainRunner:
    """A whole (possibly sharded) model on every rank: forward, loss, backward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, grad_accum: int, contexts: Contexts, pad_to: int):
        self.parts, self.model, self.loss_fn, self.contexts = [model], model, loss_fn, contexts
        self.train_loss, self.pad_to = micro_step_loss(loss_fn, grad_accum), pad_to

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.contexts.loss():  # loss parallelism must cover the backward too
            with self.contexts.autocast:
                loss = self.train_loss(self.model(x), y)
            loss.backward()
        return as_plain(loss)

    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.contexts.loss(), self.contexts.autocast:
            return as_plain(self.loss_fn(self.model(x), y))

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        with self.contexts.autocast:
            return next_token_logits(self.model, ids, self.pad_to)


class PipelineRunner:
    """This rank's pipeline stages; the loss exists on the last stage's rank only (0 elsewhere)."""

    def __init__(self, pipeline: Pipeline, loss_fn: LossFn, contexts: Contexts, config: GPTConfig, pad_to: int):
        self.pipeline, self.parts, self.loss_fn, self.contexts = pipeline, pipeline.parts, loss_fn, contexts
        self.config, self.pad_to = config, pad_to

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.contexts.loss(), self.contexts.autocast:  # the schedule runs the backward inside step()
            return self.pipeline.step(x, y)

    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.contexts.loss(), self.contexts.autocast:
            out = self.pipeline.forward(x)
            return as_plain(self.loss_fn(out, y)) if out is not None else torch.zeros((), device=x.device)

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The last stage's logits at the last real position, broadcast to every pp rank."""
        window, length = padded_window(ids, self.config.block_size, self.pad_to)
        with self.contexts.autocast:
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
    loss_fn = compile_loss(cross_entropy) if t.compile and not p.loss_parallel else cross_entropy
    pad_to = dims.tp if p.sequence_parallel else 1  # SP splits every sequence over tp
    if p.pipeline:
        n = pipeline_microbatches(cfg, dims.dp)
        pipeline = build_pipeline(config, dims, mesh, cfg, device, micro_step_loss(loss_fn, t.grad_accum, n), n)
        return PipelineRunner(pipeline, loss_fn, contexts, config, pad_to)
    with torch.device("meta"):
        model = GPT(config)
    return PlainRunner(parallelize(model, dims, mesh, cfg, device), loss_fn, t.grad_accum, contexts, pad_to)
