"""Harness overhead: nanodist's training step against a minimal loop written here (issues 3 and 9).

Both sides train the same GPT (nanodist.model.GPT) on the same batches, with the same AdamW (fused,
decay on matrices only), grad clipping, lr schedule and autocast. The harness side goes through the
product's real path (Hydra config -> nanodist.launch.local.worker -> nanodist.train.train, with its
loader, logging, metrics, clipping, NaN check); the reference is the short loop in
`reference_loop` below. A step is timed from one optimizer step to the next, so everything the loop
does between two updates counts. Evaluation, sampling and checkpoint saving are turned off: they
are not part of a training step. Both sides run in one process, in one of two ways:

- lockstep (default on CPU): the harness runs in a thread and the two loops hand a baton to each
  other after every optimizer step (H R H R ...), so each pair of steps sees the same machine: drift
  and other tenants of a shared machine cancel step by step. Figure: the median step of each side.
- runs (default on CUDA): whole runs alternate (H R R H H R ...), the device synchronised only at the
  edges of each timed window, so each loop keeps whatever CPU/GPU overlap it has. Figure: the mean
  step over the window, per run; the verdict uses the median over pairs of runs.

    python benchmarks/overhead.py                   # CPU, the default model (tiny, shakespeare_char)
    python benchmarks/overhead.py --compile         # train.compile=true / torch.compile per block
    python benchmarks/overhead.py --device cuda model=gpt2 data=synthetic train.batch_size=16 train.dtype=bfloat16
    python benchmarks/overhead.py --profile         # where the harness spends its time (cProfile)

Target: harness throughput >= 0.97 x reference (overhead <= 3%).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.optim.optimizer as optimizer_hooks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, StepClock, compose, has_key, machine, run_probed, save_json  # noqa: E402

TARGET = 0.97


class Lockstep:
    """Two loops in two threads taking turns after every optimizer step; each side's steps are timed
    from the moment it gets the baton to its next optimizer step."""

    def __init__(self, total_steps: int):
        self.total = total_steps
        self.cond = threading.Condition()
        self.turn = "H"
        self.harness_thread: int | None = None
        self.resumed: dict[str, float] = {}
        self.times: dict[str, list[float]] = {"H": [], "R": []}
        self.failed = False
        self.handle = optimizer_hooks.register_optimizer_step_post_hook(self._hook)

    def _side(self) -> str:
        return "H" if threading.get_ident() == self.harness_thread else "R"

    def _hook(self, optimizer, args, kwargs) -> None:
        side = self._side()
        now = time.perf_counter()
        self.times[side].append(now - self.resumed.get(side, now))
        other = "R" if side == "H" else "H"
        with self.cond:
            self.turn = other
            self.cond.notify_all()
            # The reference's last step ends the dance: it hands the baton back and goes on.
            if side == "R" and len(self.times["R"]) >= self.total:
                return
            if not self.cond.wait_for(lambda: self.turn == side or self.failed, timeout=600):
                self.failed = True
        self.resumed[side] = time.perf_counter()

    def wait_turn(self, side: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == side or self.failed, timeout=600)
        self.resumed[side] = time.perf_counter()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def close(self) -> None:
        self.handle.remove()


ABLATIONS = {
    # What the harness does that the minimal loop does not, one at a time (see --ablate).
    "item": "clip: read the global norm on the host every step (.item(), a device sync)",
    "isfinite": "branch on torch.isfinite(grad_norm) every step (a device sync)",
    "host_batch": "draw each step's batch on the host and copy it from pageable memory (.to(device))",
    "pinned_batch": "draw each step's batch on the host, pin it, copy non_blocking",
    "compiled_loss": "torch.compile the lm_head + cross-entropy too (fuses the fp32 softmax)",
}


def reference_loop(cfg, device: torch.device, steps: int, warmup: int, compile_blocks: bool,
                   lockstep: Lockstep | None = None, variant: frozenset = frozenset()) -> dict:
    """The minimal loop. Returns StepClock figures over `steps` timed steps after `warmup` (runs mode).

    `variant` adds harness habits from ABLATIONS, to attribute the harness's overhead to them."""
    from nanodist.train.loader import BatchLayout, TokenLoader
    from nanodist.data import read_meta
    from nanodist.model import GPT
    from nanodist.train.trainer import gpt_config

    t, o = cfg.train, cfg.optim
    config = gpt_config(cfg, read_meta(cfg.data)["vocab_size"])
    seq_len = t.seq_len or config.block_size
    torch.manual_seed(t.seed)
    # The batches the trainer draws (its own loader), materialised on the device up front.
    loader = TokenLoader(cfg.data, "train", seq_len, BatchLayout(t.batch_size, 1, 1, 0), t.seed, config.vocab_size)
    batches = [tuple(z.to(device) for z in loader.micro_batches(i)[0]) for i in range(warmup + steps)]

    model = GPT(config).to(device)
    model.init_weights(t.seed)
    if compile_blocks:
        for block in model.transformer.h.values():
            block.compile()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    total = warmup + steps

    def cross_entropy(logits, y):
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    if compile_blocks:  # as train.compile=true does: the blocks and the loss
        cross_entropy = torch.compile(cross_entropy, fullgraph=True)  # noqa: F811

    def loss_of(x, y):
        return cross_entropy(model(x), y)

    if "compiled_loss" in variant:
        head = model.lm_head
        model.lm_head = None  # the model returns hidden states; head + loss compile as one graph
        head_loss = torch.compile(lambda h, y: F.cross_entropy(head(h).flatten(0, 1).float(), y.flatten()))

        def loss_of(x, y):  # noqa: F811
            return head_loss(model(x), y)
    clock = StepClock(warmup - 1, total - 1, sync_cuda=device.type == "cuda") if lockstep is None else None
    if lockstep is not None:
        lockstep.wait_turn("R")
    try:
        for it in range(total):
            if it < o.warmup_steps:
                lr = o.lr * (it + 1) / o.warmup_steps
            else:
                progress = min(1.0, (it - o.warmup_steps) / max(1, t.max_steps - o.warmup_steps))
                lr = o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))
            for group in opt.param_groups:
                group["lr"] = lr
            if "host_batch" in variant or "pinned_batch" in variant:
                x, y = loader.micro_batches(it)[0]
                if "pinned_batch" in variant and device.type == "cuda":
                    x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
                else:
                    x, y = x.to(device), y.to(device)
            else:
                x, y = batches[it]
            with autocast:
                loss = loss_of(x, y)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip, foreach=True)
            if "item" in variant:
                norm.item()
            if "isfinite" in variant and not torch.isfinite(norm):
                continue
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        if clock is not None:
            clock.close()
    return clock.figures() if clock is not None else {}


