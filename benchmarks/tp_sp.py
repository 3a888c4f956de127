"""Tensor parallelism with and without sequence parallelism: tokens/s and per-rank activation memory (issue 5).

tp(2) and tp_sp(2) (SP + loss parallel) through `nanodist.launch.local.launch` with gloo ranks,
alternating tp, tp_sp, tp_sp, tp; `--single` adds one process. Per layout: rank 0's median step
(wall), the largest rank's CPU time per step, and the trainer's activation peak per rank (largest rank).

    python benchmarks/tp_sp.py
    python benchmarks/tp_sp.py --repeats 3 model.n_layer=8 train.seq_len=256 model.block_size=256
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, alternate, compose, fmt_bytes, run, tokens_per_step, write_results  # noqa: E402

DEFAULT = ["model=nano", "model.n_embd=128", "model.n_head=4", "model.n_layer=4", "model.block_size=128", "data=synthetic",
           "data.synthetic_vocab_size=8192", "train.batch_size=8", "train.seq_len=128", "train.log_interval=5", "train.device=cpu"]
LAYOUTS = {"single": ["parallel=single"], "tp(2)": ["parallel=tp", "mesh.tp=2"], "tp_sp(2)": ["parallel=tp_sp", "mesh.tp=2"]}
ROWS = [
    ("ranks", lambda v: str(v["world_size"])),
    ("step (median ms)", lambda v: f"{1e3 * v['s_per_step']:.1f}"),
    ("CPU per step (ms, max rank)", lambda v: f"{1e3 * v['cpu_s_per_step']:.1f}"),
    ("tokens/s", lambda v: f"{v['tokens_per_s']:,.0f}"),
    ("tokens/s per rank", lambda v: f"{v['tokens_per_s'] / v['world_size']:,.0f}"),
    ("activations/rank", lambda v: fmt_bytes(v["activation_bytes_per_rank"])),
    ("params/rank", lambda v: fmt_bytes(v["param_bytes_per_rank"])),
    ("final loss", lambda v: f"{v['final_loss']:.4f}" if v["final_loss"] is not None else "-"),
]


def one_run(name: str, base: list[str], args, work: Path) -> dict:
    summary, ranks = run([*base, *LAYOUTS[name]], work, args.steps, args.warmup)
    return {"wall_median": ranks[0]["wall_median"], "cpu_median": max(r["cpu_median"] for r in ranks),
            "activation_bytes": max(r["activation_bytes"] for r in ranks), "param_bytes": max(r["param_bytes"] for r in ranks),
            "trainer_mean_tokens_per_s": summary.get("mean_tokens_per_s"), "final_loss": summary.get("final_loss"),
            "world_size": len(ranks), "ranks": ranks}


def summarise(rs: list[dict], tokens: int) -> dict:
    """One layout's column: the median over its runs."""
    step = statistics.median(r["wall_median"] for r in rs)
    return {"world_size": rs[0]["world_size"], "s_per_step": step, "tokens_per_s": tokens / step,
            "cpu_s_per_step": statistics.median(r["cpu_median"] for r in rs), "activation_bytes_per_rank": rs[0]["activation_bytes"],
            "param_bytes_per_rank": rs[0]["param_bytes"], "final_loss": rs[0]["final_loss"]}


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
        got = one_run(name, base, args, work / f"{i}_{name.replace('(', '').replace(')', '')}")
        runs[name].append(got)
        print(f"  run {i}: {name:<9} {1e3 * got['wall_median']:8.1f} ms/step  {tokens / got['wall_median']:8,.0f} tok/s  "
              f"activations/rank {fmt_bytes(got['activation_bytes'])}")
    table = {name: summarise(rs, tokens) for name, rs in runs.items()}
    print(f"\n{'':<27}" + "".join(f"{n:>14}" for n in table))
    for label, f in ROWS:
        print(f"{label:<27}" + "".join(f"{f(v):>14}" for v in table.values()))
    tp, sp = table["tp(2)"], table["tp_sp(2)"]
    act_ratio = sp["activation_bytes_per_rank"] / tp["activation_bytes_per_rank"]
    speed_ratio, cpu_ratio = sp["tokens_per_s"] / tp["tokens_per_s"], tp["cpu_s_per_step"] / sp["cpu_s_per_step"]
    print(f"\ntp_sp / tp: activations per rank {act_ratio:.3f}x, tokens/s {speed_ratio:.3f}x "
          f"(by CPU time per step, which other tenants of a shared machine do not inflate: {cpu_ratio:.3f}x)")
    print(f"{'PASS' if act_ratio < 1 else 'FAIL'}: tp_sp(2) keeps {act_ratio:.3f}x tp(2)'s activation bytes per rank (expected < 1)")
    write_results(RESULTS / "tp_sp_cpu.json", {"benchmark": "tp_sp", "overrides": base, "tokens_per_step": tokens, "table": table,
                                               "activation_ratio": act_ratio, "tokens_per_s_ratio": speed_ratio,
                                               "cpu_time_speed_ratio": cpu_ratio, "runs": runs})


if __name__ == "__main__":
    main()
