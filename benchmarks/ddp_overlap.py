"""nanodist's reference DDP: gradient all-reduces overlapped with backward, as a timeline (issue 18).

Two gloo ranks train the same GPT three ways, taking turns round by round: (a) the reference DDP's
per-bucket hooks (`nanodist.parallel.reference.ddp`, each bucket all-reduced as soon as its last
gradient is accumulated), (b) the same buckets' values all-reduced in one call once backward has
finished (`overlap=False`), (c) torch's DDP (composable `replicate`, the native ddp layout) with the
same bucket size. For (a) and (b) it prints, on rank 0, when each bucket's all-reduce was launched
and completed, in ms from the start of backward, against the last gradient hook (the end of
backward's compute) and the return of `loss.backward()`; then tokens/s of all three.

The loop is written here, not the Trainer's: the timeline lives in the `GradientBuckets` object,
which the Trainer does not hand out. On a 2-core machine gloo's threads compete with compute for
the cores, so a wall-clock gain may not show; the timeline shows where the communication went.

    python benchmarks/ddp_overlap.py [--bucket-mb 1] [--layers 6] [--width 256] [--steps 5] [--rounds 2]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from common import RESULTS, write_results
from torch.distributed._composable.replicate import replicate
from torch.distributed.device_mesh import init_device_mesh

from nanodist.model import GPT, GPTConfig
from nanodist.parallel.reference.ddp import apply_reference_ddp

WORLD = 2
VARIANTS = ("(a) bucket hooks", "(b) one all-reduce after backward", "(c) native DDP")


def build(variant: str, config: GPTConfig, bucket_mb: float, mesh):
    """A fresh model under one variant, its AdamW, and its buckets (None for native DDP)."""
    model = GPT(config)
    model.init_weights(0)
    buckets = None
    if variant == VARIANTS[2]:
        replicate(model, device_mesh=mesh, bucket_cap_mb=bucket_mb)
    else:
        buckets = apply_reference_ddp(model, mesh.get_group(), bucket_mb, overlap=variant == VARIANTS[0])
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4), buckets


def batch(step: int, rank: int, rows: int, config: GPTConfig):
    gen = torch.Generator().manual_seed(1000 * step + rank)
    tokens = torch.randint(0, config.vocab_size, (rows, config.block_size + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def one_step(model, optimizer, x, y) -> dict:
    """One training step; the perf_counter times its backward started and returned, its wall and CPU time."""
    start, cpu = time.perf_counter(), time.process_time()
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    backward_start = time.perf_counter()
    loss.backward()
    backward_end = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"backward_start": backward_start, "backward_end": backward_end,
            "wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def relative(step: dict, backward: dict, buckets) -> dict:
    """A step's timeline in ms from its backward's start: per bucket launch and completion, last hook, return."""
    ms = lambda t: round(1e3 * (t - step["backward_start"]), 2)  # noqa: E731
    return {
        "buckets": [{"bucket": i, "mib": round(buckets.buckets[i].flat.numel() * buckets.buckets[i].flat.element_size() / 2**20, 2),
                     "launched_ms": ms(s["launched"]), "completed_ms": ms(s["completed"])}
                    for i, s in sorted(backward["buckets"].items())],
        "last_hook_ms": ms(backward["last_hook"]), "backward_returned_ms": ms(step["backward_end"]),
    }


def worker(rank: int, args, out: str) -> None:
    """Every round runs each variant for warmup + timed steps (the order reversed every other round)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/init", rank=rank, world_size=WORLD)
    mesh = init_device_mesh("cpu", (WORLD,))
    config = GPTConfig(n_layer=args.layers, n_head=args.heads, n_embd=args.width, block_size=args.seq, vocab_size=args.vocab)
    runs = {v: build(v, config, args.bucket_mb, mesh) for v in VARIANTS}
    steps: dict = {v: [] for v in VARIANTS}
    timelines: dict = {v: [] for v in VARIANTS[:2]}
    for r in range(args.rounds):
        for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            model, optimizer, buckets = runs[variant]
            for i in range(args.warmup + args.steps):
                step = one_step(model, optimizer, *batch(i, rank, args.rows, config))
                if i >= args.warmup:
                    steps[variant].append(step)
                    if buckets is not None:
                        timelines[variant].append(relative(step, buckets.timeline[-1], buckets))
    if rank == 0:
        (Path(out) / "rank0.json").write_text(json.dumps({"steps": steps, "timelines": timelines}))
    dist.destroy_process_group()


