"""Measured pipeline bubble of every torch.distributed.pipelining schedule, beside (p-1)/(m+p-1).

    python benchmarks/pp_bubble.py [--pp 4] [--microbatches 4 8] [--ms 20] [--steps 3]

Method. On a CPU box the ranks would fight over the cores, so real compute cannot show the
bubble. Instead each pipeline stage "computes" by sleeping, which costs no CPU: per microbatch a
stage sleeps F in forward, I in backward-for-inputs and W in backward-for-weights (F = I = W =
--ms, the zero-bubble papers' unit). The sleeps sit on autograd's two paths (I on the activation,
W on the weight), so schedules that split the backward (InterleavedZeroBubble, ZBVZeroBubble,
DualPipeV) really can move W into the gaps. The model's total work is the same for every schedule:
with v stages per rank each stage's sleeps are 1/v as long. Each rank adds up the time it spent
inside the sleeps (busy) over `--steps` timed steps between two barriers (wall); its bubble is
1 - busy/wall, and the table shows the mean over ranks. What is not compute (gloo p2p of tiny
tensors, Python scheduling overhead) counts as bubble, as it would on a real machine.

Stage placement and schedule classes come from nanodist.parallel.pp, so this measures the same
layouts that training uses; (p-1)/(m+p-1) is the textbook bubble of GPipe and 1F1B.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanodist.config import PP_SCHEDULES  # noqa: E402
from nanodist.parallel.pp import schedule_class, stage_ids  # noqa: E402
from torch.distributed.pipelining import PipelineStage  # noqa: E402
from torch.distributed.pipelining.schedules import PipelineScheduleSingle  # noqa: E402

BUSY = [0.0]  # seconds this process spent "computing" (sleeping inside a stage)
WIDTH = 8  # hidden size of the toy stages; tiny, so communication stays cheap


def busy_sleep(seconds: float) -> None:
    start = time.perf_counter()
    time.sleep(seconds)
    BUSY[0] += time.perf_counter() - start


class Work(torch.autograd.Function):
    """Identity that sleeps `fwd` seconds in forward and `bwd` seconds in backward."""

    @staticmethod
    def forward(ctx, x, fwd: float, bwd: float):
        busy_sleep(fwd)
        ctx.bwd = bwd
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        busy_sleep(ctx.bwd)
        return grad, None, None


class SleepStage(nn.Module):
    """out = Work_FI(x @ Work_W(w)): F in forward; I on the activation path, W on the weight path."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.weight = nn.Parameter(torch.eye(WIDTH))

    def forward(self, x):
        h = x @ Work.apply(self.weight, 0.0, self.seconds)
        return Work.apply(h, self.seconds, self.seconds)


def measure(schedule_name: str, pp: int, m: int, seconds: float, steps: int) -> float:
    """This rank's bubble fraction for one schedule: 1 - busy / wall over `steps` timed steps."""
    spr = 1 if PP_SCHEDULES[schedule_name] == "single" else 2
    n_stages = pp * spr
    rank = dist.get_rank()
    stages = [
        PipelineStage(SleepStage(seconds / spr), s, n_stages, torch.device("cpu"))
        for s in stage_ids(schedule_name, pp, spr, rank)
    ]
    cls = schedule_class(schedule_name)
    schedule = cls(
        stages[0] if issubclass(cls, PipelineScheduleSingle) else stages,
        n_microbatches=m,
        loss_fn=lambda out, y: ((out - y) ** 2).mean(),
    )
    x, y = torch.randn(m, WIDTH), torch.randn(m, WIDTH)
    first, last = any(s.is_first for s in stages), any(s.is_last for s in stages)

    def step():
        schedule.step(*((x,) if first else ()), target=y if last else None)

    step()  # warm-up: metadata inference and communicator set-up
    dist.barrier()
    BUSY[0] = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    return 1 - BUSY[0] / (time.perf_counter() - start)


def worker(rank: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group("gloo", rank=rank, world_size=args.pp)
    rows = []
    for name in PP_SCHEDULES:
        for m in args.microbatches:
            if name == "DualPipeV" and (m < 2 * args.pp or not hasattr(torch.distributed.pipelining, "ScheduleDualPipeV")):
                rows.append((name, m, None))
                continue
            bubble = torch.tensor(measure(name, args.pp, m, args.ms / 1000, args.steps))
            dist.all_reduce(bubble)
            rows.append((name, m, bubble.item() / args.pp))
    if rank == 0:
        p = args.pp
        print(f"pp={p}, F=I=W={args.ms} ms per stage per microbatch (1/v of it with v stages per rank), {args.steps} timed steps")
        print(f"{'schedule':<22} {'stages/rank':>11} {'m':>3} {'measured bubble':>16} {'(p-1)/(m+p-1)':>14}")
        for name, m, bubble in rows:
            spr = 1 if PP_SCHEDULES[name] == "single" else 2
            measured = "n/a (m < 2p)" if bubble is None else f"{bubble:.3f}"
            print(f"{name:<22} {spr:>11} {m:>3} {measured:>16} {(p - 1) / (m + p - 1):>14.3f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, default=4, help="pipeline ranks")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--ms", type=float, default=20.0, help="F = I = W per stage per microbatch, milliseconds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per schedule")
    parser.add_argument("--port", type=int, default=29561)
    args = parser.parse_args()
    mp.spawn(worker, args=(args,), nprocs=args.pp)


if __name__ == "__main__":
    main()
