"""The speed and memory levers through the product (issue 9): torch.compile and activation checkpointing, on CPU.

Runs alternate train.compile=false and true (E C C E ...), timed by their median step's CPU time,
compilation apart (cold: an empty inductor cache); then activation checkpointing none, full, selective.

    python benchmarks/levers.py [--only compile|ac] [data=shakespeare]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

# An empty inductor cache, so that the first compiled run pays the whole compilation, as a new run would.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nanodist-levers-inductor-"))

from common import RESULTS, alternate, compose, fmt_bytes, run, tokens_per_step, write_results


def timed_run(overrides: list[str], args, work: Path) -> dict:
    """One run: rank 0's step figures, its activation peak and final loss, and the wall time outside the timed window."""
    start = time.perf_counter()
    summary, [seen] = run(overrides, work, args.steps, args.warmup)
    return {**seen, "outside_window_s": time.perf_counter() - start - seen["wall_mean"] * args.steps, "final_loss": summary.get("final_loss")}


def compare_compile(overrides: list[str], args, work: Path, tokens: int) -> dict:
    """Eager and compiled runs in turn; the speedup by CPU and by wall time per step, and what compiling costs once."""
    runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
    order = [kind for r in range(args.repeats) for kind in alternate(r, "eager", "compiled")]
    for i, kind in enumerate(order):
        seen = timed_run([*overrides, f"train.compile={kind == 'compiled'}"], args, work / f"compile{i}")
        runs[kind].append(seen)
        print(f"  run {i}: {kind:9s} CPU {1e3 * seen['cpu_median']:8.2f} ms/step | wall {1e3 * seen['wall_median']:8.2f} ms/step "
              f"{tokens / seen['wall_median']:9,.0f} tok/s | warm-up + compile {seen['outside_window_s']:5.1f} s | "
              f"final loss {seen['final_loss']:.4f}")
    cpu = {k: statistics.median(s["cpu_median"] for s in v) for k, v in runs.items()}
    wall = {k: statistics.median(s["wall_median"] for s in v) for k, v in runs.items()}
    cold = runs["compiled"][0]["outside_window_s"] - statistics.median(s["outside_window_s"] for s in runs["eager"])
    speedup, wall_speedup = cpu["eager"] / cpu["compiled"], wall["eager"] / wall["compiled"]
    print(f"compile speedup: {speedup:.3f}x by CPU time per step ({1e3 * cpu['eager']:.2f} -> {1e3 * cpu['compiled']:.2f} ms), "
          f"{wall_speedup:.3f}x by wall time; compiling costs {cold:.1f} s once (cold cache)")
    return {"runs": runs, "order": order, "cpu_s_per_step": cpu, "wall_s_per_step": wall,
            "speedup_cpu": speedup, "speedup_wall": wall_speedup, "cold_compile_s": cold}


def compare_ac(overrides: list[str], args, work: Path) -> dict:
    """One run per activation checkpointing mode: activation peak, CPU time per step, final loss against none's."""
    results = {}
    for mode in ("none", "full", "selective"):
        results[mode] = seen = timed_run([*overrides, f"train.activation_checkpointing={mode}"], args, work / f"ac_{mode}")
        print(f"  {mode:9s} activations/step {fmt_bytes(seen['activation_bytes']):>10s} | CPU {1e3 * seen['cpu_median']:8.2f} ms/step | "
              f"final loss {seen['final_loss']:.4f}")
    base = results["none"]
    for mode, r in list(results.items())[1:]:
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
    ap.add_argument("--json", default=None, help="where to write the figures (default benchmarks/results/levers_cpu.json)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data=shakespeare")
    args = ap.parse_args()
    work, overrides = Path(tempfile.mkdtemp(prefix="nanodist-levers-")), ["train.device=cpu", "train.log_interval=5", *args.overrides]
    cfg = compose(overrides, str(work / "cfg"))
    tokens = tokens_per_step(cfg)
    print(f"model={cfg.model.name} data={cfg.data.name} batch={cfg.train.batch_size}x{tokens // cfg.train.batch_size} "
          f"dtype={cfg.train.dtype} device=cpu | {args.steps} timed steps per run (+{args.warmup} warm-up)")
    out = {"benchmark": "levers", "overrides": overrides, "tokens_per_step": tokens, "steps": args.steps, "warmup": args.warmup}
    if args.only in (None, "compile"):
        print("torch.compile per block and of the loss (train.compile):")
        out["compile"] = compare_compile(overrides, args, work, tokens)
    if args.only in (None, "ac"):
        print("activation checkpointing (train.activation_checkpointing):")
        out["activation_checkpointing"] = compare_ac(overrides, args, work)
    write_results(Path(args.json) if args.json else RESULTS / "levers_cpu.json", out)


if __name__ == "__main__":
    main()
