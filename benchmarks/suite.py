"""The strategy matrix at a fixed number of tokens per step (issue 9).

Each strategy runs as a user runs it, `python launch.py <config> parallel=... mesh...`, into one
sweep dir (outputs/benchmarks/suite_<time>/NN_<strategy>); the table is the sweep report's own
(`nanodist.tools.report`), so the suite and `python -m nanodist.tools.report <sweep dir>` print the same thing.
Every strategy trains the same model (untied embeddings, since pipeline stages cannot share a
tied weight) on the same global batch, so throughput, memory and final loss compare directly.

    python benchmarks/suite.py                      # CPU: the default matrix below (gloo, up to 4 ranks)
    python benchmarks/suite.py --all                # + every other pipeline layout and 3d (8 ranks)
    python benchmarks/suite.py --only single fsdp   # a subset
    python benchmarks/suite.py --device cuda --gpu-matrix model=gpt2 train.dtype=bfloat16   # one GPU: single vs fsdp(1)

Writes benchmarks/results/suite_<device>.md (the table) and suite_<device>.json (raw summaries).
PASS when every job completes; final losses are compared with the single-process run as a check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, save_json  # noqa: E402

# Small enough for 8 gloo ranks on 2 cores; 8 x 64 = 512 tokens per optimizer step everywhere.
BASE = [
    "model=nano",
    "model.n_embd=128",
    "model.n_head=4",
    "model.n_layer=4",
    "model.block_size=64",
    "model.tie_embeddings=false",
    "data=synthetic",
    "data.synthetic_vocab_size=8192",
    "train.batch_size=8",
    "train.max_steps=5",
    "train.log_interval=1",
    "train.eval_interval=0",
    "train.sample_tokens=0",
    "checkpoint.enabled=false",
]
MATRIX = {
    "single": ["parallel=single"],
    "ddp": ["parallel=ddp", "mesh.dp_replicate=2"],
    "fsdp": ["parallel=fsdp", "mesh.dp_shard=2"],
    "hsdp": ["parallel=hsdp", "mesh=2x2"],
    "tp": ["parallel=tp", "mesh.tp=2"],
    "tp_sp": ["parallel=tp_sp", "mesh.tp=2"],
    "fsdp_tp": ["parallel=fsdp_tp", "mesh=2x2"],
    "pp_1f1b": ["parallel=pp_1f1b", "mesh.pp=2"],
}
EXTRA = {
    "pp_gpipe": ["parallel=pp_gpipe", "mesh.pp=2"],
    "pp_interleaved": ["parallel=pp_interleaved", "mesh.pp=2"],
    "pp_zbv": ["parallel=pp_zbv", "mesh.pp=2"],
    "pp_fsdp": ["parallel=pp_fsdp", "mesh=2x2"],
    "pp_tp": ["parallel=pp_tp", "mesh=2x2"],
    "3d": ["parallel=3d", "mesh=2x2x2"],
}
GPU_MATRIX = {"single": ["parallel=single"], "fsdp(1)": ["parallel=fsdp", "mesh.dp_shard=1"]}


def available(name: str, overrides: list[str]) -> bool:
    """Strategies whose conf/parallel file exists (pipeline layouts land separately)."""
    strategy = next(o.split("=", 1)[1] for o in overrides if o.startswith("parallel="))
    return (ROOT / "conf" / "parallel" / f"{strategy}.yaml").exists()


def mean_after_first(records: list[dict], key: str):
    """Mean of a per-step metric over the logged steps after the first (which holds warm-up)."""
    values = [r[key] for r in records[1:] if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def run_job(index: int, name: str, overrides: list[str], sweep: Path, timeout: int) -> dict:
    job_dir = sweep / f"{index:02d}_{name.replace('(', '').replace(')', '')}"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NANODIST_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    env["PYTHONUNBUFFERED"] = "1"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, str(ROOT / "launch.py"), *overrides, f"hydra.run.dir={job_dir}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "console.txt").write_text(out)
    return {"name": name, "dir": str(job_dir), "exit": code, "seconds": round(time.perf_counter() - start, 1),
            "command": "python launch.py " + " ".join(overrides)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--all", action="store_true", help="add the other pipeline layouts and 3d")
    ap.add_argument("--only", nargs="+", default=None, help="strategy names to run")
    ap.add_argument("--gpu-matrix", action="store_true", help="the one-GPU matrix: single and fsdp(1)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per job")
    ap.add_argument("--out", default=None, help="results name (default suite_<device>)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job, after the base config")
    args = ap.parse_args()

    matrix = dict(GPU_MATRIX) if args.gpu_matrix else {**MATRIX, **(EXTRA if args.all else {})}
    if args.only:
        matrix = {k: v for k, v in {**MATRIX, **EXTRA, **GPU_MATRIX}.items() if k in args.only}
    skipped = [k for k, v in matrix.items() if not available(k, v)]
    matrix = {k: v for k, v in matrix.items() if k not in skipped}
    common = [*BASE, f"train.device={args.device}", *args.overrides]
    sweep = ROOT / "outputs" / "benchmarks" / time.strftime(f"suite_{args.device}_%Y-%m-%d_%H-%M-%S")
    sweep.mkdir(parents=True, exist_ok=True)
    print(f"sweep dir: {sweep.relative_to(ROOT)}")
    print(f"every job: {' '.join(common)}")
    if skipped:
        print(f"skipped (no conf/parallel file yet): {', '.join(skipped)}")

    jobs = []
    for i, (name, overrides) in enumerate(matrix.items()):
        job = run_job(i, name, [*common, *overrides], sweep, args.timeout)
        jobs.append(job)
        print(f"  {name:<15} exit {job['exit']}  {job['seconds']:6.1f} s  {' '.join(overrides)}")

    from nanodist.tools.report import load_sweep, table, write_report

    report_jobs = load_sweep(sweep)
    md = table(report_jobs)
    try:
        report = write_report(sweep, report_jobs)
        print(f"report with plots: {report.relative_to(ROOT)}")
    except Exception as e:  # plots are a bonus; the table is the result
        print(f"(plots not written: {e})")
    print()
    print(md)

    # Raw data, and a parity check against the single-process run.
    raw = []
    single_loss = None
    for job, rj in zip(jobs, report_jobs):
        summary = {k: v for k, v in rj.summary.items() if k != "sample"}
        entry = {**job, "strategy": rj.strategy, "mesh": rj.shape, "world_size": rj.world_size, "status": rj.status,
                 "summary": summary, "mean_tokens_per_s": summary.get("mean_tokens_per_s"),
                 "mean_flops_per_s_per_rank": mean_after_first(rj.records, "flops_per_s_per_rank"),
                 "mean_mfu": mean_after_first(rj.records, "mfu"),
                 "losses": [r["loss"] for r in rj.records]}
        raw.append(entry)
        if rj.strategy == "single":
            single_loss = summary.get("final_loss")
    ok = all(e["status"] == "completed" for e in raw)
    tokens = None
    try:
        from common import compose

        cfg = compose(common, "/tmp/nanodist-suite-cfg")
        tokens = cfg.train.batch_size * (cfg.train.seq_len or cfg.model.block_size)
    except Exception:
        pass
    print(f"\n{len(raw)} jobs, {sum(e['status'] == 'completed' for e in raw)} completed; {tokens} tokens per optimizer step in every job")
    if single_loss is not None:
        for e in raw:
            loss = e["summary"].get("final_loss")
            if loss is not None and e["strategy"] != "single":
                print(f"  final loss {e['name']:<15} {loss:.6f} vs single {single_loss:.6f} (rel diff {abs(loss - single_loss) / abs(single_loss):.1e})")
    print(f"{'PASS' if ok else 'FAIL'}: {'every job completed' if ok else 'some jobs did not complete: ' + ', '.join(e['name'] for e in raw if e['status'] != 'completed')}")

    name = args.out or f"suite_{args.device}"
    results = ROOT / "benchmarks" / "results"
    header = (f"# Strategy suite ({args.device})\n\n{machine()}\n\nEvery job: `{' '.join(common)}` "
              f"({tokens} tokens per step). Sweep dir: `{sweep.relative_to(ROOT)}`.\n\n")
    (results / f"{name}.md").write_text(header + md + "\n")
    save_json(results / f"{name}.json", {"benchmark": "suite", "machine": machine(), "common_overrides": common,
                                           "tokens_per_step": tokens, "jobs": raw, "verdict": "PASS" if ok else "FAIL"})
    print(f"wrote benchmarks/results/{name}.md and {name}.json")


if __name__ == "__main__":
    main()
