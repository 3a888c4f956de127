"""nanodist's reference DDP, FSDP and TP beside torch's native ones, and naive model parallelism beside pipelining.

    python benchmarks/reference.py [--steps 4] [--model nano] [override ...]

Table 1, at 2 ranks for ddp, fsdp and tp, native and reference (`parallel.implementation`): tokens/s,
per-rank parameter + gradient + optimizer bytes, the activation peak, and the bytes and calls of the
collectives one optimizer step issues on rank 0 (counted by nanodist.tools.collectives, the planner's
counter, at the first timed step). Table 2, at 2 ranks on the same model and batch: model_parallel (one
batch flowing stage to stage), pp_gpipe and pp_1f1b (one sequence per microbatch): tokens/s and each
rank's idle fraction, 1 - CPU time / wall time of a step (on CPU a rank waiting for its peer in gloo
sleeps, so that is the bubble as measured; the pipeline's communication counts as busy).

Every run goes through the product (launch.py's config, spawned gloo ranks); the pairs run one after
the other in one process, on the same machine state.
"""

import argparse
import json
import tempfile
from pathlib import Path

from common import RESULTS, CommCounter, fmt_bytes, run, tokens_per_step, compose, write_results

PAIRS = [("ddp", ["parallel=ddp"]), ("fsdp", ["parallel=fsdp"]), ("tp", ["parallel=tp"])]
PIPELINES = [("model_parallel", ["parallel=model_parallel"]), ("pp_gpipe", ["parallel=pp_gpipe"]),
             ("pp_1f1b", ["parallel=pp_1f1b"])]


def measure(name: str, overrides: list[str], steps: int, work: Path) -> dict:
    """One run's figures: throughput, rank 0's state and activation bytes, its collectives of one step."""
    work.mkdir(parents=True)
    tokens = tokens_per_step(compose(overrides, str(work / "run")))
    warmup = 2
    summary, probes = run(overrides, work, steps=steps, warmup=warmup, callbacks=[CommCounter(warmup, work / "comms")])
    comms = json.loads((work / "comms" / "rank0.json").read_text())
    seconds = max(p["seconds_per_step"] for p in probes)
    return {
        "name": name,
        "tokens_per_s": tokens / seconds,
        "state_bytes": sum(probes[0][k] for k in ("param_bytes", "grad_bytes", "optim_bytes")),
        "activation_bytes": probes[0]["activation_bytes"],
        "comm_bytes": sum(comms["bytes"].values()),
        "comm_calls": sum(comms["calls"].values()),
        "idle": [1 - p["cpu_median"] / p["wall_median"] for p in probes],
        "final_loss": summary["final_loss"],
    }


def print_pairs(rows: list[dict]) -> None:
    print(f"{'strategy':<16} {'tokens/s':>9} {'state/rank':>11} {'activations':>12} {'comm/step':>10} {'calls':>6} {'loss':>8}")
    for r in rows:
        print(f"{r['name']:<16} {r['tokens_per_s']:>9,.0f} {fmt_bytes(r['state_bytes']):>11} "
              f"{fmt_bytes(r['activation_bytes']):>12} {fmt_bytes(r['comm_bytes']):>10} {r['comm_calls']:>6} {r['final_loss']:>8.4f}")


def print_pipelines(rows: list[dict]) -> None:
    print(f"{'strategy':<16} {'tokens/s':>9} {'idle rank0':>11} {'idle rank1':>11} {'activations':>12}")
    for r in rows:
        print(f"{r['name']:<16} {r['tokens_per_s']:>9,.0f} {r['idle'][0]:>11.3f} {r['idle'][1]:>11.3f} "
              f"{fmt_bytes(r['activation_bytes']):>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--model", default="nano")
    parser.add_argument("overrides", nargs="*", help="more launch.py overrides")
    args = parser.parse_args()
    base = [f"model={args.model}", "data=synthetic", "data.synthetic_vocab_size=256", "mesh=ranks2", "train.batch_size=8",
            "optim.warmup_steps=1", "train.log_interval=1", *args.overrides]
    pairs, pipelines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in PAIRS:
            for impl in ("native", "reference"):
                label = f"{name} {impl}"
                pairs.append(measure(label, [*base, *overrides, f"parallel.implementation={impl}"], args.steps,
                                     Path(tmp) / label.replace(" ", "_")))
        for name, overrides in PIPELINES:
            pipelines.append(measure(name, [*base, *overrides], args.steps, Path(tmp) / name))
    print(f"model={args.model}, 2 ranks (gloo, CPU), batch 8; collectives of one step on rank 0")
    print_pairs(pairs)
    print("\nthe same model and batch over 2 pipeline ranks; idle = 1 - CPU time / wall time of a step")
    print_pipelines(pipelines)
    write_results(RESULTS / "reference_cpu.json", {"args": vars(args), "pairs": pairs, "pipelines": pipelines})


if __name__ == "__main__":
    main()
