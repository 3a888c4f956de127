"""Fault injection for tests: `train.fault="RANK:STEP:PHASE:KIND"` makes one rank fail at one point.

PHASE is where, STEP counted as metrics.jsonl counts steps (0-based) for `step` and `eval`, and
as checkpoints are named (step_STEP, saved after STEP steps) for `save` and `write`:
  step   as step STEP starts;
  eval   as the evaluation after step STEP starts (the other ranks go into it and wait for
         this one in its first collective);
  save   right after the rank handed checkpoint step_STEP to DCP (an async save is still writing);
  write  inside DCP's write of checkpoint step_STEP, once this rank's files are written and
         before the checkpoint is complete (no .metadata, no meta.json yet).
KIND is what: `raise` (a RuntimeError, as an out-of-memory or a bad file would), `kill`
(SIGKILL, as the OOM killer or a lost node would) or `enospc` (an OSError "No space left on
device", as a full disk gives a write). It fires in a run's first attempt only (torch elastic's
restart count 0), so a restart (train.max_restarts) shows whether the run survives it.

The spec is parsed before any process starts (`parse_fault`, called by the launcher), so a
malformed one is refused in one sentence; torch is imported only by the ranks that inject.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nanodist.config import ConfigError
from nanodist.train.callbacks import Callback

PHASES = ("step", "eval", "save", "write")
KINDS = ("raise", "kill", "enospc")


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
    """Fires `fault` on its rank at its step and phase, in the first attempt only.

    The Trainer's callbacks mark every phase but a checkpoint's write, so for that one
    `on_fit_start` gives the checkpointer a storage writer (its seam for DCP's file writer) that
    fires `write` after writing.
    """

    def __init__(self, fault: Fault, rank: int):
        self.fault, self.rank = fault, rank
        self.armed = rank == fault.rank and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0

    @classmethod
    def from_config(cls, spec: Optional[str], rank: int) -> Optional["FaultInjection"]:
        fault = parse_fault(spec)
        return cls(fault, rank) if fault is not None else None

    def on_fit_start(self, trainer) -> None:
        if self.armed and self.fault.phase == "write":
            trainer.checkpointer.storage_writer = self.storage_writer

    def on_step_start(self, trainer, step: int) -> None:
        self.maybe_fire("step", step)

    def on_eval_start(self, trainer, step: int) -> None:
        self.maybe_fire("eval", step)

    def on_save(self, trainer, step: int, path) -> None:
        self.maybe_fire("save", step)

    def storage_writer(self, path: Path, step: int):
        """DCP's file writer for checkpoint step_`step`; for the faulted one, a writer that fails after writing."""
        from torch.distributed.checkpoint import FileSystemWriter

        injection = self

        class FaultyWriter(FileSystemWriter):
            def write_data(self, plan, planner):
                written = super().write_data(plan, planner)
                written.wait()  # this rank's files are on disk: the checkpoint is now partial
                injection.maybe_fire("write", step)
                return written

        return FaultyWriter(path)

    def maybe_fire(self, phase: str, step: int) -> None:
        f = self.fault
        if not self.armed or phase != f.phase or step != f.step:
            return
        self.armed = False
        if f.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if f.kind == "enospc":
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected: train.fault={spec_of(f)})")
        raise RuntimeError(f"injected fault on rank {self.rank} at step {step} ({phase}, train.fault={spec_of(f)})")


def spec_of(fault: Fault) -> str:
    return f"{fault.rank}:{fault.step}:{fault.phase}:{fault.kind}"
