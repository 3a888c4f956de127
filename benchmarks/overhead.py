"""Harness overhead: nanodist's training step against a minimal loop written here (issues 3 and 9).

The harness is the product as launched; the reference, `reference_steps`, plain torch (its own AdamW,
lr schedule, clipping) on the same GPT and batches, so the ratio does not compare the harness with
itself. Lockstep on CPU (the two take turns after every step), alternating runs on CUDA. Target: >= 0.97.

    python benchmarks/overhead.py [--compile] [--device cuda model=gpt2 data=synthetic train.dtype=bfloat16 ...]
"""

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, STEP_ONLY, Probe, alternate, compose, run, tokens_per_step, write_results

from nanodist.config import seq_len_of
from nanodist.data import read_meta
from nanodist.model import GPT, gpt_config
from nanodist.train.callbacks import Callback
from nanodist.train.loader import BatchLayout, TokenLoader

TARGET = 0.97


def reference_steps(cfg, device: torch.device, total: int, compile_blocks: bool):
    """The minimal loop, `total` steps, as a generator: each `next` runs one step and yields its index."""
    t, o = cfg.train, cfg.optim
    config = gpt_config(cfg, read_meta(cfg.data)["vocab_size"])
    loader = TokenLoader(cfg.data, "train", seq_len_of(cfg), BatchLayout(t.batch_size, 1, 1, 0), t.seed, config.vocab_size)
    batches = [[z.to(device) for z in loader.micro_batches(i)[0]] for i in range(total)]  # on the device up front
    model = GPT(config).to(device)
    model.init_weights(t.seed)
    loss_fn = lambda logits, y: F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())  # noqa: E731
    if compile_blocks:  # as train.compile=true does: each block and the loss
        for block in model.transformer.h.values():
            block.compile()
        loss_fn = torch.compile(loss_fn, fullgraph=True)
    decay, other = [p for p in model.parameters() if p.dim() >= 2], [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    for it, (x, y) in enumerate(batches):
        progress = min(1.0, (it - o.warmup_steps) / max(1, t.max_steps - o.warmup_steps))
        lr = o.lr * (it + 1) / o.warmup_steps if it < o.warmup_steps else o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast:
            loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        yield it


class Lockstep(Callback):
    """One reference step after every harness step, in the harness's thread: the two take turns, so
    each pair of steps sees the same machine. A side's step runs from the end of the other's to its own end."""

    def __init__(self, reference):
        self.reference, self.resumed = reference, None
        self.times: dict[str, list[float]] = {"H": [], "R": []}

    def on_step_end(self, trainer, record: dict) -> None:
        now = time.perf_counter()
        self.times["H"].append(now - (self.resumed or now))
        next(self.reference)
        self.resumed = time.perf_counter()
        self.times["R"].append(self.resumed - now)


class Sides:
    """The two sides of the comparison, set up once from the command line."""

    def __init__(self, args):
        self.args, self.device, self.work = args, torch.device(args.device), Path(tempfile.mkdtemp(prefix="nanodist-overhead-"))
        self.overrides = [f"train.device={args.device}", *args.overrides, *(["train.compile=true"] if args.compile else [])]
        self.cfg = compose([*STEP_ONLY, *self.overrides, f"train.max_steps={args.warmup + args.steps}"], str(self.work / "cfg"))

    def harness(self, callbacks=()) -> dict:
        """One harness run (with `callbacks`): its Probe figures."""
        a, work = self.args, Path(tempfile.mkdtemp(dir=self.work))
        return run(self.overrides, work, a.steps, a.warmup, self.device.type == "cuda", callbacks)[1][0]

    def reference(self) -> dict:
        """One reference run: its Probe figures."""
        a = self.args
        probe = Probe(a.warmup - 1, a.warmup + a.steps - 1, self.device.type == "cuda")
        for step in reference_steps(self.cfg, self.device, a.warmup + a.steps, a.compile):
            probe.stamp(step)
        return probe.figures()


def lockstep_pair(sides: Sides) -> tuple[float, float, str]:
    """One harness and one reference run, step by step in turn: each side's median step, and a note."""
    args = sides.args
    baton = Lockstep(reference_steps(sides.cfg, sides.device, args.warmup + args.steps, args.compile))
    sides.harness((baton,))
    h, r = baton.times["H"][args.warmup:], baton.times["R"][args.warmup:]
    note = f"median of step-pair ratios {statistics.median(rs / hs for hs, rs in zip(h, r, strict=True)):.4f}"
    return statistics.median(h), statistics.median(r), note


def runs_pair(sides: Sides, i: int) -> tuple[float, float, str]:
    """A harness run and a reference run, in turn (H R R H ...): each one's seconds per step, and a note."""
    got = {side: sides.harness() if side == "H" else sides.reference() for side in alternate(i, "H", "R")}
    return got["H"]["seconds_per_step"], got["R"]["seconds_per_step"], f"order {''.join(got)}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 40 lockstep, 20 runs)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    ap.add_argument("--repeats", type=int, default=None, help="harness/reference pairs of runs (default 2 lockstep, 6 runs)")
    ap.add_argument("--compile", action="store_true", help="train.compile=true / torch.compile of each block and the loss")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both sides, e.g. model=gpt2 data=synthetic")
    args = ap.parse_args()
    args.mode = "lockstep" if args.device == "cpu" else "runs"  # on CUDA the loops must keep their own CPU/GPU overlap
    args.steps, args.repeats = args.steps or (40 if args.mode == "lockstep" else 20), args.repeats or (2 if args.mode == "lockstep" else 6)
    return args


def main() -> None:
    args = parse_args()
    sides = Sides(args)
    t, tokens = sides.cfg.train, tokens_per_step(sides.cfg)
    print(f"model={sides.cfg.model.name} data={sides.cfg.data.name} batch={t.batch_size}x{tokens // t.batch_size} dtype={t.dtype} "
          f"grad_accum={t.grad_accum} log_interval={t.log_interval} compile={args.compile} device={sides.device} "
          f"threads={torch.get_num_threads()} | mode={args.mode}: {args.repeats} pairs x {args.steps} timed steps (+{args.warmup} warm-up)")
    pairs = []
    for i in range(args.repeats):
        h, ref, note = lockstep_pair(sides) if args.mode == "lockstep" else runs_pair(sides, i)
        pairs.append((h, ref, note))
        print(f"  pair {i}: harness {1e3 * h:8.2f} ms/step {tokens / h:10,.0f} tok/s | "
              f"reference {1e3 * ref:8.2f} ms/step {tokens / ref:10,.0f} tok/s | ratio {ref / h:.4f} ({note})")
    ratios = [ref / h for h, ref, _ in pairs]
    ratio, h_med, r_med = statistics.median(ratios), statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"harness   {1e3 * h_med:.2f} ms/step = {tokens / h_med:,.0f} tok/s\nreference {1e3 * r_med:.2f} ms/step = {tokens / r_med:,.0f} tok/s")
    print(f"throughput ratio harness/reference: {ratio:.4f} (median over pairs; min {min(ratios):.4f}, "
          f"max {max(ratios):.4f}) -> overhead {100 * (1 / ratio - 1):+.2f}%")
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"{verdict}: harness/reference throughput {ratio:.4f} (target >= {TARGET}){' with compile' if args.compile else ''}")
    write_results(RESULTS / f"overhead_{args.device}{'_compile' if args.compile else ''}.json",
                  {"benchmark": "overhead", "mode": args.mode, "overrides": sides.overrides, "tokens_per_step": tokens, "steps": args.steps,
                   "warmup": args.warmup, "harness_s_per_step": h_med, "reference_s_per_step": r_med, "pairs": pairs, "ratio": ratio,
                   "target": TARGET, "verdict": verdict})


if __name__ == "__main__":
    main()
