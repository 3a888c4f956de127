"""Harness overhead: nanodist's training step against a minimal loop written here (issues 3 and 9).

The harness is the product as launched (`nanodist.launch.local.launch`); the reference,
`reference_loop`, is plain torch (its own AdamW, lr schedule, clipping) on the same GPT and batches,
so the ratio compares the harness with something other than itself. Both run in this process:
lockstep (default on CPU: the harness in a thread, the two hand a baton over after every step, so
each pair of steps sees the same machine) or alternating whole runs (default on CUDA).

    python benchmarks/overhead.py [--compile]       # CPU, the default model (tiny, shakespeare_char)
    python benchmarks/overhead.py --device cuda model=gpt2 data=synthetic train.batch_size=16 train.dtype=bfloat16
    python benchmarks/overhead.py --profile python  # cProfile of the harness's timed steps (kernels: torch.profiler, both sides)

Target: harness throughput >= 0.97 x reference (overhead <= 3%).
"""

import argparse
import cProfile
import io
import math
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, STEP_ONLY, Probe, compose, run, tokens_per_step, write_results  # noqa: E402

from nanodist.data import read_meta  # noqa: E402
from nanodist.model import GPT, gpt_config  # noqa: E402
from nanodist.train.callbacks import Callback  # noqa: E402
from nanodist.train.loader import BatchLayout, TokenLoader  # noqa: E402

TARGET = 0.97


def reference_loop(cfg, device: torch.device, total: int, compile_blocks: bool, after_step) -> None:
    """The minimal loop: `total` steps, `after_step(step)` after each update (a Probe's stamp, or the baton)."""
    t, o = cfg.train, cfg.optim
    config = gpt_config(cfg, read_meta(cfg.data)["vocab_size"])
    torch.manual_seed(t.seed)
    loader = TokenLoader(cfg.data, "train", t.seq_len or config.block_size, BatchLayout(t.batch_size, 1, 1, 0), t.seed, config.vocab_size)
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
        after_step(it)


class Lockstep(Callback):
    """The harness (H, in a thread) and the reference (R) take turns after every step; each side's step
    is timed from getting the baton to the end of its next update, so both see the same machine."""

    def __init__(self, total: int):
        self.total, self.cond, self.turn, self.failed = total, threading.Condition(), "H", False
        self.resumed: dict[str, float] = {}
        self.times: dict[str, list[float]] = {"H": [], "R": []}

    def on_step_end(self, trainer, record: dict) -> None:
        self.after_step("H")

    def after_step(self, side: str) -> None:
        now = time.perf_counter()
        self.times[side].append(now - self.resumed.get(side, now))
        with self.cond:
            self.turn = "R" if side == "H" else "H"
            self.cond.notify_all()
        if side == "H" or len(self.times["R"]) < self.total:  # the reference's last step ends the dance
            self.wait_turn(side)

    def wait_turn(self, side: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.turn == side or self.failed, timeout=600):
                self.failed = True
        self.resumed[side] = time.perf_counter()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()


class Sides:
    """The two sides of the comparison, set up once from the command line."""

    def __init__(self, args):
        self.args, self.device, self.work = args, torch.device(args.device), Path(tempfile.mkdtemp(prefix="nanodist-overhead-"))
        self.overrides = [f"train.device={args.device}", *args.overrides, *(["train.compile=true"] if args.compile else [])]
        self.cfg = compose([*STEP_ONLY, *self.overrides, f"train.max_steps={args.warmup + args.steps}"], str(self.work / "cfg"))
        self.tokens, self.runs = tokens_per_step(self.cfg), 0

    def probe(self, profiler=None) -> Probe:
        return Probe(self.args.warmup - 1, self.args.warmup + self.args.steps - 1, self.device.type == "cuda", profiler=profiler)

    def harness(self, callbacks=()) -> dict:
        """One harness run (with `callbacks`): its Probe figures."""
        self.runs += 1
        a = self.args
        return run(self.overrides, self.work / f"h{self.runs}", a.steps, a.warmup, self.device.type == "cuda", callbacks)[1][0]

    def reference(self, probe: Probe | None = None, after_step=None) -> dict:
        """One reference run: the figures of `probe` (a fresh one by default), or those `after_step` takes."""
        probe = probe or self.probe()
        reference_loop(self.cfg, self.device, self.args.warmup + self.args.steps, self.args.compile, after_step or probe.stamp)
        return probe.figures()


