"""Tensor parallelism with and without sequence parallelism: tokens/s and per-rank activation memory (issue 5).

tp(2) and tp_sp(2) (SP + loss parallel) train the same config through nanodist's launcher path, with
real gloo ranks; `--single` adds one process alongside as a yardstick. Per rank, a probe counts the bytes
autograd saves for backward during one step (distinct storages, parameters excluded, DTensors by
their local shard): the activation peak of that step. The trainer's own `activation_bytes` metric
is read from summary.json as a cross-check. Throughput is the median wall time of a step on rank 0
(every rank waits for the others in the collectives); runs alternate tp, tp_sp, tp_sp, tp ... The
process CPU time per step (largest rank) is shown too: on a shared machine it is the steadier figure.

    python benchmarks/tp_sp.py
    python benchmarks/tp_sp.py --repeats 3 model.n_layer=8 train.seq_len=256 model.block_size=256

Check: tp_sp's per-rank activation bytes below tp's (what sequence + loss parallelism are for).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, compose, fmt_bytes, machine, read_run, run_probed, save_json  # noqa: E402

DEFAULT = [
    "model=nano",
    "model.n_embd=128",
    "model.n_head=4",
    "model.n_layer=4",
    "model.block_size=128",
    "data=synthetic",
    "data.synthetic_vocab_size=8192",
    "train.batch_size=8",
    "train.seq_len=128",
    "train.log_interval=5",
    "train.eval_interval=0",
    "train.sample_tokens=0",
    "train.device=cpu",
]
LAYOUTS = {"single": ["parallel=single"], "tp(2)": ["parallel=tp", "mesh.tp=2"], "tp_sp(2)": ["parallel=tp_sp", "mesh.tp=2"]}



def one_run(name: str, base: list[str], steps: int, warmup: int, work: Path) -> dict:
    total = warmup + steps
    # Saved-tensor hooks do not nest (the innermost wins), and the trainer measures one step itself
    # (its `activation_bytes`): counting two steps leaves at least one to this probe.
    probe = {"first": warmup - 1, "last": total - 1, "activations": [0, 2], "state": True}
    ranks = run_probed([*base, *LAYOUTS[name], f"train.max_steps={total}"], work, probe)
    summary, metrics = read_run(work / "run")
    return {
        "wall_median": ranks[0]["wall_median"],
        "cpu_median": max(r["cpu_median"] for r in ranks),
        "activation_bytes": max(r["activation_bytes"] for r in ranks),
        "param_bytes": max(r["param_bytes"] for r in ranks),
        "trainer_activation_bytes": summary.get("activation_bytes"),
        "trainer_mean_tokens_per_s": summary.get("mean_tokens_per_s"),
        "final_loss": summary.get("final_loss"),
        "world_size": len(ranks),
        "ranks": ranks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--single", action="store_true", help="add a one-process column as a yardstick")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tp layout (alternating)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    base = [*DEFAULT, *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="nanodist-tpsp-"))
    cfg = compose(base, str(work / "cfg"))
    seq = cfg.train.seq_len or cfg.model.block_size
    tokens = cfg.train.batch_size * seq
    print(f"config: {' '.join(base)} ({tokens} tokens per step)")

    names = [n for n in LAYOUTS if args.single or n != "single"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    order = ["single"] if args.single else []
    for r in range(args.repeats):
        order += ["tp(2)", "tp_sp(2)"] if r % 2 == 0 else ["tp_sp(2)", "tp(2)"]
    for i, name in enumerate(order):
        got = one_run(name, base, args.steps, args.warmup, work / f"{i}_{name.replace('(', '').replace(')', '')}")
        runs[name].append(got)
        print(f"  run {i}: {name:<9} {1e3 * got['wall_median']:8.1f} ms/step  {tokens / got['wall_median']:8,.0f} tok/s  "
              f"activations/rank {fmt_bytes(got['activation_bytes'])}")

    table = {}
    for name, rs in runs.items():
        step = statistics.median(r["wall_median"] for r in rs)
        ws = rs[0]["world_size"]
        table[name] = {
            "world_size": ws,
            "s_per_step": step,
            "cpu_s_per_step": statistics.median(r["cpu_median"] for r in rs),
            "tokens_per_s": tokens / step,
            "tokens_per_s_per_rank": tokens / step / ws,
            "activation_bytes_per_rank": rs[0]["activation_bytes"],
            "trainer_activation_bytes": rs[0]["trainer_activation_bytes"],
            "param_bytes_per_rank": rs[0]["param_bytes"],
            "final_loss": rs[0]["final_loss"],
        }
    rows = [
        ("ranks", lambda v: str(v["world_size"])),
        ("step (median ms)", lambda v: f"{1e3 * v['s_per_step']:.1f}"),
        ("CPU per step (ms, max rank)", lambda v: f"{1e3 * v['cpu_s_per_step']:.1f}"),
        ("tokens/s", lambda v: f"{v['tokens_per_s']:,.0f}"),
        ("tokens/s per rank", lambda v: f"{v['tokens_per_s_per_rank']:,.0f}"),
        ("activations/rank (probe)", lambda v: fmt_bytes(v["activation_bytes_per_rank"])),
        ("activations/rank (trainer)", lambda v: fmt_bytes(v["trainer_activation_bytes"])),
        ("params/rank", lambda v: fmt_bytes(v["param_bytes_per_rank"])),
        ("final loss", lambda v: f"{v['final_loss']:.4f}" if v["final_loss"] is not None else "-"),
    ]
    print(f"\n{'':<27}" + "".join(f"{n:>14}" for n in names))
    for label, f in rows:
        print(f"{label:<27}" + "".join(f"{f(table[n]):>14}" for n in names))
    tp, sp = table["tp(2)"], table["tp_sp(2)"]
    if not tp["activation_bytes_per_rank"]:
        print("FAIL: the probe saw no saved tensors (another saved_tensors_hooks shadowed it?)")
        sys.exit(1)
    act_ratio = sp["activation_bytes_per_rank"] / tp["activation_bytes_per_rank"]
    speed_ratio = sp["tokens_per_s"] / tp["tokens_per_s"]
    cpu_ratio = tp["cpu_s_per_step"] / sp["cpu_s_per_step"]
    print(f"\ntp_sp / tp: activations per rank {act_ratio:.3f}x, tokens/s {speed_ratio:.3f}x "
          f"(by CPU time per step, which other tenants of a shared machine do not inflate: {cpu_ratio:.3f}x)")
    ok = act_ratio < 1.0
    print(f"{'PASS' if ok else 'FAIL'}: tp_sp(2) keeps {act_ratio:.3f}x tp(2)'s activation bytes per rank (expected < 1)")
    out = ROOT / "benchmarks" / "results" / "tp_sp_cpu.json"
    save_json(out, {"benchmark": "tp_sp", "machine": machine(), "overrides": base, "tokens_per_step": tokens,
                    "table": table, "activation_ratio": act_ratio, "tokens_per_s_ratio": speed_ratio, "cpu_time_speed_ratio": cpu_ratio, "runs": runs})
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
