"""The speed and memory levers, measured through the product (issue 9): torch.compile and activation checkpointing.

- compile: whole runs alternate train.compile=false and true (E C C E ...). Each run's figure is
  its median step's process CPU time (`common.StepClock`): with one intra-op thread it is the work
  of a step, which other tenants of a shared machine do not inflate; wall figures are printed
  beside it. Compilation happens in the warm-up steps, before the timed window; its cost is
  printed separately (the run's wall time outside the window): the first compiled run compiles
  cold (the script starts with an empty inductor cache), later ones reuse the cache.
- activation checkpointing: one run each of train.activation_checkpointing=none, full and
  selective (every `train.ac_every`-th block); activation bytes = distinct storages autograd saves
  for backward in one step (`common.ActivationProbe`), beside the trainer's own figure and the step time.

    python benchmarks/levers.py                       # CPU, the default model (tiny, shakespeare_char)
    python benchmarks/levers.py data=shakespeare      # GPT-2's BPE vocabulary: the loss is a bigger share
    python benchmarks/levers.py --only compile --repeats 3

Prints the figures and ratios; writes benchmarks/results/levers_<device>.json (or --json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# An empty inductor cache, so that the first compiled run pays the whole compilation, as a new run would.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nanodist-levers-inductor-"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, compose, fmt_bytes, machine, read_run, run_probed, save_json  # noqa: E402


def timed_run(overrides: list[str], steps: int, warmup: int, work: Path, activations: bool = False) -> dict:
    """One harness run: its probe figures, the trainer's summary, and the wall time spent outside the timed window."""
    total = warmup + steps
    probe = {"first": warmup - 1, "last": total - 1, "sync_cuda": False}
    if activations:
        probe["activations"] = [warmup]
    start = time.perf_counter()
    [seen] = run_probed([*overrides, f"train.max_steps={total}"], work, probe, quiet=True)
    wall = time.perf_counter() - start
    summary, _ = read_run(work / "run")
    seen["outside_window_s"] = wall - seen["wall_mean"] * steps
    seen["final_loss"] = summary.get("final_loss")
    seen["trainer_activation_bytes"] = summary.get("activation_bytes")
    return seen


def compare_compile(overrides: list[str], args, work: Path, tokens: int) -> dict:
    runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
    order = []
    for r in range(args.repeats):
        order += ["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]
    for i, kind in enumerate(order):
        seen = timed_run([*overrides, f"train.compile={kind == 'compiled'}"], args.steps, args.warmup, work / f"compile{i}")
        runs[kind].append(seen)
        print(f"  run {i}: {kind:9s} CPU {1e3 * seen['cpu_median']:8.2f} ms/step | wall {1e3 * seen['wall_median']:8.2f} ms/step "
              f"{tokens / seen['wall_median']:9,.0f} tok/s | warm-up + compile {seen['outside_window_s']:5.1f} s | "
              f"final loss {seen['final_loss']:.4f}")
    cpu = {k: statistics.median(s["cpu_median"] for s in v) for k, v in runs.items()}
    wall = {k: statistics.median(s["wall_median"] for s in v) for k, v in runs.items()}
    eager_warmup = statistics.median(s["outside_window_s"] for s in runs["eager"])
    cold = runs["compiled"][0]["outside_window_s"] - eager_warmup
    speedup, wall_speedup = cpu["eager"] / cpu["compiled"], wall["eager"] / wall["compiled"]
    print(f"compile speedup: {speedup:.3f}x by CPU time per step ({1e3 * cpu['eager']:.2f} -> {1e3 * cpu['compiled']:.2f} ms), "
          f"{wall_speedup:.3f}x by wall time; compiling costs {cold:.1f} s once (cold cache)")
    return {"runs": runs, "order": order, "cpu_s_per_step": cpu, "wall_s_per_step": wall,
            "speedup_cpu": speedup, "speedup_wall": wall_speedup, "cold_compile_s": cold}


def compare_ac(overrides: list[str], args, work: Path, tokens: int) -> dict:
    results = {}
    for mode in ("none", "full", "selective"):
        seen = timed_run([*overrides, f"train.activation_checkpointing={mode}"], args.steps, args.warmup, work / f"ac_{mode}",
                         activations=True)
        results[mode] = seen
        print(f"  {mode:9s} activations/step {fmt_bytes(seen['activation_bytes']):>10s} (trainer: "
              f"{fmt_bytes(seen['trainer_activation_bytes'])}) | CPU {1e3 * seen['cpu_median']:8.2f} ms/step | "
              f"final loss {seen['final_loss']:.4f}")
    base = results["none"]
    for mode in ("full", "selective"):
        r = results[mode]
        print(f"{mode} / none: activations {r['activation_bytes'] / base['activation_bytes']:.3f}x, "
              f"CPU time per step {r['cpu_median'] / base['cpu_median']:.3f}x, same final loss: {r['final_loss'] == base['final_loss']}")
    lower = all(results[m]["activation_bytes"] < base["activation_bytes"] for m in ("full", "selective"))
    print(f"{'PASS' if lower else 'FAIL'}: activation checkpointing lowers the measured activation peak")
    return {"runs": results, "lower": lower}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["compile", "ac"], default=None)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run (compilation happens here)")
    ap.add_argument("--repeats", type=int, default=2, help="eager/compiled pairs of runs")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", default=None, help="where to write the figures (default benchmarks/results/levers_<device>.json)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data=shakespeare")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanodist-levers-"))
    overrides = [f"train.device={args.device}", "train.eval_interval=0", "train.sample_tokens=0", "train.log_interval=5",
                 *args.overrides]
    cfg = compose(overrides, str(work / "cfg"))
    seq_len = cfg.train.seq_len or cfg.model.block_size
    tokens = cfg.train.batch_size * seq_len
    print(f"model={cfg.model.name} data={cfg.data.name} batch={cfg.train.batch_size}x{seq_len} dtype={cfg.train.dtype} "
          f"device={args.device} | {args.steps} timed steps per run (+{args.warmup} warm-up)")
    out = {"benchmark": "levers", "machine": machine(), "overrides": overrides, "tokens_per_step": tokens,
           "steps": args.steps, "warmup": args.warmup}
    if args.only in (None, "compile"):
        print("torch.compile per block and of the loss (train.compile):")
        out["compile"] = compare_compile(overrides, args, work, tokens)
    if args.only in (None, "ac"):
        print("activation checkpointing (train.activation_checkpointing):")
        out["activation_checkpointing"] = compare_ac(overrides, args, work, tokens)
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"levers_{args.device}.json"
    save_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
