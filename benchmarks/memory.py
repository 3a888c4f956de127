"""Per-rank training state under FSDP2: parameters + gradients + optimizer state, fsdp(N) against one process (issue 4).

Gloo ranks through `nanodist.launch.local.launch`, each reporting the trainer's `state_bytes`. Target:
the largest rank of fsdp(N) holds <= 1.05 / N of one process's bytes.

    python benchmarks/memory.py [--sizes 2 4] [model.n_layer=8 ...]
"""

import argparse
import tempfile
from pathlib import Path

from common import RESULTS, fmt_bytes, run, write_results

# Blocks and vocabulary both sizeable, so that no single tensor decides the ratio; seconds per run.
DEFAULT = ["model=nano", "model.n_embd=256", "model.n_head=4", "model.n_layer=4", "data=synthetic",
           "data.synthetic_vocab_size=8192", "train.batch_size=8", "train.log_interval=1", "train.device=cpu"]
KEYS = ("param_bytes", "grad_bytes", "optim_bytes")


def measure(overrides: list[str], work: Path) -> dict:
    """Two steps of one layout; the state bytes of its largest rank."""
    _, ranks = run(overrides, work, steps=1, warmup=1)
    totals = [sum(r[k] for k in KEYS) for r in ranks]
    worst = max(range(len(ranks)), key=totals.__getitem__)
    return {"ranks": ranks, "max_rank": worst, "max_total": totals[worst], **{k: ranks[worst][k] for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4])
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (model size, dtype, ...)")
    args = ap.parse_args()
    base, work = [*DEFAULT, *args.overrides], Path(tempfile.mkdtemp(prefix="nanodist-memory-"))
    print(f"config: {' '.join(base)}")
    layouts = {"single": measure([*base, "parallel=single"], work / "single")}
    layouts.update({f"fsdp({n})": measure([*base, "parallel=fsdp", f"mesh.dp_shard={n}"], work / f"fsdp{n}") for n in args.sizes})
    print(f"{'layout':<9} {'ranks':>5} {'params':>11} {'grads':>11} {'optim':>11} {'total':>11} {'ratio':>7} {'x N':>6}")
    for name, r in layouts.items():
        n, r["ratio"] = len(r["ranks"]), r["max_total"] / layouts["single"]["max_total"]
        ratios = (f"{r['ratio']:.4f}", f"{r['ratio'] * n:.4f}") if n > 1 else ("1", "")
        print(f"{name:<9} {n:>5} " + " ".join(f"{fmt_bytes(r[k]):>11}" for k in (*KEYS, "max_total")) + f" {ratios[0]:>7} {ratios[1]:>6}")
    print("(per rank, the largest rank; 'x N' = ratio times N, 1.0 is a perfect split)")
    for n in args.sizes:
        ratio = layouts[f"fsdp({n})"]["ratio"]
        print(f"{'PASS' if ratio <= 1.05 / n else 'FAIL'}: fsdp({n}) per-rank state {ratio:.4f} x one process "
              f"(target <= 1.05/{n} = {1.05 / n:.4f})")
    write_results(RESULTS / "memory_cpu.json", {"benchmark": "memory", "overrides": base, "layouts": layouts})


if __name__ == "__main__":
    main()
