"""Seams in the training loop: what profilers, preemption, benchmarks and tests hook into.

A callback sees the Trainer at fixed points of every step, on every rank, in the same order, so a
callback may run collectives (preemption agrees on a flag) as long as it does so on every rank.
Override only the methods you need; `trainer` is the calling `nanodist.train.trainer.Trainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


class Callback:
    def on_fit_start(self, trainer) -> None:
        """Before the first step of this attempt (after any resume)."""

    def on_step_start(self, trainer, step: int) -> None:
        """Before step `step` (0-based) fetches its batch."""

    def on_step_end(self, trainer, record: dict) -> None:
        """After the update of a step: `record` holds step, lr and step_time_s; on logged steps also
        everything metrics.jsonl gets (loss, grad_norm, tokens/s, memory, val_loss when evaluated)."""

    def on_eval_start(self, trainer, step: int) -> None:
        """Before the evaluation that follows step `step`."""

    def on_eval(self, trainer, step: int, val_loss: float) -> None:
        """After an evaluation at step `step`."""

    def on_save(self, trainer, step: int, path: Path) -> None:
        """After this rank handed the checkpoint of `step` to DCP (async saves may still be writing)."""

    def on_fit_end(self, trainer, summary: dict) -> None:
        """After the last step, with the run's summary."""


class Callbacks:
    """The callbacks of one Trainer, called in order."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.items = list(callbacks)

    def __call__(self, event: str, *args) -> None:
        for callback in self.items:
            getattr(callback, event)(*args)