def lockstep_pair(sides: Sides) -> tuple[float, float, str]:
    """One harness and one reference run, step by step in turn: each side's median step, and a note."""
    baton, error, warmup = Lockstep(sides.args.warmup + sides.args.steps), [], sides.args.warmup

    def harness() -> None:
        try:
            sides.harness((baton,))
        except BaseException as e:  # noqa: BLE001 - raised below, in the main thread
            error.append(e)
            baton.fail()

    thread = threading.Thread(target=harness, name="harness")
    thread.start()
    try:
        baton.wait_turn("R")
        sides.reference(after_step=lambda step: baton.after_step("R"))
    except BaseException:
        baton.fail()
        raise
    finally:
        thread.join()
    if error:
        raise error[0]
    h, r = baton.times["H"][warmup:], baton.times["R"][warmup:]
    note = f"median of step-pair ratios {statistics.median(b / a for a, b in zip(h, r)):.4f}"
    return statistics.median(h), statistics.median(r), note


def runs_pair(sides: Sides, i: int) -> tuple[float, float, str]:
    """A harness run and a reference run, in turn (H R R H ...): each one's seconds per step, and a note."""
    if i % 2 == 0:
        h, r = sides.harness(), sides.reference()
    else:
        r, h = sides.reference(), sides.harness()
    return h["seconds_per_step"], r["seconds_per_step"], f"order {'HR' if i % 2 == 0 else 'RH'}"


def profile(sides: Sides, kind: str) -> dict:
    """cProfile (`python`: the harness) or torch.profiler (`kernels`: both sides) over the timed steps only: top costs."""
    cuda, out = sides.device.type == "cuda", {}
    activities = [torch.profiler.ProfilerActivity.CPU, *[torch.profiler.ProfilerActivity.CUDA] * cuda]
    for side in ("harness", "reference") if kind == "kernels" else ("harness",):
        probe = sides.probe(cProfile.Profile() if kind == "python" else torch.profiler.profile(activities=activities))
        if side == "harness":
            sides.harness((probe,))
        else:
            sides.reference(probe)
        if kind == "python":
            buf = io.StringIO()
            pstats.Stats(probe.profiler, stream=buf).sort_stats("tottime").print_stats(15)
            text = buf.getvalue()
            out[side] = "\n".join(line[:150] for line in text[text.find("   ncalls"):].splitlines() if line.strip())
        else:
            out[side] = probe.profiler.key_averages().table(sort_by=f"self_{'device' if cuda else 'cpu'}_time_total", row_limit=14, max_name_column_width=60)
        print(f"--- {side}: top costs over the {sides.args.steps} timed steps\n{out[side]}")
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mode", choices=["lockstep", "runs"], default=None, help="default: lockstep on CPU, runs on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 40 lockstep, 20 runs)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    ap.add_argument("--repeats", type=int, default=None, help="harness/reference pairs of runs (default 2 lockstep, 6 runs)")
    ap.add_argument("--compile", action="store_true", help="train.compile=true / torch.compile of each block and the loss")
    ap.add_argument("--profile", choices=["python", "kernels"], default=None, help="also profile a run first (see above)")
    ap.add_argument("--json", default=None, help="where to write the figures (default benchmarks/results/overhead_<device>[_compile].json)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both sides, e.g. model=gpt2 data=synthetic")
    args = ap.parse_args()
    args.mode = args.mode or ("lockstep" if args.device == "cpu" else "runs")
    args.steps, args.repeats = args.steps or (40 if args.mode == "lockstep" else 20), args.repeats or (2 if args.mode == "lockstep" else 6)
    if args.mode == "lockstep" and args.device == "cuda":
        ap.error("lockstep mode is for CPU; on CUDA use --mode runs")
    return args


def main() -> None:
    args = parse_args()
    sides = Sides(args)
    t, tokens = sides.cfg.train, sides.tokens
    print(f"model={sides.cfg.model.name} data={sides.cfg.data.name} batch={t.batch_size}x{tokens // t.batch_size} dtype={t.dtype} "
          f"grad_accum={t.grad_accum} log_interval={t.log_interval} compile={args.compile} device={sides.device} "
          f"threads={torch.get_num_threads()} | mode={args.mode}: {args.repeats} pairs x {args.steps} timed steps (+{args.warmup} warm-up)")
    profiles = profile(sides, args.profile) if args.profile else None
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
    path = Path(args.json) if args.json else RESULTS / f"overhead_{args.device}{'_compile' if args.compile else ''}.json"
    write_results(path, {"benchmark": "overhead", "mode": args.mode, "overrides": sides.overrides, "tokens_per_step": tokens,
                         "steps": args.steps, "warmup": args.warmup, "harness_s_per_step": h_med, "reference_s_per_step": r_med,
                         "pairs": pairs, "ratio": ratio, "target": TARGET, "verdict": verdict, "profile": profiles})


if __name__ == "__main__":
    main()
