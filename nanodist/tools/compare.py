"""What a sweep's report compares across jobs: how each strategy's throughput scales with the world
size, and how far each job's loss curve lies from a reference job's.

- Scaling efficiency of a job: its tokens/s over the tokens/s of the same strategy at that
  strategy's smallest world size in the sweep, divided by the ratio of the world sizes; 1.0 is
  linear scaling. Jobs count as the same strategy when they share the strategy and every swept
  value other than the mesh's (a sweep over batch sizes scales each batch size on its own).
- Loss difference of a job: the largest |loss - reference loss| / |reference loss| over the steps
  both logged. Strategies that compute the same math stay near float rounding (1e-7 to 1e-5);
  a bug in a strategy shows as a difference that grows with the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol


class Job(Protocol):
    """What is compared of a job (nanodist.tools.report.Job, which imports this module)."""

    name: str
    number: str
    strategy: str
    label: str
    status: str
    swept: tuple[str, ...]
    world_size: int
    summary: dict
    records: list[dict]

# The strategies whose math is the plain single-device step: the default reference.
PLAIN_STRATEGIES = ("single", "ddp")


def scaling_key(job: Job) -> tuple[str, tuple[str, ...]]:
    """What must match for two jobs to be one strategy at two world sizes: the mesh's overrides set the size."""
    return job.strategy, tuple(o for o in job.swept if not o.lstrip("+~").startswith("mesh"))


@dataclass
class Scaling:
    job: Job
    base: Job  # the same strategy at its smallest world size

    @property
    def speedup(self) -> float:
        return self.job.summary["mean_tokens_per_s"] / self.base.summary["mean_tokens_per_s"]

    @property
    def efficiency(self) -> float:
        return self.speedup / (self.job.world_size / self.base.world_size)


def scaling(jobs: list[Job]) -> list[Scaling]:
    """Each measured job against its strategy's smallest world size, for strategies run at two or more sizes."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.status == "completed" and job.summary.get("mean_tokens_per_s"):
            groups.setdefault(scaling_key(job), []).append(job)
    rows = []
    for group in groups.values():
        if len({job.world_size for job in group}) < 2:
            continue
        base = min(group, key=lambda job: job.world_size)  # the first of the smallest, in job order
        rows += [Scaling(job, base) for job in sorted(group, key=lambda job: job.world_size)]
    return rows


class UnknownReference(ValueError):
    """report.reference names nothing the sweep holds."""


def pick_reference(jobs: list[Job], reference: Optional[str]) -> Optional[Job]:
    """The job that loss curves are compared with: `reference` names a job (its dir name or number) or a
    strategy (its smallest world size); by default the smallest single or ddp job. None when nothing
    qualifies by default; a name that matches no job with a loss curve is an error, in one sentence."""
    logged = [job for job in jobs if job.records]
    if reference is None:
        plain = [job for job in logged if job.strategy in PLAIN_STRATEGIES]
        return min(plain, key=lambda job: job.world_size) if plain else None
    by_name = [job for job in logged if reference in (job.name, job.number)]
    by_strategy = [job for job in logged if job.strategy == reference]
    if by_name or by_strategy:
        return by_name[0] if by_name else min(by_strategy, key=lambda job: job.world_size)
    if not logged:
        raise UnknownReference(f"report.reference={reference}: no job of this sweep has logged a loss to compare with.")
    numbers = ", ".join(job.number for job in logged)
    strategies = ", ".join(dict.fromkeys(job.strategy for job in logged))
    raise UnknownReference(f"report.reference={reference} names no job with a loss curve in this sweep; "
                     f"give a job number ({numbers}) or a strategy ({strategies}).")


def relative_differences(job: Job, reference: Job) -> list[tuple[int, float]]:
    """(step, |loss - reference loss| / |reference loss|) at every step both jobs logged."""
    ref = {r["step"]: r["loss"] for r in reference.records}
    return [(r["step"], abs(r["loss"] - ref[r["step"]]) / abs(ref[r["step"]]))
            for r in job.records if r["step"] in ref and ref[r["step"]] != 0]


def max_difference(job: Job, reference: Job) -> Optional[tuple[float, int]]:
    """The largest relative loss difference and its step; None when the two share no logged step."""
    diffs = relative_differences(job, reference)
    if not diffs:
        return None
    step, diff = max(diffs, key=lambda pair: pair[1])
    return diff, step
