"""Per-rank training state under FSDP2: parameters + gradients + optimizer state, fsdp(N) against one process (issue 4).

Each configuration runs through nanodist's own launcher path with real gloo ranks (torch's elastic
launch, as `python launch.py parallel=fsdp mesh.dp_shard=N` does). A probe in every rank reads, at
the last optimizer step, the bytes this rank holds (DTensors count their local shard only):
parameters and gradients just before `optimizer.step()` (the trainer frees gradients right after it),
optimizer state just after. The largest rank is compared with one process.

    python benchmarks/memory.py                 # N = 2 and 4 on CPU
    python benchmarks/memory.py --sizes 2 4 8 model.n_layer=8

Target: max-rank bytes of fsdp(N) <= 1.05 / N x one process's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fmt_bytes, machine, read_run, run_probed, save_json  # noqa: E402

# Blocks and vocabulary both sizeable, so that no single tensor decides the ratio; seconds per run.
DEFAULT = [
    "model=nano",
    "model.n_embd=256",
    "model.n_head=4",
    "model.n_layer=4",
    "data=synthetic",
    "data.synthetic_vocab_size=8192",
    "train.batch_size=8",
    "train.max_steps=2",
    "train.log_interval=1",
    "train.eval_interval=0",
    "train.sample_tokens=0",
    "train.device=cpu",
]
KEYS = ("param_bytes", "grad_bytes", "optim_bytes")


def measure(overrides: list[str], work: Path) -> dict:
    records = run_probed(overrides, work, {"state": True}, quiet=True)
    totals = [sum(r[k] for k in KEYS) for r in records]
    worst = max(range(len(records)), key=lambda i: totals[i])
    summary, _ = read_run(work / "run")
    return {"ranks": records, "max_rank": worst, "max_total": totals[worst], "min_total": min(totals),
            **{k: records[worst][k] for k in KEYS}, "summary_rank0": {k: summary.get(k) for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4])
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (model size, dtype, ...)")
    args = ap.parse_args()
    base = [*DEFAULT, *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="nanodist-memory-"))

    print(f"config: {' '.join(base)}")
    one = measure([*base, "parallel=single"], work / "single")
    rows = [("single", 1, one, None)]
    results = {"benchmark": "memory", "machine": machine(), "overrides": base, "single": one, "fsdp": {}}
    verdicts = []
    for n in args.sizes:
        r = measure([*base, "parallel=fsdp", f"mesh.dp_shard={n}"], work / f"fsdp{n}")
        ratio = r["max_total"] / one["max_total"]
        target = 1.05 / n
        verdicts.append((n, ratio, target, ratio <= target))
        rows.append((f"fsdp({n})", n, r, ratio))
        results["fsdp"][str(n)] = {**r, "ratio": ratio, "target": target}

    print(f"{'layout':<9} {'ranks':>5} {'params':>11} {'grads':>11} {'optim':>11} {'total':>11} {'ratio':>7} {'x N':>6}")
    for name, n, r, ratio in rows:
        print(
            f"{name:<9} {n:>5} {fmt_bytes(r['param_bytes']):>11} {fmt_bytes(r['grad_bytes']):>11} "
            f"{fmt_bytes(r['optim_bytes']):>11} {fmt_bytes(r['max_total']):>11} "
            f"{'1' if ratio is None else f'{ratio:.4f}':>7} {'' if ratio is None else f'{ratio * n:.4f}':>6}"
        )
    print("(per rank, the largest rank; 'x N' = ratio times N, 1.0 is a perfect split)")
    print("cross-check, the trainer's own summary.json (rank 0):")
    for name, n, r, ratio in rows:
        s0 = r["summary_rank0"]
        probe0 = r["ranks"][0]
        same = all(s0.get(k) == probe0[k] for k in KEYS)
        print(
            f"  {name:<9} params {fmt_bytes(s0.get('param_bytes'))}, grads {fmt_bytes(s0.get('grad_bytes'))}, "
            f"optim {fmt_bytes(s0.get('optim_bytes'))} -> {'equal to' if same else 'DIFFERS from'} the probe's rank 0"
        )
    for n, ratio, target, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}: fsdp({n}) per-rank state {ratio:.4f} x one process (target <= 1.05/{n} = {target:.4f})")
    out = ROOT / "benchmarks" / "results" / "memory_cpu.json"
    save_json(out, results)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
