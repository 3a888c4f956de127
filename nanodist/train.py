"""The training loop of one rank: build, parallelise, train, evaluate, log, summarise.

It reads top to bottom like nanoGPT's train.py; every parallel strategy enters through
`nanodist.parallel` (whole-model strategies) or `nanodist.parallel.pp` (pipeline stages), so the
loop itself has one branch: whether this rank runs a pipeline schedule or a plain forward/backward.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from nanodist.checkpoint import Checkpointer
from nanodist.config import padded_vocab_size
from nanodist.data import BatchLayout, TokenLoader
from nanodist.datasets import read_meta
from nanodist.distributed import RankInfo, abandon, agree_on_output_dir, init_process_group, pick_device, shutdown
from nanodist.metrics import MetricsLog, SavedActivations, peak_flops, state_bytes
from nanodist.model import GPT, GPTConfig, flops_per_token, num_params
from nanodist.optim import build_optimizer, lr_at
from nanodist.parallel import parallelize, set_gradient_sync
from nanodist.parallel.clip import clip_grad_norm_
from nanodist.parallel.compile import compile_loss
from nanodist.parallel.dims import ParallelDims
from nanodist.profiling import StepProfiler
from nanodist.sampling import generate_text
from nanodist.slurm import Preemption

log = logging.getLogger("nanodist")


def gpt_config(cfg, dataset_vocab: int) -> GPTConfig:
    """The model's shape: the config's, with the dataset's vocabulary padded as asked."""
    m = cfg.model
    vocab = padded_vocab_size(m, dataset_vocab)
    return GPTConfig(m.n_layer, m.n_head, m.n_embd, m.block_size, vocab, m.dropout, m.bias, m.tie_embeddings)


def run(cfg, rank: RankInfo) -> dict:
    """Entry point of every rank: join the process group, train, and leave it cleanly."""
    device = pick_device(cfg.train.device, rank.local_rank)
    p = cfg.parallel
    # A strategy on a mesh of one (parallel=fsdp mesh.dp_shard=1) still needs a process group and mesh.
    if rank.world_size > 1 or p.data_parallel != "none" or p.tensor_parallel or p.pipeline:
        init_process_group(device)
        cfg.output_dir = agree_on_output_dir(cfg.output_dir)
    setup_logging(cfg.output_dir, rank)
    try:
        summary = train(cfg, rank, device)
    except BaseException:
        # No farewell barrier: the peers may never reach it. The launcher sees this rank fail
        # and stops the others.
        abandon()
        raise
    shutdown()
    return summary