def print_timeline(variant: str, timeline: dict) -> None:
    print(f"\n{variant}: rank 0, last timed step, ms from the start of backward")
    print(f"  {'bucket':>6} {'MiB':>6} {'launched':>9} {'completed':>10}")
    for b in timeline["buckets"]:
        print(f"  {b['bucket']:>6} {b['mib']:>6.2f} {b['launched_ms']:>9.1f} {b['completed_ms']:>10.1f}")
    print(f"  last gradient hook (backward's compute done) {timeline['last_hook_ms']:.1f} ms; "
          f"loss.backward() returned {timeline['backward_returned_ms']:.1f} ms")


def summary(variant: str, steps: list[dict], timelines: list[dict], tokens: int) -> dict:
    """Medians over the timed steps: wall and CPU time per step, tokens/s, and for (a) and (b) how much
    all-reduce ran inside backward's compute and how long backward waited for it after."""
    wall = statistics.median(s["wall"] for s in steps)
    row = {"variant": variant, "wall_ms": 1e3 * wall, "cpu_ms": 1e3 * statistics.median(s["cpu"] for s in steps),
           "tokens_per_s": tokens / wall}
    if timelines:
        row["launched_before_last_hook"] = statistics.median(
            sum(b["launched_ms"] < t["last_hook_ms"] for b in t["buckets"]) / len(t["buckets"]) for t in timelines)
        row["exposed_ms"] = statistics.median(t["backward_returned_ms"] - t["last_hook_ms"] for t in timelines)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--bucket-mb", 1.0), ("--layers", 6), ("--width", 256), ("--heads", 4), ("--seq", 128),
                          ("--vocab", 4096), ("--rows", 4), ("--warmup", 2), ("--steps", 5), ("--rounds", 2)):
        ap.add_argument(flag, type=type(default), default=default)
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="nanodist-ddp-overlap-")
    mp.spawn(worker, args=(args, out), nprocs=WORLD)
    seen = json.loads((Path(out) / "rank0.json").read_text())
    tokens = WORLD * args.rows * args.seq
    print(f"GPT {args.layers}L/{args.width}d/vocab {args.vocab}, {WORLD} gloo ranks x {args.rows} rows x {args.seq} tokens, "
          f"buckets of {args.bucket_mb} MiB, {args.rounds} rounds x {args.steps} timed steps per variant")
    for variant, timelines in seen["timelines"].items():
        print_timeline(variant, timelines[-1])
    rows = [summary(v, seen["steps"][v], seen["timelines"].get(v, []), tokens) for v in VARIANTS]
    print(f"\n{'':<36}{'step ms':>9}{'CPU ms':>9}{'tokens/s':>10}{'launched in bwd':>17}{'waited after bwd ms':>21}")
    for r in rows:
        inside = f"{r['launched_before_last_hook']:.0%}" if "exposed_ms" in r else "-"
        exposed = f"{r['exposed_ms']:.1f}" if "exposed_ms" in r else "-"
        print(f"{r['variant']:<36}{r['wall_ms']:>9.1f}{r['cpu_ms']:>9.1f}{r['tokens_per_s']:>10,.0f}{inside:>17}{exposed:>21}")
    write_results(RESULTS / "ddp_overlap_cpu.json", {"benchmark": "ddp_overlap", "args": vars(args), "summary": rows,
                                                     "timelines": seen["timelines"], "steps": seen["steps"]})


if __name__ == "__main__":
    main()
