"""Fault injection for tests: `train.fault="RANK:STEP:PHASE:KIND"` makes one rank fail at one point.

PHASE is where: `step` (as step STEP starts, 0-based as in metrics.jsonl) or `save` (right after
the rank handed checkpoint step_STEP, saved after STEP steps, to DCP). KIND is what: `raise` (a
RuntimeError, as an out-of-memory or a bad file would) or `kill` (SIGKILL, as the OOM killer or
a lost node would). It fires in a run's first attempt only (torch elastic's restart count 0), so
a restart (train.max_restarts) shows whether the run survives it.

The spec is parsed before any process starts (`parse_fault`, called by the launcher), so a
malformed one is refused in one sentence; no torch here.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Optional

from nanodist.config import ConfigError
from nanodist.train.callbacks import Callback

PHASES = ("step", "save")
KINDS = ("raise", "kill")


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int
    phase: str
    kind: str


def parse_fault(spec: Optional[str]) -> Optional[Fault]:
    """`RANK:STEP:PHASE:KIND` as a Fault; None when no fault is asked for."""
    if not spec:
        return None
    parts = str(spec).split(":")
    if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit() and parts[2] in PHASES and parts[3] in KINDS:
        return Fault(int(parts[0]), int(parts[1]), parts[2], parts[3])
    raise ConfigError(
        f"train.fault={spec} is not RANK:STEP:PHASE:KIND; give e.g. 1:3:step:raise, with PHASE one of "
        f"{', '.join(PHASES)} and KIND one of {', '.join(KINDS)}."
    )


class FaultInjection(Callback):
    """Fires `fault` on its rank at its step and phase, in the first attempt only."""

    def __init__(self, fault: Fault, rank: int):
        self.fault, self.rank = fault, rank
        self.armed = rank == fault.rank and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0

    @classmethod
    def from_config(cls, spec: Optional[str], rank: int) -> Optional["FaultInjection"]:
        fault = parse_fault(spec)
        return cls(fault, rank) if fault is not None else None

    def on_step_start(self, trainer, step: int) -> None:
        self.maybe_fire("step", step)

    def on_save(self, trainer, step: int, path) -> None:
        self.maybe_fire("save", step)

    def maybe_fire(self, phase: str, step: int) -> None:
        f = self.fault
        if not self.armed or phase != f.phase or step != f.step:
            return
        self.armed = False
        if f.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault on rank {self.rank} at step {step} ({phase}, train.fault={f.rank}:{f.step}:{f.phase}:{f.kind})")