def harness_run(overrides: list[str], steps: int, warmup: int, work: Path, cuda: bool) -> dict:
    total = warmup + steps
    probe = {"first": warmup - 1, "last": total - 1, "sync_cuda": cuda}
    return run_probed([*overrides, f"train.max_steps={total}"], work, probe, quiet=True)[0]


def lockstep_pair(overrides, cfg, device, args, work: Path) -> tuple[list[float], list[float]]:
    """One harness run and one reference run, step by step in turn; each side's timed step times."""
    total = args.warmup + args.steps
    baton = Lockstep(total)
    error: list[BaseException] = []

    def harness():
        baton.harness_thread = threading.get_ident()
        try:
            harness_run(overrides, args.steps, args.warmup, work, cuda=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            error.append(e)
            baton.fail()

    thread = threading.Thread(target=harness, name="harness")
    try:
        thread.start()
        while baton.harness_thread is None:
            time.sleep(0.01)
        reference_loop(cfg, device, args.steps, args.warmup, args.compile, lockstep=baton)
        thread.join()
    except BaseException:
        baton.fail()
        raise
    finally:
        baton.close()
    if error:
        raise error[0]
    return baton.times["H"][args.warmup:total], baton.times["R"][args.warmup:total]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mode", choices=["lockstep", "runs"], default=None, help="default: lockstep on CPU, runs on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 40 lockstep, 20 runs)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    ap.add_argument("--repeats", type=int, default=None, help="harness/reference pairs of runs (default 2 lockstep, 6 runs)")
    ap.add_argument("--compile", action="store_true", help="train.compile=true / torch.compile per block")
    ap.add_argument("--profile", action="store_true", help="also cProfile one harness run and print the top costs")
    ap.add_argument("--ablate", action="store_true",
                    help="runs mode: also time the reference with each harness habit added (ABLATIONS), to attribute the overhead")
    ap.add_argument("--kernel-profile", action="store_true",
                    help="also torch.profiler 3 steps of each side: device time per step, top kernels")
    ap.add_argument("--json", default=None, help="where to write the figures (default benchmarks/results/overhead_<device>[_compile].json)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both sides, e.g. model=gpt2 data=synthetic")
    args = ap.parse_args()
    args.mode = args.mode or ("lockstep" if args.device == "cpu" else "runs")
    args.steps = args.steps or (40 if args.mode == "lockstep" else 20)
    args.repeats = args.repeats or (2 if args.mode == "lockstep" else 6)
    if args.mode == "lockstep" and args.device == "cuda":
        ap.error("lockstep mode is for CPU; on CUDA use --mode runs")

    work = Path(tempfile.mkdtemp(prefix="nanodist-overhead-"))
    overrides = [f"train.device={args.device}", "train.eval_interval=0", "train.sample_tokens=0", *args.overrides]
    cfg = compose(overrides, str(work / "cfg"))
    if has_key(cfg, "checkpoint.enabled"):
        overrides.append("checkpoint.enabled=false")
    if args.compile:
        if not has_key(cfg, "train.compile"):
            print("SKIP: --compile asked but the config has no train.compile lever yet.")
            sys.exit(0)
        overrides.append("train.compile=true")
    cfg = compose([*overrides, f"train.max_steps={args.warmup + args.steps}"], str(work / "cfg"))
    device = torch.device(args.device)
    t = cfg.train
    seq_len = t.seq_len or cfg.model.block_size
    tokens = t.batch_size * seq_len
    print(
        f"model={cfg.model.name} data={cfg.data.name} batch={t.batch_size}x{seq_len} dtype={t.dtype} "
        f"grad_accum={t.grad_accum} log_interval={t.log_interval} compile={args.compile} device={device} "
        f"threads={torch.get_num_threads()} | mode={args.mode}: {args.repeats} pairs x {args.steps} timed steps (+{args.warmup} warm-up)"
    )
    if args.profile:
        profile(overrides, args, work)
    kernel_profiles = kernel_profile(overrides, cfg, device, args, work) if args.kernel_profile else None

    pairs = []  # (harness s/step, reference s/step) per pair of runs
    detail = []
    for r in range(args.repeats):
        if args.mode == "lockstep":
            h_times, r_times = lockstep_pair(overrides, cfg, device, args, work / f"pair{r}")
            step_ratios = [b / a for a, b in zip(h_times, r_times)]
            h, ref = statistics.median(h_times), statistics.median(r_times)
            detail.append({"harness_steps": h_times, "reference_steps": r_times})
            extra = f"median of step-pair ratios {statistics.median(step_ratios):.4f}"
        else:
            first = ("H", "R") if r % 2 == 0 else ("R", "H")
            got = {}
            for side in first:
                if side == "H":
                    got["H"] = harness_run(overrides, args.steps, args.warmup, work / f"h{r}", args.device == "cuda")
                else:
                    got["R"] = reference_loop(cfg, device, args.steps, args.warmup, args.compile)
            h, ref = got["H"]["seconds_per_step"], got["R"]["seconds_per_step"]
            detail.append({"harness": got["H"], "reference": got["R"], "order": "".join(first)})
            extra = f"order {''.join(first)}"
        pairs.append((h, ref))
        print(
            f"  pair {r}: harness {1e3 * h:8.2f} ms/step {tokens / h:10,.0f} tok/s | "
            f"reference {1e3 * ref:8.2f} ms/step {tokens / ref:10,.0f} tok/s | ratio {ref / h:.4f} ({extra})"
        )
    ablation = ablate(overrides, cfg, device, args, work, tokens) if args.ablate else None
    ratios = [ref / h for h, ref in pairs]
    median_ratio = statistics.median(ratios)
    h_med = statistics.median(h for h, _ in pairs)
    r_med = statistics.median(ref for _, ref in pairs)
    print(f"harness   {1e3 * h_med:.2f} ms/step = {tokens / h_med:,.0f} tok/s")
    print(f"reference {1e3 * r_med:.2f} ms/step = {tokens / r_med:,.0f} tok/s")
    print(
        f"throughput ratio harness/reference: {median_ratio:.4f} (median over pairs; min {min(ratios):.4f}, "
        f"max {max(ratios):.4f}) -> overhead {100 * (1 / median_ratio - 1):+.2f}%"
    )
    verdict = "PASS" if median_ratio >= TARGET else "FAIL"
    print(f"{verdict}: harness/reference throughput {median_ratio:.4f} (target >= {TARGET}){' with compile' if args.compile else ''}")
    name = f"overhead_{args.device}{'_compile' if args.compile else ''}.json"
    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / name
    save_json(out, {
        "benchmark": "overhead", "machine": machine(), "mode": args.mode, "overrides": overrides, "compile": args.compile,
        "tokens_per_step": tokens, "steps": args.steps, "warmup": args.warmup,
        "harness_s_per_step": h_med, "reference_s_per_step": r_med, "harness_tokens_per_s": tokens / h_med,
        "reference_tokens_per_s": tokens / r_med, "pair_ratios": ratios, "ratio": median_ratio,
        "target": TARGET, "verdict": verdict, "pairs": detail, "kernel_profile": kernel_profiles, "ablation": ablation,
    })
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def ablate(overrides, cfg, device, args, work: Path, tokens: int) -> dict:
    """Harness and reference variants in alternating rounds; each variant's mean step and its gap to the plain loop."""
    from nanodist.train.metrics import peak_flops
    from nanodist.model import flops_per_token
    from nanodist.train.trainer import gpt_config
    from nanodist.data import read_meta

    seq = cfg.train.seq_len or cfg.model.block_size
    flops = flops_per_token(gpt_config(cfg, read_meta(cfg.data)["vocab_size"]), seq) * tokens
    peak = peak_flops(device)
    variants = {
        "reference": frozenset(),
        "+item": frozenset({"item"}),
        "+item+isfinite": frozenset({"item", "isfinite"}),
        "+host_batch": frozenset({"host_batch"}),
        "+item+isfinite+host_batch": frozenset({"item", "isfinite", "host_batch"}),
        "+pinned_batch": frozenset({"pinned_batch"}),
        "+compiled_loss": frozenset({"compiled_loss"}),
    }
    times: dict[str, list[float]] = {name: [] for name in ["harness", *variants]}
    for rnd in range(2):
        names = list(times) if rnd % 2 == 0 else list(times)[::-1]
        for name in names:
            if name == "harness":
                times[name].append(harness_run(overrides, args.steps, args.warmup, work / f"ab{rnd}", device.type == "cuda")["seconds_per_step"])
            else:
                times[name].append(reference_loop(cfg, device, args.steps, args.warmup, args.compile, variant=variants[name])["seconds_per_step"])
    base = statistics.median(times["reference"])
    print("ablation: the minimal loop with one harness habit at a time (median of 2 alternating runs):")
    out = {}
    for name, ts in times.items():
        sec = statistics.median(ts)
        mfu = flops / sec / peak if peak else None
        out[name] = {"s_per_step": sec, "tokens_per_s": tokens / sec, "vs_reference": base / sec, "mfu": mfu}
        mfu_s = f"  MFU {100 * mfu:5.1f}%" if mfu else ""
        print(f"  {name:<28} {1e3 * sec:8.2f} ms/step {tokens / sec:10,.0f} tok/s  throughput vs reference {base / sec:.4f}{mfu_s}")
    for key, text in ABLATIONS.items():
        print(f"    {key}: {text}")
    return out


