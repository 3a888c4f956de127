"""Tensor parallelism with and without sequence parallelism: tokens/s and per-rank activation memory (issue 5).

tp(2) and tp_sp(2) (SP + loss parallel) through `nanodist.launch.local.launch`, alternating; `--single` adds one process.

    python benchmarks/tp_sp.py [--repeats 3] [model.n_layer=8 train.seq_len=256 model.block_size=256 ...]
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from common import RESULTS, alternate, compose, fmt_bytes, run, tokens_per_step, write_results

DEFAULT = ["model=nano", "model.n_embd=128", "model.n_head=4", "model.n_layer=4", "model.block_size=128", "data=synthetic",
           "data.synthetic_vocab_size=8192", "train.batch_size=8", "train.seq_len=128", "train.log_interval=5", "train.device=cpu"]
LAYOUTS = {"single": ["parallel=single"], "tp(2)": ["parallel=tp", "mesh.tp=2"], "tp_sp(2)": ["parallel=tp_sp", "mesh.tp=2"]}
ROWS = [
    ("ranks", lambda v: str(v["world_size"])),
    ("step (median ms)", lambda v: f"{1e3 * v['s_per_step']:.1f}"),
    ("CPU per step (ms, max rank)", lambda v: f"{1e3 * v['cpu_s_per_step']:.1f}"),
    ("tokens/s", lambda v: f"{v['tokens_per_s']:,.0f}"),
    ("tokens/s per rank", lambda v: f"{v['tokens_per_s'] / v['world_size']:,.0f}"),
    ("activations/rank", lambda v: fmt_bytes(v["activation_bytes"])),
    ("params/rank", lambda v: fmt_bytes(v["param_bytes"])),
    ("final loss", lambda v: f"{v['final_loss']:.4f}" if v["final_loss"] is not None else "-"),
]


def one_run(name: str, base: list[str], args, work: Path) -> dict:
    """One run of a layout: rank 0's median step, and the largest rank's CPU time, activations and parameters."""
    summary, ranks = run([*base, *LAYOUTS[name]], work, args.steps, args.warmup)
    largest = {k: max(r[k] for r in ranks) for k in ("cpu_median", "activation_bytes", "param_bytes")}
    return {**largest, "wall_median": ranks[0]["wall_median"], "final_loss": summary.get("final_loss"), "world_size": len(ranks)}


def column(rs: list[dict], tokens: int) -> dict:
    """A layout's column: the medians of its runs' step times (memory and loss are the same in every run)."""
    step = statistics.median(r["wall_median"] for r in rs)
    return {**rs[0], "s_per_step": step, "tokens_per_s": tokens / step, "cpu_s_per_step": statistics.median(r["cpu_median"] for r in rs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--single", action="store_true", help="add a one-process column as a yardstick")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tp layout (alternating)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    base, work = [*DEFAULT, *args.overrides], Path(tempfile.mkdtemp(prefix="nanodist-tpsp-"))
    tokens = tokens_per_step(compose(base, str(work / "cfg")))
    print(f"config: {' '.join(base)} ({tokens} tokens per step)")
    order = (["single"] if args.single else []) + [n for r in range(args.repeats) for n in alternate(r, "tp(2)", "tp_sp(2)")]
    runs: dict[str, list[dict]] = {n: [] for n in LAYOUTS if n in order}
    for i, name in enumerate(order):
        got = one_run(name, base, args, Path(tempfile.mkdtemp(dir=work)))
        runs[name].append(got)
        print(f"  run {i}: {name:<9} {1e3 * got['wall_median']:8.1f} ms/step  {tokens / got['wall_median']:8,.0f} tok/s  "
              f"activations/rank {fmt_bytes(got['activation_bytes'])}")
    table = {name: column(rs, tokens) for name, rs in runs.items()}
    print(f"\n{'':<27}" + "".join(f"{n:>14}" for n in table))
    for label, f in ROWS:
        print(f"{label:<27}" + "".join(f"{f(v):>14}" for v in table.values()))
    tp, sp = table["tp(2)"], table["tp_sp(2)"]
    act, speed = sp["activation_bytes"] / tp["activation_bytes"], sp["tokens_per_s"] / tp["tokens_per_s"]
    cpu = tp["cpu_s_per_step"] / sp["cpu_s_per_step"]
    print(f"\ntp_sp / tp: activations per rank {act:.3f}x, tokens/s {speed:.3f}x "
          f"(by CPU time per step, which other tenants of a shared machine do not inflate: {cpu:.3f}x)")
    print(f"{'PASS' if act < 1 else 'FAIL'}: tp_sp(2) keeps {act:.3f}x tp(2)'s activation bytes per rank (expected < 1)")
    write_results(RESULTS / "tp_sp_cpu.json", {"benchmark": "tp_sp", "overrides": base, "tokens_per_step": tokens, "table": table,
                                               "activation_ratio": act, "tokens_per_s_ratio": speed, "cpu_time_speed_ratio": cpu, "runs": runs})


if __name__ == "__main__":
    main()
