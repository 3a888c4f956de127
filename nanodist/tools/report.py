"""A sweep's report: markdown tables and four plots comparing its jobs.

    python -m nanodist.tools.report outputs/multirun/strategy_grid/<date_time> [report.reference=<job or strategy>]

writes report.md, loss.png, loss_diff.png, throughput.png and memory.png into the sweep dir: every
job's row, each strategy's scaling efficiency across world sizes and each job's loss difference
from the reference job (nanodist.tools.compare says how both are computed). Every job dir of a
Hydra sweep holds .hydra/config.yaml; a finished job adds summary.json and metrics.jsonl, a
failed one a summary.json with its error (see nanodist.launch.local), and one that left no summary
(killed, or still running) is listed as such, so no job silently drops out of the comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from nanodist.config import MESH_DIMS, resolved_mesh
from nanodist.tools.compare import UnknownReference, max_difference, pick_reference, relative_differences, scaling

MEMORY_PARTS = ("param_bytes", "grad_bytes", "optim_bytes", "activation_bytes")


@dataclass
class Job:
    """One job of the sweep, as its run dir tells it."""

    name: str
    strategy: str
    shape: str  # the mesh in the strategy's own dims, as `mesh=` takes it
    mesh: dict
    summary: dict
    records: list[dict] = field(default_factory=list)
    swept: tuple[str, ...] = ()  # the job's overrides of the other swept keys, e.g. "train.batch_size=16"

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.strategy, self.shape and f"mesh={self.shape}", *self.swept) if part)

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def status(self) -> str:
        return self.summary.get("status", "no summary")

    @property
    def world_size(self) -> int:
        return self.summary.get("world_size") or math.prod(self.mesh.values())

    @property
    def tokens_per_s_per_rank(self) -> Optional[float]:
        tokens = self.summary.get("mean_tokens_per_s")
        return tokens / self.world_size if tokens else None

    def per_rank_rate(self, key: str) -> Optional[float]:
        """A per-rank rate proportional to tokens/s (FLOP/s, MFU), scaled to the summary's mean tokens/s,
        so that every column of a row describes the same average step."""
        record = next((r for r in reversed(self.records) if r.get(key) is not None and r.get("tokens_per_s_per_rank")), None)
        if record is None or self.tokens_per_s_per_rank is None:
            return None
        return record[key] / record["tokens_per_s_per_rank"] * self.tokens_per_s_per_rank


def load_sweep(sweep_dir: Path) -> list[Job]:
    """Every job dir of the sweep (those with a .hydra/config.yaml), in Hydra's job order."""
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "config.yaml").exists()]
    keys = swept_keys(sweep_dir) - {"parallel", "mesh"}  # the table shows these two already
    return [load_job(d, keys) for d in sorted(dirs, key=job_order)]


def swept_keys(sweep_dir: Path) -> set[str]:
    """The keys the sweep varies: its sweeper's params and the command-line overrides listing several values."""
    if not (sweep_dir / "multirun.yaml").exists():
        return set()
    hydra = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    keys = set(hydra.sweeper.get("params") or {})
    for override in hydra.overrides.task:
        key, _, value = override.partition("=")
        if "," in value and value[:1] not in "[{":
            keys.add(key.lstrip("+~"))
    return keys


def job_order(job_dir: Path) -> tuple:
    number = job_dir.name.split("_", 1)[0]
    return (int(number), job_dir.name) if number.isdigit() else (math.inf, job_dir.name)


def load_job(job_dir: Path, swept: set[str] = frozenset()) -> Job:
    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml") if (job_dir / ".hydra" / "overrides.yaml").exists() else []
    values = tuple(o for o in overrides if o.partition("=")[0].lstrip("+~") in swept)
    summary = read_json(job_dir / "summary.json") or {}
    try:
        mesh = summary.get("mesh") or resolved_mesh(cfg)
    except Exception:  # a mesh that does not resolve: the job failed on it, its summary says why
        mesh = {dim: 1 for dim in MESH_DIMS}
    shape = "x".join(str(mesh[d]) for d in cfg.parallel.mesh_dims)
    return Job(job_dir.name, cfg.parallel.name, shape, mesh, summary, read_records(job_dir / "metrics.jsonl"), values)


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_records(path: Path) -> list[dict]:
    """Training records by step; should a step appear twice, its last record counts."""
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if "loss" in record:
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


# ---- the table ----


def fmt(value: Optional[float], unit: str = "", digits: int = 3) -> str:
    """A number with SI prefix (12.3k, 4.56M) and unit; a dash when unknown."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{prefix}{unit}"
    return f"{value:.{digits}g}{unit}"


def peak_memory(job: Job) -> tuple[Optional[int], str]:
    """The job's peak memory per rank and where it was measured: the GPU allocator, else host RSS."""
    if job.summary.get("peak_memory_bytes") is not None:
        return job.summary["peak_memory_bytes"], "GPU"
    return job.summary.get("peak_host_memory_bytes"), "host"


