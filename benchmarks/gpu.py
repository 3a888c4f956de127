"""One GPU: GPT-2 124M tokens/s and MFU, single against fsdp(1), and the harness overhead (issues 4 and 9).

Every figure comes from the product's own runs (`python launch.py model=gpt2 data=synthetic ...`,
bf16 autocast, seq 1024) read back from summary.json / metrics.jsonl, or from benchmarks/overhead.py.

    python benchmarks/gpu.py --part mfu        # batch-size sweep, compile on/off, single vs fsdp(1) (nccl)
    python benchmarks/gpu.py --part overhead   # overhead.py on CUDA, eager and compiled
    python benchmarks/gpu.py --out DIR         # also copy the results there

Target (issue 9): MFU >= 45% for GPT-2 124M, bf16, compile, one H100; reported as measured.
Writes benchmarks/results/gpu_<device>.json (merged with what an earlier --part wrote).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, STEP_ONLY, machine, mean_after_first, run_job, write_results  # noqa: E402

MFU_TARGET = 0.45


def jobs_of(args) -> list[tuple[str, list[str]]]:
    """Compiled single runs at every batch size, one eager, fsdp(1) at the largest batch, optionally grad_accum=2."""
    big, compiled = args.batches[-1], "train.compile=true"
    jobs = [(f"single_b{b}_compile", [f"train.batch_size={b}", compiled, "parallel=single"]) for b in args.batches]
    jobs.append((f"single_b{args.batches[0]}_eager", [f"train.batch_size={args.batches[0]}", "parallel=single"]))
    jobs.append((f"fsdp1_b{big}_compile", [f"train.batch_size={big}", compiled, "parallel=fsdp", "mesh.dp_shard=1"]))
    if args.accum:
        jobs.append((f"single_b{2 * big}_ga2_compile", [f"train.batch_size={2 * big}", "train.grad_accum=2", compiled, "parallel=single"]))
    return jobs


def job_row(job: dict, name: str, extra: list[str], skip: int) -> dict:
    """One job's figures: medians over its steady logged steps (after `skip`: compile, allocator warm-up)."""
    job_dir = Path(job["dir"])
    summary = json.loads((job_dir / "summary.json").read_text()) if (job_dir / "summary.json").exists() else {}
    records = [json.loads(x) for x in (job_dir / "metrics.jsonl").read_text().splitlines()] if (job_dir / "metrics.jsonl").exists() else []
    tok, mfu = [r["tokens_per_s"] for r in records[skip:]], [r["mfu"] for r in records[skip:] if r.get("mfu") is not None]
    row = {"name": name, "overrides": extra, "exit": job["exit"], "seconds": job["seconds"], "status": summary.get("status"),
           "tokens_per_s_mean": statistics.fmean(tok) if tok else None, "tokens_per_s_median": statistics.median_high(tok) if tok else None,
           "mfu_mean": statistics.fmean(mfu) if mfu else None, "mfu_median": statistics.median_high(mfu) if mfu else None,
           "summary_mean_tokens_per_s": summary.get("mean_tokens_per_s"), "mean_mfu_after_first": mean_after_first(records, "mfu"),
           "peak_memory_bytes": summary.get("peak_memory_bytes"), "final_loss": summary.get("final_loss"),
           "first_step_s": records[0]["elapsed"] if records else None}
    if job["exit"] != 0:
        row["console_tail"] = (job_dir / "console.txt").read_text()[-1500:]
    mfu_s = f"{100 * row['mfu_median']:.1f}%" if row["mfu_median"] else "-"
    tok_s = f"{row['tokens_per_s_median']:,.0f}" if row["tokens_per_s_median"] else "-"
    mem = f"{row['peak_memory_bytes'] / 2**30:.1f} GiB" if row["peak_memory_bytes"] else "-"
    print(f"  {name:<24} exit {job['exit']} {job['seconds']:6.1f}s  tok/s {tok_s:>10}  MFU {mfu_s:>6}  peak {mem:>9}  "
          f"loss {row['final_loss']}\n{row.get('console_tail', '')}".rstrip(), flush=True)
    return row


