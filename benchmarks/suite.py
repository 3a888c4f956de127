"""The strategy matrix at a fixed number of tokens per step (issue 9).

Each strategy runs as `python launch.py ... parallel=... mesh...` into one sweep dir, the same model
(untied embeddings, as pipeline stages need) on the same batch; the table is `nanodist.tools.report`'s.

    python benchmarks/suite.py [--all | --only single fsdp]   # --all: + the other pipeline layouts and 3d (8 ranks)
"""

import argparse
import time
from pathlib import Path

from common import RESULTS, ROOT, STEP_ONLY, compose, machine, run_job, tokens_per_step, write_results

from nanodist.tools.report import load_sweep, table, write_report

# Small enough for 8 gloo ranks on 2 cores; 8 x 64 = 512 tokens per optimizer step everywhere.
BASE = ["model=nano", "model.n_embd=128", "model.n_head=4", "model.n_layer=4", "model.block_size=64", "model.tie_embeddings=false",
        "data=synthetic", "data.synthetic_vocab_size=8192", "train.batch_size=8", "train.max_steps=5", "train.log_interval=1", *STEP_ONLY]
MATRIX = {"single": "parallel=single", "ddp": "parallel=ddp mesh.dp_replicate=2", "fsdp": "parallel=fsdp mesh.dp_shard=2",
          "hsdp": "parallel=hsdp mesh=2x2", "tp": "parallel=tp mesh.tp=2", "tp_sp": "parallel=tp_sp mesh.tp=2",
          "fsdp_tp": "parallel=fsdp_tp mesh=2x2", "pp_1f1b": "parallel=pp_1f1b mesh.pp=2"}
EXTRA = {**{f"pp_{s}": f"parallel=pp_{s} mesh.pp=2" for s in ("gpipe", "interleaved", "zbv")},
         "pp_fsdp": "parallel=pp_fsdp mesh=2x2", "pp_tp": "parallel=pp_tp mesh=2x2", "3d": "parallel=3d mesh=2x2x2"}


def report(sweep: Path, jobs: list[dict]) -> tuple[str, list[dict]]:
    """The sweep report's table (and plots, when they can be drawn), and each job with its summary and losses."""
    report_jobs = load_sweep(sweep)
    try:
        print(f"report with plots: {write_report(sweep, report_jobs).relative_to(ROOT)}")
    except Exception as e:  # plots are a bonus; the table is the result
        print(f"(plots not written: {e})")
    return table(report_jobs), [{**job, "strategy": rj.strategy, "mesh": rj.shape, "status": rj.status, "summary": rj.summary,
                                 "losses": [r["loss"] for r in rj.records]} for job, rj in zip(jobs, report_jobs, strict=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--all", action="store_true", help="add the other pipeline layouts and 3d")
    ap.add_argument("--only", nargs="+", default=None, help="strategy names to run")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per job")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job, after the base config")
    args = ap.parse_args()
    matrix = {k: v for k, v in {**MATRIX, **EXTRA}.items() if k in (args.only or [*MATRIX, *(EXTRA if args.all else [])])}
    common = [*BASE, f"train.device={args.device}", *args.overrides]
    sweep = ROOT / "outputs" / "benchmarks" / time.strftime(f"suite_{args.device}_%Y-%m-%d_%H-%M-%S")
    sweep.mkdir(parents=True, exist_ok=True)
    print(f"sweep dir: {sweep.relative_to(ROOT)}\nevery job: {' '.join(common)}")
    jobs = []
    for i, (name, overrides) in enumerate(matrix.items()):
        jobs.append(run_job(i, name, [*common, *overrides.split()], sweep, args.timeout))
        print(f"  {name:<15} exit {jobs[-1]['exit']}  {jobs[-1]['seconds']:6.1f} s  {overrides}")
    md, raw = report(sweep, jobs)
    print(f"\n{md}")
    tokens = tokens_per_step(compose(common, str(sweep / "cfg")))
    print(f"\n{len(raw)} jobs, {sum(e['status'] == 'completed' for e in raw)} completed; {tokens} tokens per optimizer step in every job")
    single = next((e["summary"].get("final_loss") for e in raw if e["strategy"] == "single"), None)
    for e in raw:
        loss = e["summary"].get("final_loss")
        if single is not None and loss is not None and e["strategy"] != "single":
            print(f"  final loss {e['name']:<15} {loss:.6f} vs single {single:.6f} (rel diff {abs(loss - single) / abs(single):.1e})")
    failed = [e["name"] for e in raw if e["status"] != "completed"]
    print("PASS: every job completed" if not failed else f"FAIL: some jobs did not complete: {', '.join(failed)}")
    name = f"suite_{args.device}"
    write_results(RESULTS / f"{name}.json", {"benchmark": "suite", "common_overrides": common, "tokens_per_step": tokens,
                                             "jobs": raw, "verdict": "FAIL" if failed else "PASS"})
    (RESULTS / f"{name}.md").write_text(f"# Strategy suite ({args.device})\n\n{machine()}\n\nEvery job: `{' '.join(common)}` "
                                        f"({tokens} tokens per step). Sweep dir: `{sweep.relative_to(ROOT)}`.\n\n{md}\n")
    print(f"wrote the table beside it: {name}.md")


if __name__ == "__main__":
    main()