def train(cfg, rank: RankInfo, device: torch.device) -> dict:
    t, p = cfg.train, cfg.parallel
    torch.manual_seed(t.seed)
    set_tf32(device, t.tf32)
    dims = ParallelDims.from_config(cfg, rank.world_size)
    mesh = dims.build_mesh(device.type) if dist.is_initialized() else None
    meta = read_meta(cfg.data)
    config = gpt_config(cfg, meta["vocab_size"])
    seq_len = t.seq_len or config.block_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    loss_context = loss_parallel if p.loss_parallel else contextlib.nullcontext
    # Under loss parallelism the logits are vocab-sharded DTensors: that loss stays eager.
    loss_fn = compile_loss(cross_entropy) if t.compile and not p.loss_parallel else cross_entropy

    # ---- model: built on meta, split into stages if pipelined, sharded, then materialised ----
    if p.pipeline:
        from nanodist.parallel.pp import build_pipeline

        pipeline = build_pipeline(config, dims, mesh, cfg, device, loss_fn=lambda out, y: loss_fn(out, y) / t.grad_accum)
        parts = pipeline.parts
    else:
        with torch.device("meta"):
            model = GPT(config)
        parts = [parallelize(model, dims, mesh, cfg, device)]
    params = list({id(q): q for part in parts for q in part.parameters()}.values())
    optimizer = build_optimizer(params, cfg.optim)

    # ---- data: each dp rank reads its rows of every global batch ----
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    layout = BatchLayout(t.batch_size, t.grad_accum, dims.dp, dp_rank)
    train_loader = TokenLoader(cfg.data, "train", seq_len, layout, t.seed, config.vocab_size)
    val_loader = TokenLoader(cfg.data, "val", seq_len, layout, t.seed, config.vocab_size)

    # ---- checkpoints: resume this run (a restart, a requeue) or checkpoint.resume_from ----
    checkpointer = Checkpointer.from_config(cfg, parts, optimizer, config, meta, {"parallel": p.name, "mesh": asdict(dims)}, device)
    resumed = checkpointer.resume(cfg.checkpoint.resume_from)
    if resumed is not None:
        train_loader.load_state_dict(resumed["loader"])

    metrics = MetricsLog(cfg.output_dir, cfg, t.max_steps, enabled=rank.is_main, print_fn=log.info, first_step=train_loader.step)
    flops_per_step = flops_per_token(config, seq_len) * t.batch_size * seq_len
    peak = peak_flops(device)
    pp_group = mesh["pp"].get_group() if dims.pp > 1 else None
    log.info(
        f"model {config.n_layer}L/{config.n_head}H/{config.n_embd}d, vocab {config.vocab_size}, "
        f"{num_params(config) / 1e6:.2f}M params | parallel={p.name} mesh pp={dims.pp} "
        f"dp_replicate={dims.dp_replicate} dp_shard={dims.dp_shard} tp={dims.tp} | device {device}"
    )

    def forward_backward(micro_batches) -> torch.Tensor:
        """One optimizer step's gradients; returns this rank's share of the mean loss."""
        total = torch.zeros((), device=device)
        for i, (x, y) in enumerate(micro_batches):
            x, y = x.to(device), y.to(device)
            set_gradient_sync(parts, i == len(micro_batches) - 1)
            if p.pipeline:
                total += pipeline.step(x, y, autocast, loss_context)
            else:
                with loss_context():
                    with autocast:
                        loss = loss_fn(parts[0](x), y) / t.grad_accum
                    loss.backward()
                total += as_plain(loss.detach())
        return total

    @torch.no_grad()
    def evaluate() -> float:
        for part in parts:
            part.eval()
        total = torch.zeros((), device=device)
        for i in range(t.eval_iters):
            for x, y in val_loader.micro_batches(i):
                x, y = x.to(device), y.to(device)
                if p.pipeline:
                    total += pipeline.evaluate(x, y, autocast, loss_context)
                else:
                    with loss_context(), autocast:
                        total += as_plain(loss_fn(parts[0](x), y))
        for part in parts:
            part.train()
        return global_mean(total / (t.eval_iters * t.grad_accum), dims, mesh)

    # ---- the loop ----
    # Memory is measured once (shapes never change): the state after the first step, when gradients
    # and optimizer state all exist; the activation peak, by saved-tensor hooks, on the second step,
    # since the first carries one-time work (compilation, a pipeline's shape inference).
    first_step, activations, state = train_loader.step, SavedActivations(), {}
    measured_step = first_step + 1 if first_step + 1 < t.max_steps else first_step
    preemption = Preemption.install()  # SLURM's time-limit signal: checkpoint, then requeue
    profiler = StepProfiler(t.profile_steps, Path(cfg.output_dir, "profile", f"rank{rank.rank}"), device)
    best_val, val_loss, step_times, start = math.inf, None, [], time.perf_counter()
    loss_value, error, skipped = None, None, 0  # None until a step is logged (valid JSON)
    for step in range(train_loader.step, t.max_steps):
        lr = lr_at(step, cfg.optim, t.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        profiler.start(step)
        step_start = time.perf_counter()
        with attention_backend(t.sdpa_backend), activations if step == measured_step else contextlib.nullcontext():
            loss = forward_backward(train_loader.next())
        grad_norm = clip_grad_norm_(params, cfg.optim.grad_clip, pp_group)
        if torch.isfinite(grad_norm):  # the global norm: every rank takes the same branch
            optimizer.step()
        else:
            loss_value = global_mean(loss, dims, mesh)
            problem = f"step {step + 1}: the loss is {loss_value:g} and the gradient norm {grad_norm.item():g}"
            if t.nan_policy == "stop":
                error = (f"{problem}; stopped before the update, so the last good checkpoint stays "
                         f"{checkpointer.latest or 'none (none saved yet)'}; lower optim.lr or set train.nan_policy=skip.")
                log.error(error)
                break
            skipped += 1
            log.warning(f"{problem}; skipped the update (train.nan_policy=skip).")
        if step == first_step:
            state = state_bytes(parts, optimizer)
        optimizer.zero_grad(set_to_none=True)
        profiler.stop()

        last = step == t.max_steps - 1
        evaluating = t.eval_interval > 0 and ((step + 1) % t.eval_interval == 0 or last)
        if (step + 1) % t.log_interval == 0 or step == 0 or last or evaluating:
            loss_value = global_mean(loss, dims, mesh)
            step_time = time.perf_counter() - step_start
            step_times.append(step_time)
            record = {
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": grad_norm.item(),
                "tokens_per_s": t.batch_size * seq_len / step_time,
                "tokens_per_s_per_rank": t.batch_size * seq_len / step_time / rank.world_size,
                "flops_per_s_per_rank": flops_per_step / step_time / rank.world_size,
                "mfu": flops_per_step / step_time / (peak * rank.world_size) if peak else None,
                **memory_record(state, activations.peak if step >= measured_step else None, device),
            }
            if evaluating:
                with attention_backend(t.sdpa_backend):
                    val_loss = evaluate()
                best_val = min(best_val, val_loss)
                record["val_loss"] = val_loss
            metrics.log(record)
        checkpointer.maybe_save(train_loader.step, train_loader.state_dict())
        if preemption is not None and preemption.requested():
            checkpointer.maybe_save(train_loader.step, train_loader.state_dict(), final=True)
            checkpointer.wait()
            log.info(f"signalled before the time limit: saved step {train_loader.step}, requeueing")
            preemption.requeue()

    if preemption is not None:
        preemption.close()
    profiler.stop()  # a step left by `break`
    if error is None:
        checkpointer.maybe_save(train_loader.step, train_loader.state_dict(), final=True)
    checkpointer.wait()

    summary = {
        "status": "completed" if error is None else "diverged",
        "error": error,
        "skipped_steps": skipped,
        "final_loss": loss_value,
        "final_val_loss": val_loss,
        "best_val_loss": None if math.isinf(best_val) else best_val,
        "steps": train_loader.step,
        "tokens_seen": t.max_steps * t.batch_size * seq_len,
        # The first logged step includes warm-up (allocation, compilation): left out of the mean.
        "mean_tokens_per_s": t.batch_size * seq_len / (sum(step_times[1:]) / len(step_times[1:])) if len(step_times) > 1 else None,
        "wall_time_s": time.perf_counter() - start,
        "world_size": rank.world_size,
        "parallel": p.name,
        "mesh": {"pp": dims.pp, "dp_replicate": dims.dp_replicate, "dp_shard": dims.dp_shard, "tp": dims.tp},
        "model": cfg.model.name,
        "data": cfg.data.name,
        "params": num_params(config),
        **memory_record(state, activations.peak, device),
        "peak_host_memory_bytes": peak_host_memory(device),
    }
    if t.sample_tokens > 0 and not p.pipeline:
        sample = generate_text(parts[0], cfg, meta, device, t.sample_tokens)
        log.info("sample:\n" + sample)
        summary["sample"] = sample
    if rank.is_main:
        Path(cfg.output_dir, "summary.json").write_text(json.dumps(summary, indent=1))
    metrics.close()
    return summary


def setup_logging(output_dir: str, rank: RankInfo) -> None:
    """Each rank logs to rank<r>.log in the run dir; rank 0 also prints to the console."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    file_handler = logging.FileHandler(Path(output_dir) / f"rank{rank.rank}.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    if rank.is_main:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token loss; under loss parallelism `logits` is a vocab-sharded DTensor and so is the math."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))


def as_plain(value: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (the loss under loss parallelism) as the plain tensor every rank holds."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def global_mean(value: torch.Tensor, dims: ParallelDims, mesh) -> float:
    """This rank's loss share averaged over data-parallel ranks; only the last pp stage holds it."""
    if mesh is None:
        return value.item()
    value = value.detach().clone()
    if dims.pp > 1:
        dist.all_reduce(value, group=mesh["pp"].get_group())  # the other stages contribute 0
    dist.all_reduce(value, group=mesh["dp"].get_group())
    return value.item() / dims.dp


def memory_record(state: dict, activation_bytes: int | None, device: torch.device) -> dict:
    """Per-rank memory: parameter, gradient and optimizer bytes, the measured activation peak, and
    on GPU the allocator's true peak (which also holds temporaries, buffers and fragmentation)."""
    record = {**state, "activation_bytes": activation_bytes}
    if device.type == "cuda":
        record["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return record


def peak_host_memory(device: torch.device) -> int:
    """The largest resident set any rank has had so far (bytes): what a machine's RAM must hold per rank."""
    peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, device=device)
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return int(peak.item())


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 tensor-core matmuls for fp32 on GPU (a ~10-bit mantissa, as every large run uses); no-op on CPU."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")


SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
    "cudnn": "CUDNN_ATTENTION",
}


def attention_backend(name: str):
    """A context pinning scaled_dot_product_attention to one kernel; "auto" leaves PyTorch's choice.

    A kernel the device or inputs cannot use fails loudly at the first forward rather than falling back.
    """
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[name]))
