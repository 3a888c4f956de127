"""The Trainer: one rank's training loop, reading top to bottom as nanoGPT's does.

`build` makes everything (mesh, model parts through the step runner, optimizer, loaders, checkpoints,
metrics) and resumes; `fit` runs `train_step` until max_steps, evaluating and saving on schedule;
`summary` says how the run went. No strategy branches here: every layout, pipelined or not, is a
step runner (`nanodist.parallel.runner`). Profiling, preemption, benchmarks and tests attach as
callbacks (`nanodist.train.callbacks`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from nanodist.config import seq_len_of
from nanodist.data import read_meta, tokenizer_for
from nanodist.model import flops_per_token, generate_text, gpt_config, num_params
from nanodist.parallel.clip import clip_grad_norm_
from nanodist.parallel.dims import ParallelDims
from nanodist.parallel.process_group import RankInfo
from nanodist.parallel.runner import build_runner
from nanodist.parallel.tensors import unique_parameters
from nanodist.train.callbacks import Callback, Callbacks
from nanodist.train.checkpoint import Checkpointer
from nanodist.train.device import attention_backend, peak_host_memory, set_tf32
from nanodist.train.loader import BatchLayout, TokenLoader
from nanodist.train.meters import (
    SavedActivations,
    memory_record,
    peak_flops,
    state_bytes,
)
from nanodist.train.metrics import MetricsLog
from nanodist.train.optim import build_optimizer, build_sharded_optimizer, lr_at
from nanodist.train.pretrained import load_pretrained
from nanodist.train.rng import rank_seed
from nanodist.train.state import TrainState

log = logging.getLogger("nanodist")


class Trainer:
    def __init__(self, cfg, rank: RankInfo, device: torch.device, callbacks: Iterable[Callback] = ()):
        self.cfg, self.rank, self.device = cfg, rank, device
        self.callbacks = Callbacks(callbacks)
        self.error: Optional[str] = None  # why the run stopped early (a non-finite loss), if it did
        self.build()

    def build(self) -> None:
        """Mesh, model, optimizer, data, checkpoints and metrics of this rank, then resume if there is a checkpoint."""
        cfg, t = self.cfg, self.cfg.train
        set_tf32(self.device, t.tf32)
        self.dims = ParallelDims.from_config(cfg, self.rank.world_size)
        self.mesh = self.dims.build_mesh(self.device.type) if dist.is_initialized() else None
        self.pp_group = self.mesh["pp"].get_group() if self.dims.pp > 1 else None
        torch.manual_seed(rank_seed(t.seed, self.mesh))  # dropout masks differ across dp ranks
        self.data_meta = read_meta(cfg.data)
        self.model_config = gpt_config(cfg, self.data_meta["vocab_size"])
        self.runner = build_runner(cfg, self.dims, self.mesh, self.model_config, self.device)
        self.params = unique_parameters(self.runner.parts)
        self.optimizer = self.build_optimizer()
        self.build_loaders()
        self.checkpointer = Checkpointer.from_config(cfg, self.runner.parts, self.optimizer, self.model_config, self.data_meta,
                                                     {"parallel": cfg.parallel.name, "mesh": asdict(self.dims)}, self.device,
                                                     self.runner.layout)
        self.state = TrainState()
        resumed = self.checkpointer.resume(cfg.checkpoint.resume_from)
        if resumed is not None:
            self.state.load_state_dict(resumed["trainer"])
        elif cfg.checkpoint.init_from:  # pretrained weights start a run; its own checkpoints continue it
            load_pretrained(self.runner.parts, cfg.checkpoint.init_from, self.model_config)
        self.metrics = MetricsLog(cfg.output_dir, cfg, t.max_steps, enabled=self.rank.is_main, print_fn=log.info,
                                  first_step=self.state.step)
        self.build_meters()

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over this rank's parameters, or over its share of them under ZeRO-1 (parallel.shard_optimizer)."""
        layout = self.runner.layout
        decays = layout.decays if layout is not None else None
        if self.cfg.parallel.shard_optimizer:
            return build_sharded_optimizer(self.params, self.cfg.optim, self.mesh["dp_replicate"].get_group(), decays)
        return build_optimizer(self.params, self.cfg.optim, decays)

    def build_loaders(self) -> None:
        """Train and val loaders: each data-parallel rank reads its own rows of every global batch."""
        t = self.cfg.train
        self.seq_len, self.tokens_per_step = seq_len_of(self.cfg), t.batch_size * seq_len_of(self.cfg)
        dp_rank = self.mesh["dp"].get_local_rank() if self.mesh is not None else 0
        layout = BatchLayout(t.batch_size, t.grad_accum, self.dims.dp, dp_rank)
        vocab = self.model_config.vocab_size
        self.train_loader = TokenLoader(self.cfg.data, "train", self.seq_len, layout, t.seed, vocab)
        self.val_loader = TokenLoader(self.cfg.data, "val", self.seq_len, layout, t.seed, vocab)

    def build_meters(self) -> None:
        """What this attempt measures: FLOPs for MFU, memory once, its own timing and wall clock.

        Memory is measured once (shapes never change): the state after the first step, when gradients
        and optimizer state all exist; the activation peak, by saved-tensor hooks, on the second step,
        since the first carries one-time work (compilation, a pipeline's shape inference).
        """
        c, d, t = self.model_config, self.dims, self.cfg.train
        self.flops_per_step = flops_per_token(c, self.seq_len) * self.tokens_per_step
        self.peak_flops = peak_flops(self.device)
        self.first_step, self.activations, self.state_bytes = self.state.step, SavedActivations(), {}
        self.measured_step = min(self.first_step + 1, max(self.first_step, t.max_steps - 1))
        self.timed_this_attempt = False  # this attempt's first logged step carries its warm-up
        log.info(f"model {c.n_layer}L/{c.n_head}H/{c.n_embd}d, vocab {c.vocab_size}, {num_params(c) / 1e6:.2f}M params | "
                 f"parallel={self.cfg.parallel.name} mesh pp={d.pp} dp_replicate={d.dp_replicate} dp_shard={d.dp_shard} "
                 f"cp={d.cp} tp={d.tp} | device {self.device}")

    # ---- one step ----

    def forward_backward(self, step: int) -> torch.Tensor:
        """The gradients of step `step`'s batch; returns this rank's share of its mean loss."""
        micro_batches = [(x.to(self.device), y.to(self.device)) for x, y in self.train_loader.micro_batches(step)]
        return self.runner.forward_backward(micro_batches)

    def train_step(self) -> dict:
        """One optimizer step: gradients, clipping, the update (or the NaN policy); returns the step's record."""
        step, t = self.state.step, self.cfg.train
        lr = lr_at(step, self.cfg.optim, t.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.callbacks("on_step_start", self, step)
        start = time.perf_counter()
        with attention_backend(t.sdpa_backend), self.activations if step == self.measured_step else contextlib.nullcontext():
            loss = self.forward_backward(step)
        layout = self.runner.layout
        grad_norm = clip_grad_norm_(self.params, self.cfg.optim.grad_clip, self.pp_group, self.runner.uncounted,
                                    layout.norm_groups if layout is not None else None)
        if torch.isfinite(grad_norm):  # the global norm: every rank takes the same branch
            self.optimizer.step()
        else:
            self.non_finite(step, loss, grad_norm)
        if step == self.first_step:  # gradients and optimizer state all exist now
            self.state_bytes = state_bytes(self.runner.parts, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        record = {"step": step, "lr": lr, "step_time_s": time.perf_counter() - start}
        if self.error is None:
            self.state.step += 1
            self.state.tokens_seen += self.tokens_per_step
            if self.is_log_step(step):
                record.update(self.log_record(step, loss, grad_norm, record["step_time_s"]))
        return record

    def non_finite(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """A NaN/inf loss or gradient: stop before the update (keeping the last good checkpoint) or skip it."""
        problem = f"step {step + 1}: the loss is {self.global_mean(loss):g} and the gradient norm {grad_norm.item():g}"
        if self.cfg.train.nan_policy == "stop":
            self.error = (f"{problem}; stopped before the update, so the last good checkpoint stays "
                          f"{self.checkpointer.latest or 'none (none saved yet)'}; lower optim.lr or set train.nan_policy=skip.")
            log.error(self.error)
        else:
            self.state.skipped_steps += 1
            log.warning(f"{problem}; skipped the update (train.nan_policy=skip).")

    def is_log_step(self, step: int) -> bool:
        t = self.cfg.train
        return (step + 1) % t.log_interval == 0 or step == 0 or step == t.max_steps - 1 or self.is_eval_step(step)

    def is_eval_step(self, step: int) -> bool:
        t = self.cfg.train
        return t.eval_interval > 0 and ((step + 1) % t.eval_interval == 0 or step == t.max_steps - 1)

    def log_record(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, seconds: float) -> dict:
        """What metrics.jsonl holds for a logged step: loss, throughput, MFU, memory per rank."""
        self.state.loss = self.global_mean(loss)
        if self.timed_this_attempt:
            self.state.timed_steps, self.state.timed_seconds = self.state.timed_steps + 1, self.state.timed_seconds + seconds
        self.timed_this_attempt = True
        world = self.rank.world_size
        return {
            "loss": self.state.loss,
            "grad_norm": grad_norm.item(),
            "tokens_per_s": self.tokens_per_step / seconds,
            "tokens_per_s_per_rank": self.tokens_per_step / seconds / world,
            "flops_per_s_per_rank": self.flops_per_step / seconds / world,
            "mfu": self.flops_per_step / seconds / (self.peak_flops * world) if self.peak_flops else None,
            **memory_record(self.state_bytes, self.activations.peak if step >= self.measured_step else None, self.device),
        }

    # ---- evaluation and reductions ----

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over `train.eval_iters` batches (the same batches at every evaluation)."""
        t = self.cfg.train
        for part in self.runner.parts:
            part.eval()
        total = torch.zeros((), device=self.device)
        with attention_backend(t.sdpa_backend):
            for i in range(t.eval_iters):
                for x, y in self.val_loader.micro_batches(i):
                    total += self.runner.eval_loss(x.to(self.device), y.to(self.device))
        for part in self.runner.parts:
            part.train()
        return self.global_mean(total / (t.eval_iters * t.grad_accum))

    def global_mean(self, value: torch.Tensor) -> float:
        """This rank's loss share averaged over data- and context-parallel ranks (each holds the mean
        over its own rows or tokens, all equally many); only the last pp stage holds it."""
        if self.mesh is None:
            return value.item()
        value = value.detach().clone()
        if self.pp_group is not None:
            dist.all_reduce(value, group=self.pp_group)  # the other stages contribute 0
        dist.all_reduce(value, group=self.mesh["dp_cp"].get_group())
        return value.item() / (self.dims.dp * self.dims.cp)

    # ---- the loop ----

    def fit(self) -> dict:
        """Train from the current step to max_steps (or an early stop); returns the summary."""
        t = self.cfg.train
        self.attempt_start, self.wall_before = time.perf_counter(), self.state.wall_time_s
        self.callbacks("on_fit_start", self)
        while self.state.step < t.max_steps and self.error is None:
            record = self.train_step()
            if self.error is None and self.is_eval_step(record["step"]):
                self.callbacks("on_eval_start", self, record["step"])
                record["val_loss"] = self.evaluate()
                self.state.record_eval(record["val_loss"])
                self.callbacks("on_eval", self, record["step"], record["val_loss"])
            if "loss" in record:
                self.metrics.log(record)
            self.callbacks("on_step_end", self, record)
            if self.error is None:
                self.save()
        if self.error is None:
            self.save(final=True)
        self.checkpointer.wait()
        return self.finish()

    def save(self, final: bool = False) -> None:
        """A checkpoint of the current step, when due (or `final`), with the Trainer's state."""
        self.clock_wall_time()
        path = self.checkpointer.maybe_save(self.state.step, self.state.state_dict(), final=final)
        if path is not None:
            self.callbacks("on_save", self, self.state.step, path)

    def clock_wall_time(self) -> None:
        """The state's training time: the earlier attempts' plus this one's so far."""
        self.state.wall_time_s = self.wall_before + time.perf_counter() - self.attempt_start

    def finish(self) -> dict:
        """The summary, the text sample, the callbacks' last word; summary.json on rank 0."""
        summary = self.summary()
        if self.cfg.train.sample_tokens > 0:
            summary["sample"] = self.sample()
            log.info("sample:\n" + summary["sample"])
        self.callbacks("on_fit_end", self, summary)
        self.metrics.close()
        return summary

    @torch.no_grad()
    def sample(self) -> str:
        """`train.sample_tokens` tokens after `train.sample_prompt`, every rank in step through the runner;
        "" for synthetic data (no tokenizer)."""
        t = self.cfg.train
        tokenizer = tokenizer_for(self.data_meta, self.cfg.data.tokenizer_file)
        if tokenizer is None:
            return ""
        for part in self.runner.parts:
            part.eval()
        text = generate_text(self.runner.next_logits, tokenizer, t.sample_prompt, t.sample_tokens, t.seed, self.device)
        for part in self.runner.parts:
            part.train()
        return text

    def summary(self) -> dict:
        """How the run went, over all its attempts (a resumed run's totals include the earlier ones)."""
        cfg, s, d = self.cfg, self.state, self.dims
        self.clock_wall_time()
        return {
            "status": "completed" if self.error is None else "diverged",
            "error": self.error,
            "skipped_steps": s.skipped_steps,
            "final_loss": s.loss,
            "final_val_loss": s.val_loss,
            "best_val_loss": s.best_val_loss,
            "steps": s.step,
            "tokens_seen": s.tokens_seen,
            "mean_tokens_per_s": self.tokens_per_step * s.timed_steps / s.timed_seconds if s.timed_steps else None,
            "wall_time_s": s.wall_time_s,
            "world_size": self.rank.world_size,
            "parallel": cfg.parallel.name,
            "mesh": asdict(d),
            "model": cfg.model.name,
            "data": cfg.data.name,
            "params": num_params(self.model_config),
            **memory_record(self.state_bytes, self.activations.peak, self.device),
            "peak_host_memory_bytes": peak_host_memory(self.device),
        }
