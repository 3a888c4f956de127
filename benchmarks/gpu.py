"""One GPU: GPT-2 124M tokens/s and MFU, single against fsdp(1), and the harness overhead (issues 4 and 9).

Figures come from the product's own runs (`python launch.py model=gpt2 data=synthetic ...`, bf16,
seq 1024: their summary.json and metrics.jsonl) and from benchmarks/overhead.py. Target (issue 9):
MFU >= 45% for GPT-2 124M, bf16, compile, one H100. Writes results/gpu_<device>.json (merged).

    python benchmarks/gpu.py --part mfu        # batch-size sweep, compile on/off, single vs fsdp(1) (nccl)
    python benchmarks/gpu.py --part overhead   # overhead.py on CUDA, eager and compiled
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, STEP_ONLY, machine, run_job, write_results  # noqa: E402

MFU_TARGET = 0.45


def jobs_of(args) -> dict[str, list[str]]:
    """Compiled single runs at every batch size, one eager, fsdp(1) at the largest batch, optionally grad_accum=2."""
    big, small, c = args.batches[-1], args.batches[0], "train.compile=true"
    jobs = {f"single_b{b}_compile": [f"train.batch_size={b}", c, "parallel=single"] for b in args.batches}
    jobs[f"single_b{small}_eager"] = [f"train.batch_size={small}", "parallel=single"]
    jobs[f"fsdp1_b{big}_compile"] = [f"train.batch_size={big}", c, "parallel=fsdp", "mesh.dp_shard=1"]
    if args.accum:
        jobs[f"single_b{2 * big}_ga2_compile"] = [f"train.batch_size={2 * big}", "train.grad_accum=2", c, "parallel=single"]
    return jobs


def job_row(job: dict, skip: int) -> dict:
    """A job's medians over its steady logged steps (after `skip`: compilation, allocator warm-up); printed."""
    d = Path(job["dir"])
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] if (d / "metrics.jsonl").exists() else []
    tok, mfu = [r["tokens_per_s"] for r in records[skip:]], [r["mfu"] for r in records[skip:] if r.get("mfu") is not None]
    row = {**job, "status": summary.get("status"), "tokens_per_s_median": statistics.median_high(tok) if tok else None,
           "mfu_median": statistics.median_high(mfu) if mfu else None, "peak_memory_bytes": summary.get("peak_memory_bytes"),
           "final_loss": summary.get("final_loss"), "console_tail": (d / "console.txt").read_text()[-1500:] if job["exit"] else ""}
    mfu_s = f"{100 * row['mfu_median']:.1f}%" if row["mfu_median"] else "-"
    tok_s = f"{row['tokens_per_s_median']:,.0f}" if row["tokens_per_s_median"] else "-"
    mem = f"{row['peak_memory_bytes'] / 2**30:.1f} GiB" if row["peak_memory_bytes"] else "-"
    print(f"  {job['name']:<24} exit {job['exit']} {job['seconds']:6.1f}s  tok/s {tok_s:>10}  MFU {mfu_s:>6}  peak {mem:>9}  "
          f"loss {row['final_loss']}\n{row['console_tail']}".rstrip(), flush=True)
    return row


def part_mfu(args, sweep: Path) -> dict:
    from nanodist.tools.report import load_sweep, table

    base = ["model=gpt2", "data=synthetic", "train.dtype=bfloat16", f"train.device={args.device}", "train.seq_len=1024",
            f"train.max_steps={args.steps}", "train.log_interval=1", *STEP_ONLY, "logger=none", *args.model_overrides]
    rows = {name: job_row(run_job(i, name, [*base, *extra], sweep, args.timeout), args.skip)
            for i, (name, extra) in enumerate(jobs_of(args).items())}
    out = {"jobs": list(rows.values()), "sweep_dir": str(sweep)}
    good = [r for n, r in rows.items() if r["mfu_median"] and n.startswith("single") and "compile" in n]
    if good:
        best = max(good, key=lambda r: r["mfu_median"])
        out.update(best=best["name"], best_mfu=best["mfu_median"], mfu_verdict="PASS" if best["mfu_median"] >= MFU_TARGET else "FAIL")
        print(f"{out['mfu_verdict']}: best MFU {100 * best['mfu_median']:.1f}% ({best['name']}, "
              f"{best['tokens_per_s_median']:,.0f} tok/s) (target >= {100 * MFU_TARGET:.0f}%)")
    big = args.batches[-1]
    single, fsdp1 = rows[f"single_b{big}_compile"], rows[f"fsdp1_b{big}_compile"]
    if single["tokens_per_s_median"] and fsdp1["tokens_per_s_median"]:
        out["fsdp1_over_single"] = fsdp1["tokens_per_s_median"] / single["tokens_per_s_median"]
        print(f"fsdp(1)/single tokens/s at batch {big}: {out['fsdp1_over_single']:.3f}; peak memory "
              f"{(fsdp1['peak_memory_bytes'] or 0) / 2**30:.1f} vs {(single['peak_memory_bytes'] or 0) / 2**30:.1f} GiB")
    out["table"] = table(load_sweep(sweep))
    print(out["table"])
    return out


def part_overhead(args) -> dict:
    """overhead.py on CUDA, eager then compiled; each result as that script wrote it."""
    out = {}
    for name, flags in (("overhead_cuda", []), ("overhead_cuda_compile", ["--compile"])):
        path, start = RESULTS / f"{name}.json", time.perf_counter()
        cmd = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--device", "cuda", "--repeats", str(args.repeats),
               "--steps", "20", "--json", str(path), *flags, "model=gpt2", "data=synthetic",
               f"train.batch_size={args.overhead_batch}", "train.seq_len=1024", "train.dtype=bfloat16"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        print(proc.stdout[-12000:] + proc.stderr[-2000:], flush=True)
        out[name] = {**(json.loads(path.read_text()) if path.exists() else {"error": proc.stderr[-2000:]}),
                     "seconds": round(time.perf_counter() - start, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["mfu", "overhead", "all"], default="all")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="micro-batch sizes (sequences of 1024) to try")
    ap.add_argument("--accum", action="store_true", help="also the largest batch x2 with grad_accum=2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="logged steps left out at the start (compile, warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="overhead pairs")
    ap.add_argument("--overhead-batch", type=int, default=16)
    ap.add_argument("--timeout", type=int, default=540)
    ap.add_argument("model_overrides", nargs="*")
    args = ap.parse_args()
    import torch

    path = RESULTS / f"gpu_{torch.cuda.get_device_name(0).split()[1].lower() if torch.cuda.is_available() else args.device}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    print(machine(), flush=True)
    sweep = ROOT / "outputs" / "benchmarks" / time.strftime("gpu_%Y-%m-%d_%H-%M-%S")
    sweep.mkdir(parents=True, exist_ok=True)
    if args.part in ("mfu", "all"):
        results["mfu"] = part_mfu(args, sweep)
    if args.part in ("overhead", "all"):
        results["overhead"] = part_overhead(args)
    write_results(path, results)


if __name__ == "__main__":
    main()