def part_mfu(args, sweep: Path) -> dict:
    base = ["model=gpt2", "data=synthetic", "train.dtype=bfloat16", f"train.device={args.device}", "train.seq_len=1024",
            f"train.max_steps={args.steps}", "train.log_interval=1", *STEP_ONLY, "logger=none", *args.model_overrides]
    rows = [job_row(run_job(i, name, [*base, *extra], sweep, args.timeout), name, extra, args.skip)
            for i, (name, extra) in enumerate(jobs_of(args))]
    by_name, out = {r["name"]: r for r in rows}, {"jobs": rows, "sweep_dir": str(sweep)}
    good = [r for r in rows if r["mfu_median"] and r["name"].startswith("single") and "compile" in r["name"]]
    if good:
        best = max(good, key=lambda r: r["mfu_median"])
        out.update(best=best["name"], best_mfu=best["mfu_median"], mfu_verdict="PASS" if best["mfu_median"] >= MFU_TARGET else "FAIL")
        print(f"{out['mfu_verdict']}: best MFU {100 * best['mfu_median']:.1f}% ({best['name']}, "
              f"{best['tokens_per_s_median']:,.0f} tok/s) (target >= {100 * MFU_TARGET:.0f}%)")
    single, fsdp1 = by_name.get(f"single_b{args.batches[-1]}_compile"), by_name.get(f"fsdp1_b{args.batches[-1]}_compile")
    if single and fsdp1 and single["tokens_per_s_median"] and fsdp1["tokens_per_s_median"]:
        out["fsdp1_over_single"] = fsdp1["tokens_per_s_median"] / single["tokens_per_s_median"]
        print(f"fsdp(1)/single tokens/s at batch {args.batches[-1]}: {out['fsdp1_over_single']:.3f}; peak memory "
              f"{(fsdp1['peak_memory_bytes'] or 0) / 2**30:.1f} vs {(single['peak_memory_bytes'] or 0) / 2**30:.1f} GiB")
    from nanodist.tools.report import load_sweep, table

    out["table"] = table(load_sweep(sweep))
    print(out["table"])
    return out


def part_overhead(args) -> dict:
    """overhead.py on CUDA, eager then compiled, with its kernel profile; each result as that script wrote it."""
    out = {}
    for name, flags in (("overhead_cuda", []), ("overhead_cuda_compile", ["--compile"])):
        target, start = RESULTS / f"{name}.json", time.perf_counter()
        cmd = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--device", "cuda", "--repeats", str(args.repeats),
               "--steps", "20", "--json", str(target), "--kernel-profile", *flags, "model=gpt2", "data=synthetic",
               f"train.batch_size={args.overhead_batch}", "train.seq_len=1024", "train.dtype=bfloat16"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        print(proc.stdout[-12000:] + proc.stderr[-2000:], flush=True)
        out[name] = json.loads(target.read_text()) if target.exists() else {"error": proc.stderr[-2000:]}
        out[name]["seconds"] = round(time.perf_counter() - start, 1)
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
    ap.add_argument("--out", default=None, help="copy the results JSON (and logs) here too")
    ap.add_argument("model_overrides", nargs="*")
    args = ap.parse_args()
    import torch

    tag = torch.cuda.get_device_name(0).split()[1].lower() if torch.cuda.is_available() else args.device
    path = RESULTS / f"gpu_{tag}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    print(machine(), flush=True)
    sweep = ROOT / "outputs" / "benchmarks" / time.strftime("gpu_%Y-%m-%d_%H-%M-%S")
    sweep.mkdir(parents=True, exist_ok=True)
    if args.part in ("mfu", "all"):
        results["mfu"] = part_mfu(args, sweep)
    if args.part in ("overhead", "all"):
        results["overhead"] = part_overhead(args)
    write_results(path, results)
    for src in (path, RESULTS / "overhead_cuda.json", RESULTS / "overhead_cuda_compile.json") if args.out else ():
        if src.exists():
            Path(args.out).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, Path(args.out) / src.name)


if __name__ == "__main__":
    main()
