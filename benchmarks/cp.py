"""Context parallelism against its alternatives for long sequences: activation bytes per rank and tokens/s (issue 17).

At each sequence length, side by side: one process, tp_sp(2), cp(2) ring, cp(2) allgather, and one
process with full activation checkpointing, each through `nanodist.launch.local.launch` on a small
model whose block holds the longest sequence. What each keeps for backward: ring only this rank's
q, k, v, output and log-sum-exp (its backward sends K/V around again and recomputes each block);
allgather the gathered K/V of every layer (full K/V per rank); tp_sp the full sequence inside
attention and MLP for 1/tp of the heads and hidden units; full AC only each block's input.

    python benchmarks/cp.py [--seq-lens 1024 2048 4096] [--steps 3] [model.n_layer=4 ...]
"""

import argparse
import tempfile
from pathlib import Path

from common import RESULTS, compose, fmt_bytes, run, tokens_per_step, write_results

DEFAULT = ["model=nano", "model.n_embd=64", "model.n_head=4", "model.n_layer=2", "model.block_size=4096", "data=synthetic",
           "data.synthetic_vocab_size=512", "train.batch_size=1", "train.log_interval=1", "train.device=cpu"]
LAYOUTS = {
    "single": ["parallel=single"],
    "tp_sp(2)": ["parallel=tp_sp", "mesh.tp=2"],
    "cp(2) ring": ["parallel=cp", "mesh.cp=2", "parallel.cp.method=ring"],
    "cp(2) allgather": ["parallel=cp", "mesh.cp=2", "parallel.cp.method=allgather"],
    "full AC": ["parallel=single", "train.activation_checkpointing=full"],
}


def one_run(overrides: list[str], args, work: Path) -> dict:
    """The largest rank's activations, rank 0's median step and the largest rank's CPU time per step."""
    summary, ranks = run(overrides, work, args.steps, args.warmup)
    return {"activation_bytes": max(r["activation_bytes"] for r in ranks), "wall_median": ranks[0]["wall_median"],
            "cpu_median": max(r["cpu_median"] for r in ranks), "world_size": len(ranks), "final_loss": summary.get("final_loss")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nanodist-cp-"))
    table: dict[int, dict[str, dict]] = {}
    for seq in args.seq_lens:
        base = [*DEFAULT, f"train.seq_len={seq}", *args.overrides]
        tokens = tokens_per_step(compose(base, str(work / "cfg")))
        table[seq] = {}
        for name, layout in LAYOUTS.items():
            got = one_run([*base, *layout], args, Path(tempfile.mkdtemp(dir=work)))
            table[seq][name] = {**got, "tokens_per_s": tokens / got["wall_median"], "tokens_per_cpu_s": tokens / got["cpu_median"]}
            print(f"  seq {seq} {name:<16} activations/rank {fmt_bytes(got['activation_bytes']):>10}  "
                  f"{tokens / got['wall_median']:8,.0f} tok/s", flush=True)
    print(f"\n{'activations/rank':<18}" + "".join(f"{n:>17}" for n in LAYOUTS))
    for seq, row in table.items():
        print(f"{'seq ' + str(seq):<18}" + "".join(f"{fmt_bytes(row[n]['activation_bytes']):>17}" for n in LAYOUTS))
    print(f"\n{'tokens/s (wall)':<18}" + "".join(f"{n:>17}" for n in LAYOUTS))
    for seq, row in table.items():
        print(f"{'seq ' + str(seq):<18}" + "".join(f"{row[n]['tokens_per_s']:>17,.0f}" for n in LAYOUTS))
    ratios = {seq: row["cp(2) ring"]["activation_bytes"] / row["single"]["activation_bytes"] for seq, row in table.items()}
    worst = max(ratios.values())
    print("\ncp(2) ring / single activations per rank: " + ", ".join(f"{r:.3f}x at {s}" for s, r in ratios.items()))
    print(f"{'PASS' if worst < 0.6 else 'FAIL'}: cp(2) ring keeps at most {worst:.3f}x one process's activations per rank (expected < 0.6)")
    write_results(RESULTS / "cp_cpu.json", {"benchmark": "cp", "overrides": [*DEFAULT, *args.overrides], "table": table,
                                            "ring_activation_ratio": ratios})


if __name__ == "__main__":
    main()