def kernel_profile(overrides: list[str], cfg, device: torch.device, args, work: Path) -> dict:
    """torch.profiler over 3 steps after warm-up, for each side: device (or CPU) op time per step, top ops."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile, schedule

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out = {}
    for side in ("harness", "reference"):
        prof = torch_profile(activities=activities, schedule=schedule(wait=args.warmup, warmup=1, active=3))
        handle = optimizer_hooks.register_optimizer_step_post_hook(lambda *a: prof.step())
        prof.start()
        try:
            if side == "harness":
                run_probed([*overrides, f"train.max_steps={args.warmup + 5}"], work / "kprofile", {}, quiet=True)
            else:
                reference_loop(cfg, device, 5, args.warmup, args.compile)
        finally:
            prof.stop()
            handle.remove()
        events = prof.key_averages()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        try:
            table = events.table(sort_by=key, row_limit=14, max_name_column_width=60)
        except Exception:  # older names
            table = events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=14)
        print(f"--- {side}: top ops over the profiled steps")
        print(table)
        out[side] = {"table": table}
    return out


def profile(overrides: list[str], args, work: Path) -> None:
    """cProfile one harness run; print the top Python-side costs."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        prof.enable()
        harness_run(overrides, args.steps, args.warmup, work / "profile", args.device == "cuda")
        prof.disable()
    print(f"cProfile of one harness run ({args.warmup + args.steps} steps, {time.perf_counter() - start:.1f} s wall, build included):")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    start_at = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    for line in lines[start_at:]:
        print("   " + line[:150])


if __name__ == "__main__":
    main()
