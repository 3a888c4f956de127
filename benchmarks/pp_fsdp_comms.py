"""Collectives per optimizer step of FSDP inside pipeline stages, with gradient accumulation.

    python benchmarks/pp_fsdp_comms.py [--accum 4] [--mesh 2x2] [override ...]

Runs pp_fsdp (1F1B stages, each FSDP2 over dp_shard) through the product, and on every rank counts
the c10d collectives of one optimizer step (`nanodist.tools.collectives`, the planner's counter, at
step 1: step 0 carries the schedule's shape inference; torch's CommDebugMode cannot be used, its
module hooks fail inside a pipeline stage) beside per-rank state bytes, the activation peak and the losses. Run
it in a checkout before and after a change to compare; both print the same table.
"""

import argparse
import json
import tempfile
from pathlib import Path

from common import RESULTS, CommCounter, run, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--mesh", default="2x2")
    parser.add_argument("overrides", nargs="*", help="more launch.py overrides, e.g. model.tie_embeddings=false")
    args = parser.parse_args()
    overrides = ["model=nano", "data=synthetic", "data.synthetic_vocab_size=128", "parallel=pp_fsdp", f"mesh={args.mesh}",
                 "train.batch_size=16", f"train.grad_accum={args.accum}", "train.log_interval=1", "optim.warmup_steps=1", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        summary, probes = run(overrides, work, steps=1, warmup=2, callbacks=[CommCounter(1, work / "comms")])
        comms = [json.loads(p.read_text())["calls"] for p in sorted((work / "comms").glob("rank*.json"), key=lambda p: int(p.stem[4:]))]
        losses = [json.loads(line)["loss"] for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    print(f"pp_fsdp mesh={args.mesh}, grad_accum={args.accum}: collectives in one optimizer step, per rank")
    ops = sorted({op for c in comms for op in c})
    sizes = sorted({k for p in probes for k in p if k.endswith("_bytes")})
    print(f"{'rank':>4} " + " ".join(f"{name:>{max(len(name), 8)}}" for name in ops + sizes))
    for rank, (counts, probe) in enumerate(zip(comms, probes)):
        values = [counts.get(op, 0) for op in ops] + [probe.get(k, 0) for k in sizes]
        print(f"{rank:>4} " + " ".join(f"{v:>{max(len(name), 8)}}" for name, v in zip(ops + sizes, values)))
    print(f"losses per step: {losses}")
    write_results(RESULTS / "pp_fsdp_comms.json", {"args": vars(args), "comms": comms, "probes": probes, "losses": losses,
                                                   "summary": summary})


if __name__ == "__main__":
    main()