def state_memory(job: Job) -> Optional[int]:
    """Per-rank bytes of parameters, gradients, optimizer state and saved activations (the part strategies change)."""
    parts = [job.summary.get(key) for key in MEMORY_PARTS]
    return sum(parts) if all(p is not None for p in parts) else None


def table(jobs: list[Job]) -> str:
    with_mfu = any(job.per_rank_rate("mfu") is not None for job in jobs)
    with_swept = any(job.swept for job in jobs)
    header = ["job"] + (["swept"] if with_swept else []) + ["strategy", "mesh", "world size", "tokens/s", "tokens/s per rank", "FLOP/s per rank"]
    header += ["MFU"] if with_mfu else []
    header += ["peak memory per rank", "state + activations per rank", "final loss", "val loss", "status"]
    rows = []
    for job in jobs:
        s = job.summary
        peak, where = peak_memory(job)
        row = [job.number, *([" ".join(job.swept)] if with_swept else []), job.strategy, job.shape or "–", str(job.world_size), fmt(s.get("mean_tokens_per_s")),
               fmt(job.tokens_per_s_per_rank), fmt(job.per_rank_rate("flops_per_s_per_rank"))]
        if with_mfu:
            mfu = job.per_rank_rate("mfu")
            row.append(f"{100 * mfu:.1f}%" if mfu is not None else "–")
        row += [fmt(peak, "B") + (f" ({where})" if peak else ""), fmt(state_memory(job), "B"),
                fmt(s.get("final_loss"), digits=4), fmt(s.get("final_val_loss"), digits=4), job.status]
        rows.append(row)
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows])


def scaling_section(jobs: list[Job]) -> str:
    rows = [[s.job.number, s.job.strategy, " ".join(s.job.swept) or "–", str(s.job.world_size), fmt(s.job.summary["mean_tokens_per_s"]),
             f"{s.speedup:.2f}x", f"{100 * s.efficiency:.0f}%"] for s in scaling(jobs)]
    if not rows:
        return "## Scaling efficiency\n\nNo strategy completed at two or more world sizes in this sweep."
    intro = ("## Scaling efficiency\n\nEach strategy's tokens/s against its own smallest world size in the sweep: "
             "efficiency = speed-up / (world size / smallest world size); 100% is linear scaling.")
    return intro + "\n\n" + markdown_table(["job", "strategy", "swept", "world size", "tokens/s", "speed-up", "scaling efficiency"], rows)


def loss_difference_section(jobs: list[Job], reference: Optional[Job]) -> str:
    if reference is None:
        return ("## Loss difference\n\nNo single or ddp job logged a loss to compare with; "
                "name one with report.reference=<job number or strategy>.")
    rows = []
    for job in jobs:
        found = max_difference(job, reference) if job.records else None
        steps = len(relative_differences(job, reference)) if found else 0
        rows.append([job.number, job.label, str(job.world_size), str(steps),
                     "reference" if job is reference else (f"{found[0]:.2e}" if found else "–"),
                     str(found[1] + 1) if found and job is not reference else "–"])
    intro = (f"## Loss difference\n\nMax over the steps both logged of |loss - reference loss| / reference loss; the "
             f"reference is job {reference.number} ({reference.label}, {reference.world_size} ranks). "
             "Steps count from 1, as in the progress line and the plots.")
    return intro + "\n\n" + markdown_table(["job", "run", "world size", "steps compared", "max relative loss difference", "at step"], rows)


def markdown(sweep_dir: Path, jobs: list[Job], reference: Optional[Job] = None) -> str:
    done = sum(job.status == "completed" for job in jobs)
    parts = [
        f"# Sweep {sweep_dir}",
        f"{len(jobs)} jobs, {done} completed. tokens/s (and with it FLOP/s and MFU) is the mean over the logged "
        "steps after the first (warm-up); peak memory is the GPU allocator's peak, or on CPU the host's resident set; "
        "state + activations is parameters, gradients, optimizer state and saved activations on one rank.",
        table(jobs),
    ]
    problems = [job for job in jobs if job.status not in ("completed",)]
    if problems:
        parts.append("## Jobs that did not complete")
        parts += [f"- `{job.name}` ({job.status}): {job.summary.get('error') or 'no summary.json: killed, or still running'}"
                  for job in problems]
    parts += [scaling_section(jobs), loss_difference_section(jobs, reference)]
    parts.append("![loss](loss.png)\n\n![loss difference](loss_diff.png)\n\n![throughput](throughput.png)\n\n![memory](memory.png)")
    return "\n\n".join(parts) + "\n"


# ---- the plots ----


