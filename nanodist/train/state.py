"""The Trainer's resumable state: everything a restarted run needs besides weights, optimizer and RNG.

It travels in every checkpoint's meta.json, so a run that is killed, restarted or requeued reports
the same totals (best val loss, skipped steps, tokens, step times) as one that never stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done; also the loader's position (a batch is a function of the step)
    loss: Optional[float] = None  # the last logged training loss
    val_loss: Optional[float] = None
    best_val_loss: Optional[float] = None
    skipped_steps: int = 0  # updates skipped under train.nan_policy=skip
    tokens_seen: int = 0
    # Logged steps' times, each attempt's first (warm-up: allocation, compilation) left out.
    timed_steps: int = 0
    timed_seconds: float = 0.0
    wall_time_s: float = 0.0  # training time over every attempt so far

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])

    def record_eval(self, val_loss: float) -> None:
        self.val_loss = val_loss
        self.best_val_loss = val_loss if self.best_val_loss is None else min(self.best_val_loss, val_loss)
