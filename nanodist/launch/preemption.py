"""Preemption inside a SLURM job: the warning signal before the time limit becomes a checkpoint at
a step boundary, then submitit's requeue; the requeued job runs the whole Hydra job again in the
same run dir and resumes from that checkpoint. Outside SLURM, SIGTERM (torch elastic passes a
local launch's on to its ranks, torchrun likewise) becomes a checkpoint at a step boundary and an
exit, and a relaunch in the same run dir resumes. Both enter the Trainer as a callback.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Optional

import torch
import torch.distributed as dist

from nanodist.train.callbacks import Callback

log = logging.getLogger("nanodist")


class Preemption(Callback):
    """SLURM's warning signal before the time limit, answered by a checkpoint and then a requeue.

    submitit's handler, left alone, requeues the job the moment the signal arrives, mid-step, so
    everything since the last periodic checkpoint would be trained again. Here the signal only
    raises a flag; at each step boundary the ranks agree on it (a one-element all-reduce on a gloo
    group of their own), save a checkpoint together, and only then run submitit's handler: global
    rank 0 requeues the job and exits, the other ranks exit with it.
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.submitit_handler = signal.getsignal(signum)
        self.flagged = False
        self.group = None
        signal.signal(signum, self._flag)

    def on_fit_start(self, trainer) -> None:
        """The ranks' own gloo group, made once the process group exists (every rank makes it here)."""
        if dist.is_available() and dist.is_initialized():
            self.group = dist.new_group(backend="gloo")

    def on_step_end(self, trainer, record: dict) -> None:
        """At every step boundary: if any rank was signalled, all save the current step, then requeue."""
        if self.requested():
            trainer.save(final=True)
            trainer.checkpointer.wait()
            log.info(f"signalled before the time limit: saved step {trainer.state.step}, requeueing")
            self.requeue()

    def on_fit_end(self, trainer, summary: dict) -> None:
        self.close()

    @classmethod
    def install(cls) -> Optional["Preemption"]:
        """A Preemption inside a submitit SLURM job; None elsewhere (no one sends the signal)."""
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return None
        from submitit import JobEnvironment

        return cls(JobEnvironment._usr_sig())

    def _flag(self, signum, frame) -> None:
        self.flagged = True

    def requested(self) -> bool:
        """Whether any rank has been signalled; every rank must ask at the same step."""
        if self.group is None:
            return self.flagged
        flag = torch.tensor([int(self.flagged)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def requeue(self) -> None:
        """After the checkpoint: submitit's own handler requeues (global rank 0) and the job ends here."""
        self.submitit_handler(self.signum, None)
        raise SystemExit(-1)  # ranks other than 0 (submitit's handler returns for them)

    def close(self) -> None:
        """Give the signal back to submitit once the loop is over: a late signal has nothing left to save."""
        signal.signal(self.signum, self.submitit_handler)


class Termination(Preemption):
    """SIGTERM outside SLURM: every rank saves the current step at the next step boundary, then exits 1.

    torch elastic's agent (a local launch's, or torchrun's) sends SIGTERM to the ranks when it is
    itself terminated and gives them 30 s before SIGKILL: a step boundary of any sensible run.
    """

    @classmethod
    def install(cls) -> Optional["Termination"]:
        """A Termination for a rank started by torch elastic; None elsewhere (a lone process keeps SIGTERM's default)."""
        if "TORCHELASTIC_RUN_ID" not in os.environ or os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            return None
        return cls(signal.SIGTERM)

    def on_step_end(self, trainer, record: dict) -> None:
        if self.requested():
            trainer.save(final=True)
            trainer.checkpointer.wait()
            log.error(f"stopped by SIGTERM: saved step {trainer.state.step} to {trainer.checkpointer.latest}; "
                      f"relaunch in the same run dir to resume.")
            raise SystemExit(1)
