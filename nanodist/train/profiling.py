"""torch.profiler traces of chosen training steps, one file per rank and step.

Only the chosen steps pay for profiling: the profiler starts at the top of such a step and stops
after its optimizer update, writing <dir>/step<N>.json, a Chrome trace (chrome://tracing or
https://ui.perfetto.dev) with CPU ops, CUDA kernels on GPU, shapes and memory events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from nanodist.train.callbacks import Callback


class StepProfiler(Callback):
    """Starts a profiler for the steps in `steps` and writes each one's trace into `out_dir`."""

    def __init__(self, steps: Iterable[int], out_dir: Path, device: torch.device):
        self.steps, self.out_dir, self.device = set(steps), Path(out_dir), device
        self.active: Optional[profile] = None
        self.step = -1

    def on_step_start(self, trainer, step: int) -> None:
        self.start(step)

    def on_step_end(self, trainer, record: dict) -> None:
        self.stop()

    def on_fit_end(self, trainer, summary: dict) -> None:
        self.stop()  # a step left by a diverged run

    def start(self, step: int) -> None:
        if step not in self.steps:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self.active = profile(activities=activities, record_shapes=True, profile_memory=True)
        self.active.start()
        self.step = step

    def stop(self) -> None:
        """End the current trace, if any, and write it; safe to call when nothing is being profiled."""
        if self.active is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels belong in its trace
        self.active.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.active.export_chrome_trace(str(self.out_dir / f"step{self.step}.json"))
        self.active = None
