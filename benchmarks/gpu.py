"""One GPU: GPT-2 124M tokens/s and MFU, single against fsdp(1), and the harness overhead (issues 4 and 9).

The product's own runs (`python launch.py model=gpt2 data=synthetic ...`, bf16, seq 1024: `--part mfu`)
read from metrics.jsonl, then overhead.py on CUDA (`--part overhead`). Target: MFU >= 45% on one H100.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, STEP_ONLY, machine, run_job, write_results

from nanodist.tools.report import load_sweep, read_json, read_records, table

MFU_TARGET = 0.45


def jobs_of(batches: list[int], accum: bool) -> dict[str, list[str]]:
    """Compiled single runs at every batch size, one eager, fsdp(1) at the largest batch, optionally grad_accum=2."""
    big, c = batches[-1], "train.compile=true"
    jobs = {f"single_b{b}_compile": [f"train.batch_size={b}", c, "parallel=single"] for b in batches}
    jobs[f"single_b{batches[0]}_eager"] = [f"train.batch_size={batches[0]}", "parallel=single"]
    jobs[f"fsdp1_b{big}_compile"] = [f"train.batch_size={big}", c, "parallel=fsdp", "mesh.dp_shard=1"]
    return {**jobs, f"single_b{2 * big}_ga2_compile": [f"train.batch_size={2 * big}", "train.grad_accum=2", c, "parallel=single"]} if accum else jobs


def job_row(job: dict, skip: int) -> dict:
    """A job's medians over its steady logged steps (after `skip`: compilation, allocator warm-up), printed as one line."""
    d = Path(job["dir"])
    summary, records = read_json(d / "summary.json") or {}, read_records(d / "metrics.jsonl")[skip:]
    tok, mfu = [r["tokens_per_s"] for r in records], [r["mfu"] for r in records if r.get("mfu") is not None]
    row = {**job, "tokens_per_s_median": statistics.median_high(tok) if tok else None, "mfu_median": statistics.median_high(mfu) if mfu else None,
           "peak_memory_bytes": summary.get("peak_memory_bytes"), "final_loss": summary.get("final_loss")}
    mfu_s, tok_s = f"{100 * row['mfu_median']:.1f}%" if mfu else "-", f"{row['tokens_per_s_median']:,.0f}" if tok else "-"
    mem, tail = f"{row['peak_memory_bytes'] / 2**30:.1f} GiB" if row["peak_memory_bytes"] else "-", (d / "console.txt").read_text()[-1500:]
    print(f"  {job['name']:<24} exit {job['exit']} {job['seconds']:6.1f}s  tok/s {tok_s:>10}  MFU {mfu_s:>6}  peak {mem:>9}  "
          f"loss {row['final_loss']}" + (f"\n{tail}" if job["exit"] != 0 else ""), flush=True)
    return row


def part_mfu(args) -> dict:
    """The jobs of `jobs_of` as a sweep (outputs/benchmarks/gpu_<time>), the best MFU, fsdp(1) against single, the sweep's table."""
    sweep = ROOT / "outputs" / "benchmarks" / time.strftime("gpu_%Y-%m-%d_%H-%M-%S")
    base = ["model=gpt2", "data=synthetic", "train.dtype=bfloat16", "train.device=cuda", "train.seq_len=1024",
            f"train.max_steps={args.steps}", "train.log_interval=1", *STEP_ONLY, *args.model_overrides]
    rows = {name: job_row(run_job(i, name, [*base, *extra], sweep, args.timeout), args.skip)
            for i, (name, extra) in enumerate(jobs_of(args.batches, args.accum).items())}
    out, big = {"jobs": rows, "sweep_dir": str(sweep)}, args.batches[-1]
    good = [r for n, r in rows.items() if r["mfu_median"] and n.startswith("single") and "compile" in n]
    if good:
        best = max(good, key=lambda r: r["mfu_median"])
        out.update(best=best["name"], mfu_verdict="PASS" if best["mfu_median"] >= MFU_TARGET else "FAIL")
        print(f"{out['mfu_verdict']}: best MFU {100 * best['mfu_median']:.1f}% ({best['name']}, "
              f"{best['tokens_per_s_median']:,.0f} tok/s) (target >= {100 * MFU_TARGET:.0f}%)")
    single, fsdp1 = rows[f"single_b{big}_compile"], rows[f"fsdp1_b{big}_compile"]
    if single["tokens_per_s_median"] and fsdp1["tokens_per_s_median"]:
        out["fsdp1_over_single"] = fsdp1["tokens_per_s_median"] / single["tokens_per_s_median"]
        print(f"fsdp(1)/single tokens/s at batch {big}: {out['fsdp1_over_single']:.3f}; peak memory "
              f"{(fsdp1['peak_memory_bytes'] or 0) / 2**30:.1f} vs {(single['peak_memory_bytes'] or 0) / 2**30:.1f} GiB")
    out["table"] = table(load_sweep(sweep))
    print(out["table"])
    return out


def part_overhead(args) -> None:
    """overhead.py on CUDA, eager then compiled; each writes results/overhead_cuda[_compile].json."""
    for flags in ([], ["--compile"]):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--device", "cuda", "--repeats", str(args.repeats),
                        "--steps", "20", *flags, "model=gpt2", "data=synthetic", "train.seq_len=1024",
                        f"train.batch_size={args.batches[0]}", "train.dtype=bfloat16"], cwd=ROOT, timeout=args.timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["mfu", "overhead", "all"], default="all")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="micro-batch sizes (sequences of 1024) to try")
    ap.add_argument("--accum", action="store_true", help="also the largest batch x2 with grad_accum=2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="logged steps left out at the start (compile, warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="overhead pairs")
    ap.add_argument("--timeout", type=int, default=540)
    ap.add_argument("model_overrides", nargs="*")
    args = ap.parse_args()
    info = machine()
    print(info, flush=True)
    if args.part in ("mfu", "all"):
        tag = info["gpu"].split()[1].lower() if "gpu" in info else "cpu"
        write_results(RESULTS / f"gpu_{tag}.json", {"benchmark": "gpu", "mfu": part_mfu(args)})
    if args.part in ("overhead", "all"):
        part_overhead(args)


if __name__ == "__main__":
    main()
