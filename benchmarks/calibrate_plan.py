"""Calibrate the planner's step-time model on measured runs: fit the cluster's compute_efficiency and
bandwidths, and print predicted against measured step time for every run.

    python benchmarks/calibrate_plan.py RUN_OR_SWEEP_DIR... [--cluster cpu_tiny] [--out results/calibrate_plan_cpu.json]

Each run dir (a job of a sweep, or a single run) holds .hydra/config.yaml, summary.json and
metrics.jsonl; its measured step time is the median `step_time_s` of its logged steps after the
first (compilation, allocation and warm-up). The planner's model (nanodist.plan.cost) is linear in
the three unknowns:

    step = compute at efficiency 1 x (1 + bubble) / compute_efficiency
           + intra-node traffic / intra_node_gbps + inter-node traffic / inter_node_gbps

with compute, bubble and traffic taken from the same dry-run build the planner makes of that
layout (its slowest pipeline rank). Every run is one equation, divided by its measured time so the
least-squares fit weighs relative errors alike. A term that no run exercises (inter-node traffic
when every run stayed on one node) cannot be fitted and keeps the cluster's figure; so does one
whose fit comes out negative (its traffic explains nothing the compute does not). An efficiency
above 1 means the cluster's peak is below what the runs reached: the peak is raised to match
instead. The model has no per-step overhead term (optimizer step, Python, collective latency), so
on small models the fitted efficiency absorbs those too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nanodist.config import MESH_DIMS, register_configs  # noqa: E402
from nanodist.config.schema import Config  # noqa: E402
from nanodist.model import gpt_config  # noqa: E402
from nanodist.parallel.dims import ParallelDims  # noqa: E402
from nanodist.plan.layouts import Layout  # noqa: E402
from nanodist.plan.rank import estimate  # noqa: E402
from nanodist.tools.dryrun import estimate_position, fake_process_group, micro_batch, vocab_size  # noqa: E402

FITTED = ("compute_efficiency", "intra_node_gbps", "inter_node_gbps")
NEVER = 1e30  # a term switched off: infinitely fast compute or links


def run_dirs(paths: list[Path]) -> list[Path]:
    """The completed runs under `paths`: each path a run dir or a sweep dir holding run dirs."""
    found = []
    for path in paths:
        candidates = [path] if (path / ".hydra" / "config.yaml").exists() else sorted(path.iterdir(), key=job_number)
        for run in candidates:
            summary = run / "summary.json"
            if (run / ".hydra" / "config.yaml").exists() and summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
                found.append(run)
    return found


def job_number(path: Path) -> tuple:
    number = path.name.split("_", 1)[0]
    return (int(number), path.name) if number.isdigit() else (float("inf"), path.name)


def run_config(run: Path, cluster: dict | None):
    """The run's config over the schema (fields added since the run keep their defaults), with the
    mesh its summary says it ran on, and `cluster`."""
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    saved.output_dir = str(run)  # it was an interpolation of Hydra's run dir
    cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    cfg = OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True))
    cfg.mesh = {"shape": None, **json.loads((run / "summary.json").read_text())["mesh"]}
    if cluster is not None:
        cfg.cluster = cluster
    cfg.train.compile = False
    return cfg


def overrides_of(run: Path) -> list[str]:
    """The run's command-line overrides, which reproduce it (the dir itself may be gone)."""
    path = run / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.exists() else []