def plot_loss(jobs: list[Job], path: Path) -> None:
    """Training loss of every job against the step, overlaid. Strategies that compute the same math
    draw the same curve, so each line is drawn thinner than the one before: coinciding curves
    show as nested strokes instead of hiding each other."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plotted = [job for job in jobs if job.records]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, job in enumerate(plotted):
        steps = [r["step"] + 1 for r in job.records]
        width = 1 + 5 * (len(plotted) - 1 - i) / max(1, len(plotted) - 1)
        ax.plot(steps, [r["loss"] for r in job.records], linewidth=width, alpha=0.8, label=job.label)
    ax.set(xlabel="step", ylabel="training loss", title="Loss curves (identical curves draw as nested strokes)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1 + len(plotted) // 17, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LOSS_DIFF_FLOOR = 1e-9  # where a job's loss equals the reference's exactly: below any float32 rounding


def plot_loss_difference(jobs: list[Job], reference: Optional[Job], path: Path) -> None:
    """Every job's relative loss difference from the reference against the step, on a log scale:
    float rounding (1e-7) and a real divergence (1e-2) both stay readable; exact equality lies on the floor."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(10, 5.5))
    compared = [job for job in jobs if reference is not None and job is not reference and relative_differences(job, reference)]
    for i, job in enumerate(compared):
        steps, diffs = zip(*relative_differences(job, reference))
        width = 1 + 4 * (len(compared) - 1 - i) / max(1, len(compared) - 1)
        ax.plot([s + 1 for s in steps], [max(d, LOSS_DIFF_FLOOR) for d in diffs], linewidth=width, alpha=0.8, marker=".", label=job.label)
    if compared:
        ax.set_yscale("log")
        ax.axhline(LOSS_DIFF_FLOOR, color="grey", linestyle=":", linewidth=1, label=f"identical (drawn at {LOSS_DIFF_FLOOR:g})")
        ax.legend(fontsize=7, ncol=1 + len(compared) // 17, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.text(0.5, 0.5, "no single or ddp job to compare with (report.reference=<job or strategy> names one), or no other job", ha="center", transform=ax.transAxes)
    title = f"Loss difference from job {reference.number} ({reference.label})" if reference else "Loss difference"
    ax.set(xlabel="step", ylabel="|loss - reference| / reference", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bar_chart(jobs: list[Job], path: Path, title: str, xlabel: str, series: dict[str, list[Optional[float]]]) -> None:
    """Horizontal bars, one row per job (stacked when several series); a job without values says why."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * len(jobs)))
    rows = list(range(len(jobs)))[::-1]
    left = [0.0] * len(jobs)
    for name, values in series.items():
        widths = [v or 0.0 for v in values]
        ax.barh(rows, widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths)]
    for row, job, total in zip(rows, jobs, left):
        if total == 0:
            ax.text(0, row, f" {job.status}", va="center", fontsize=8, color="firebrick")
    ax.set_yticks(rows, [f"{job.label}, {job.world_size} ranks" for job in jobs], fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(jobs: list[Job], path: Path) -> None:
    bar_chart(jobs, path, "Throughput", "tokens/s per rank",
              {"tokens/s per rank": [j.tokens_per_s_per_rank for j in jobs]})


def plot_memory(jobs: list[Job], path: Path) -> None:
    names = {"param_bytes": "parameters", "grad_bytes": "gradients", "optim_bytes": "optimizer", "activation_bytes": "activations"}
    bar_chart(jobs, path, "Memory per rank: model state and saved activations", "MB per rank",
              {label: [(j.summary.get(key) or 0) / 1e6 for j in jobs] for key, label in names.items()})


def write_report(sweep_dir: Path, jobs: list[Job], reference: Optional[Job] = None) -> Path:
    """Write report.md and the plots into the sweep dir; returns the report's path. `reference` is the
    job loss curves are compared with (compare.pick_reference; by default the smallest single or ddp job)."""
    import matplotlib

    matplotlib.use("Agg")
    reference_job = reference or pick_reference(jobs, None)
    plot_loss(jobs, sweep_dir / "loss.png")
    plot_loss_difference(jobs, reference_job, sweep_dir / "loss_diff.png")
    plot_throughput(jobs, sweep_dir / "throughput.png")
    plot_memory(jobs, sweep_dir / "memory.png")
    report = sweep_dir / "report.md"
    report.write_text(markdown(sweep_dir, jobs, reference_job))
    return report


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Table and plots comparing the jobs of a sweep.")
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("settings", nargs="*", metavar="report.reference=<job or strategy>",
                        help="the job (number or dir name) or strategy that loss curves are compared with; "
                             "default: the smallest single or ddp job")
    args = parser.parse_args(argv)
    settings = dict(setting.partition("=")[::2] for setting in args.settings)
    unknown = set(settings) - {"report.reference"}
    if unknown:
        parser.error(f"unknown setting {', '.join(sorted(unknown))}; the report takes report.reference=<job or strategy>")
    jobs = load_sweep(args.sweep_dir) if args.sweep_dir.is_dir() else []
    if not jobs:
        fail(f"{args.sweep_dir} holds no job dirs (with .hydra/config.yaml); give a sweep dir such as outputs/multirun/<date>/<time>.")
    try:
        reference = pick_reference(jobs, settings.get("report.reference"))
    except UnknownReference as err:
        fail(str(err))
    report = write_report(args.sweep_dir, jobs, reference)
    print("\n\n".join([table(jobs), scaling_section(jobs), loss_difference_section(jobs, reference)]))
    print(f"\nwrote {report} and loss.png, loss_diff.png, throughput.png, memory.png beside it")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
