"""The plan as a ranked table (printed), plan.json (every layout, with its figures or its reason) and
topk.sh (the best k layouts as ready launch.py commands)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from nanodist.plan.layouts import Layout

GIB = 2**30


def mesh_text(layout: Layout) -> str:
    return "x".join(f"{d}{s}" for d, s in layout.mesh.items()) or "-"


def row(place: int, layout: Layout) -> str:
    t, e = layout.cfg.train, layout.estimate
    n_mb = layout.cfg.parallel.pp.n_microbatches if layout.cfg.parallel.pipeline else None
    head = f"{place:>4} {layout.strategy:<18} {mesh_text(layout):<22} {t.activation_checkpointing:<9} {t.grad_accum:>3} {str(n_mb or '-'):>4}"
    if not e:
        return f"{head}  invalid: {layout.reason}"
    fits = "fits" if layout.reason is None else "OOM"
    return (f"{head} {e['memory_bytes'] / GIB:>9.2f} {fits:>5} {e['step_s']:>9.3f} {e['tokens_per_s']:>11.0f} "
            f"{100 * e['mfu']:>5.1f}%" + ("" if layout.reason is None else f"  ({layout.reason})"))


def format_plan(layouts: list[Layout], top_k: int, header: str, seconds: float) -> str:
    """The top k in full, then a count of the rest: how many fit, how many do not, how many are invalid."""
    fitting = [x for x in layouts if x.estimate and x.reason is None]
    over = [x for x in layouts if x.estimate and x.reason is not None]
    invalid = [x for x in layouts if not x.estimate]
    lines = [header,
             f"{'#':>4} {'parallel':<18} {'mesh':<22} {'ac':<9} {'ga':>3} {'n_mb':>4} {'GiB/rank':>9} {'':>5} "
             f"{'step s':>9} {'tokens/s':>11} {'MFU':>6}"]
    lines += [row(i + 1, x) for i, x in enumerate(fitting[:top_k])]
    if over:
        lines.append("closest that do not fit:")
        lines += [row(len(fitting) + i + 1, x) for i, x in enumerate(over[:3])]
    reasons: dict[str, int] = {}
    for x in invalid:
        reasons[x.reason] = reasons.get(x.reason, 0) + 1
    lines.append(f"{len(layouts)} layouts: {len(fitting)} fit, {len(over)} over memory, {len(invalid)} invalid; "
                 f"planned in {seconds:.1f} s")
    if reasons:
        common = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
        lines += [f"  invalid x{n}: {reason}" for reason, n in common]
    return "\n".join(lines)


def layout_json(place: int, layout: Layout) -> dict:
    return {"place": place, "parallel": layout.strategy, "mesh": layout.mesh, "overrides": layout.overrides,
            "fits": bool(layout.estimate) and layout.reason is None, "reason": layout.reason, **layout.estimate}


def write_plan(out_dir: Path, layouts: list[Layout], top_k: int, summary: dict) -> None:
    """plan.json with every layout in ranked order, and topk.sh running the best k one after another."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [layout_json(i + 1, x) for i, x in enumerate(layouts)]
    (out_dir / "plan.json").write_text(json.dumps({**summary, "layouts": records}, indent=1))
    best = [x for x in layouts if x.estimate and x.reason is None][:top_k]
    lines = ["#!/bin/sh", "# The planner's best layouts, fastest first: python -m nanodist.plan ... (see plan.json).", "set -e"]
    base = shlex.join(summary["overrides"])
    lines += [f"python launch.py {base} {shlex.join(x.overrides)}".rstrip() for x in best]
    (out_dir / "topk.sh").write_text("\n".join(lines) + "\n")