def measured_step(run: Path) -> float:
    steps = [json.loads(line).get("step_time_s") for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [s for s in steps if s is not None]
    return statistics.median(steps[1:] if len(steps) > 1 else steps)


def model_terms(cfg) -> dict:
    """The planner's build of the run's layout, and its step time's three terms at unit figures:
    compute x (1 + bubble) at efficiency 1, and the seconds of traffic at 1 GB/s inside and across nodes."""
    dims = ParallelDims(**{d: cfg.mesh[d] for d in MESH_DIMS})
    config = gpt_config(cfg, vocab_size(cfg))
    layout = Layout(cfg.parallel.name, {d: getattr(dims, d) for d in MESH_DIMS if getattr(dims, d) > 1}, cfg)
    with fake_process_group(0, dims.world_size):
        mesh = dims.build_mesh("cpu")
        rows = [micro_batch(cfg, dims)]
        positions = [estimate_position(cfg, dims, mesh, config, r, rows) for r in range(dims.pp)]

    def step(**figures) -> float:
        return estimate(layout, dims, positions, config, with_figures(cfg.cluster, **figures))["step_s"]

    return {
        "terms": [step(compute_efficiency=1.0, intra_node_gbps=NEVER, inter_node_gbps=NEVER),
                  step(compute_efficiency=NEVER, intra_node_gbps=1.0, inter_node_gbps=NEVER),
                  step(compute_efficiency=NEVER, intra_node_gbps=NEVER, inter_node_gbps=1.0)],
        "predict": lambda cluster: estimate(layout, dims, positions, config, cluster)["step_s"],
        "world_size": dims.world_size,
    }


def with_figures(cluster, **figures) -> SimpleNamespace:
    """The cluster's fields with some replaced (outside the schema's ranges, for the unit terms)."""
    fields = OmegaConf.to_container(cluster) if OmegaConf.is_config(cluster) else vars(cluster)
    return SimpleNamespace(**{**fields, **figures})


def fit(terms: list[list[float]], measured: list[float], cluster) -> tuple[SimpleNamespace, list[str]]:
    """Least squares on relative error for 1/efficiency and 1/bandwidth; the terms no run exercises,
    or that fit negative, keep the cluster's figures. Returns the calibrated cluster and notes."""
    a = np.array(terms) / np.array(measured)[:, None]
    inverse = np.array([1 / getattr(cluster, name) for name in FITTED])
    free = [j for j in range(3) if a[:, j].max() > 1e-9]  # a switched-off term leaves 1e-30-scale crumbs
    notes = [f"{FITTED[j]}: no run exercises it, kept at {getattr(cluster, FITTED[j]):g}" for j in range(3) if j not in free]
    while free:
        fixed = [j for j in range(3) if j not in free]
        solved, *_ = np.linalg.lstsq(a[:, free], 1 - a[:, fixed] @ inverse[fixed], rcond=None)
        if (solved > 0).all():
            inverse[free] = solved
            break
        worst = free[int(np.argmin(solved))]
        notes.append(f"{FITTED[worst]}: fits negative (its term explains nothing), kept at {getattr(cluster, FITTED[worst]):g}")
        free.remove(worst)
    calibrated = with_figures(cluster, **{name: float(1 / inverse[j]) for j, name in enumerate(FITTED)})
    if calibrated.compute_efficiency > 1:  # the peak is below what the runs reached: raise it instead
        scale = calibrated.compute_efficiency
        calibrated.peak_tflops_fp32 *= scale
        calibrated.peak_tflops_bf16 *= scale
        calibrated.compute_efficiency = 1.0
        notes.append(f"compute_efficiency fitted {scale:.2f} > 1: peak_tflops raised x{scale:.2f} instead")
    return calibrated, notes


def table(rows: list[dict]) -> str:
    lines = [f"{'run':<8} {'parallel':<10} {'ranks':>5} {'measured s':>11} {'before s':>10} {'error':>7} {'after s':>10} {'error':>7}"]
    for r in rows:
        lines.append(f"{r['run']:<8} {r['parallel']:<10} {r['world_size']:>5} {r['measured_s']:>11.4f} {r['before_s']:>10.4f} "
                     f"{100 * (r['before_s'] / r['measured_s'] - 1):>+6.0f}% {r['after_s']:>10.4f} {100 * (r['after_s'] / r['measured_s'] - 1):>+6.0f}%")
    return "\n".join(lines)


def calibrate(dirs: list[Path], cluster_name: str | None) -> dict:
    register_configs()
    cluster = OmegaConf.load(ROOT / "conf" / "cluster" / f"{cluster_name}.yaml") if cluster_name else None
    runs = run_dirs(dirs)
    if not runs:
        raise SystemExit(f"error: no completed run (summary.json status completed) under {', '.join(map(str, dirs))}.")
    cfgs = [run_config(run, cluster) for run in runs]
    models = [model_terms(cfg) for cfg in cfgs]
    measured = [measured_step(run) for run in runs]
    before = with_figures(cfgs[0].cluster)
    calibrated, notes = fit([m["terms"] for m in models], measured, before)
    rows = [{"run": run.name.split("_", 1)[0], "overrides": overrides_of(run), "parallel": cfg.parallel.name,
             "world_size": model["world_size"],
             "measured_s": m, "before_s": model["predict"](before), "after_s": model["predict"](calibrated)}
            for run, cfg, model, m in zip(runs, cfgs, models, measured)]
    return {"cluster_before": vars(before), "cluster_after": vars(calibrated), "notes": notes, "runs": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit the planner's step-time figures to measured runs.")
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs, or sweep dirs holding them")
    parser.add_argument("--cluster", help="a conf/cluster/ preset to start from (default: the runs' own cluster section)")
    parser.add_argument("--out", type=Path, help="write the figures and the table as JSON here")
    args = parser.parse_args(argv)
    result = calibrate(args.dirs, args.cluster)
    print(table(result["runs"]))
    after = result["cluster_after"]
    print("\ncalibrated: " + ", ".join(f"{k}: {after[k]:.4g}" for k in (*FITTED, "peak_tflops_fp32", "peak_tflops_bf16")))
    for note in result["notes"]:
        print(f"  {note}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
