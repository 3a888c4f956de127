"""Measured pipeline bubble of every torch.distributed.pipelining schedule, beside (p-1)/(m+p-1).

    python benchmarks/pp_bubble.py [--pp 4] [--microbatches 4 8] [--ms 20] [--steps 3]

The first row is naive model parallelism (`parallel=model_parallel`: one batch flowing stage to stage,
a GPipe schedule of one microbatch), the baseline the schedules are measured against.
Stages sleep instead of computing (F = I = W = --ms, 1/v each with v stages per rank), so ranks on a
few cores do not slow one another; bubble = 1 - time asleep / wall time. Stage placement, schedules
and the ranks' start are the product's (nanodist.parallel.pp, nanodist.launch.local).
"""

import argparse
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.launcher.api import elastic_launch
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle

from nanodist.config import PP_SCHEDULES
from nanodist.launch.local import local_launch_config
from nanodist.parallel.pp import schedule_class, stage_ids

BUSY = [0.0]  # seconds this process spent "computing" (sleeping inside a stage)
WIDTH = 8  # hidden size of the toy stages; tiny, so communication stays cheap


class Sleep(torch.autograd.Function):
    """Identity that sleeps `fwd` seconds in forward and `bwd` seconds in backward, counted in BUSY."""

    @staticmethod
    def nap(seconds: float) -> None:
        start = time.perf_counter()
        time.sleep(seconds)
        BUSY[0] += time.perf_counter() - start

    @staticmethod
    def forward(ctx, x, fwd: float, bwd: float):
        Sleep.nap(fwd)
        ctx.bwd = bwd
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        Sleep.nap(ctx.bwd)
        return grad, None, None


class SleepStage(nn.Module):
    """out = Sleep_FI(x @ Sleep_W(w)): F in forward; I on the activation path, W on the weight path."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.weight = seconds, nn.Parameter(torch.eye(WIDTH))

    def forward(self, x):
        return Sleep.apply(x @ Sleep.apply(self.weight, 0.0, self.seconds), self.seconds, self.seconds)


def measure(name: str, pp: int, m: int, seconds: float, steps: int) -> float:
    """This rank's bubble fraction for one schedule: 1 - busy / wall over `steps` timed steps."""
    spr = 1 if PP_SCHEDULES[name] == "single" else 2
    stages = [PipelineStage(SleepStage(seconds / spr), s, pp * spr, torch.device("cpu")) for s in stage_ids(name, pp, spr, dist.get_rank())]
    cls = schedule_class(name)
    schedule = cls(stages[0] if issubclass(cls, PipelineScheduleSingle) else stages, n_microbatches=m, loss_fn=lambda out, y: ((out - y) ** 2).mean())
    x, y = torch.randn(m, WIDTH), torch.randn(m, WIDTH)
    inputs, target = (x,) if any(s.is_first for s in stages) else (), y if any(s.is_last for s in stages) else None
    schedule.step(*inputs, target=target)  # warm-up: metadata inference and communicator set-up
    dist.barrier()
    BUSY[0], start = 0.0, time.perf_counter()
    for _ in range(steps):
        schedule.step(*inputs, target=target)
    dist.barrier()
    return 1 - BUSY[0] / (time.perf_counter() - start)


def worker(args) -> list[tuple]:
    """One rank (torch elastic set up the rendezvous): every schedule at every m, after naive model
    parallelism (parallel=model_parallel: GPipe of one microbatch); the bubble is the mean over ranks."""
    dist.init_process_group("gloo")
    rows = []
    runs = [("model_parallel", "GPipe", 1)] + [(name, name, m) for name in PP_SCHEDULES for m in args.microbatches]
    for label, name, m in runs:
        if name == "DualPipeV" and m < 2 * args.pp:  # it needs m >= 2p
            rows.append((label, name, m, None))
            continue
        bubble = torch.tensor(measure(name, args.pp, m, args.ms / 1000, args.steps))
        dist.all_reduce(bubble)
        rows.append((label, name, m, bubble.item() / args.pp))
    dist.destroy_process_group()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, default=4, help="pipeline ranks")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--ms", type=float, default=20.0, help="F = I = W per stage per microbatch, milliseconds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per schedule")
    args = parser.parse_args()
    rows, p = elastic_launch(local_launch_config(args.pp, max_restarts=0), worker)(args)[0], args.pp
    print(f"pp={p}, F=I=W={args.ms} ms per stage per microbatch (1/v of it with v stages per rank), {args.steps} timed steps")
    print(f"{'schedule':<22} {'stages/rank':>11} {'m':>3} {'measured bubble':>16} {'(p-1)/(m+p-1)':>14}")
    for label, name, m, bubble in rows:
        measured = "n/a (m < 2p)" if bubble is None else f"{bubble:.3f}"
        print(f"{label:<22} {1 if PP_SCHEDULES[name] == 'single' else 2:>11} {m:>3} {measured:>16} {(p - 1) / (m + p - 1):>14.3f}")


if __name__ == "__main__":
    main()
