"""One rank fails, the whole job ends within seconds, and the run says which rank failed first and why.

A rank that raises alone would leave its peers inside a collective until the collective timeout
(`train.collective_timeout_s`, long on purpose: a first compile or a checkpoint write is a
legitimate wait), wherever the failing process lingers instead of exiting: inside a SLURM sweep,
Hydra catches the error in the task. So the failing rank tells the others through the job's
rendezvous store, the TCPStore every launcher already runs at MASTER_ADDR:MASTER_PORT (torchrun's
agent, or rank 0 under SLURM and local launches): it sets one key to a line naming itself and its
error (first writer wins) and writes summary.json (status "failed") at once. Every rank watches
that key from a daemon thread, one check a second on a connection of its own, and on seeing
another rank's line logs it and ends its process with exit status 1, which srun and torch elastic
take as the job's end. A store that stops answering means its host, rank 0, is gone: the same.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch.distributed as dist

log = logging.getLogger("nanodist")

POLL_S = 1.0
# What a rank knows when the store stops answering: its host (rank 0, or torchrun's agent) has gone
# first, and it, or the launcher above it, tells why.
STORE_GONE = "rank 0 is gone (the job's rendezvous store, which it hosts, stopped answering)"


def one_line(err: BaseException) -> str:
    """An exception as `Type: first line of its message`, at most 500 characters."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:500]


def write_failed_summary(output_dir: Path, error: str, rank: Optional[int], parallel: str) -> None:
    """summary.json of a failed run: which rank failed first and why (a launcher's own error has no rank)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"status": "failed", "error": error, "failed_rank": rank, "parallel": parallel}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))


class RankFailed(RuntimeError):
    """A run ended by one of its ranks: raised on a rank stopped because another failed first (the message
    names it), and by a launcher whose ranks failed or were stopped (the message says which and why)."""


class FailureWatch:
    """This rank's link to the job's failure key: `report` sets it, a daemon thread watches it."""

    def __init__(self, rank: int, output_dir: str, parallel: str, poll_s: float = POLL_S):
        self.rank, self.output_dir, self.parallel = rank, Path(output_dir), parallel
        # A restarted attempt under torchrun shares the agent's store with the attempt that failed.
        self.key = f"nanodist/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=timedelta(seconds=30))
        self.failed_here = False
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, args=(poll_s,), daemon=True, name="nanodist-failure-watch").start()

    @classmethod
    def start(cls, rank: int, world_size: int, output_dir: str, parallel: str) -> Optional["FailureWatch"]:
        """A watch for a rank of a multi-process job; None for a lone process (nobody to tell)."""
        if world_size <= 1 or "MASTER_ADDR" not in os.environ:
            return None
        return cls(rank, output_dir, parallel)

    def report(self, err: BaseException) -> Optional[str]:
        """Mark the store with this rank's failure unless another's came first; returns that other one's line.

        The first failing rank writes summary.json itself: the others, and the launcher above
        rank 0, may be stopped before they could.
        """
        self.failed_here = True
        line = f"rank {self.rank} failed: {one_line(err)}"
        try:
            first = self.store.compare_set(self.key, "", line).decode()
        except RuntimeError:  # dist.DistStoreError: the store's host is gone, so it failed (or ended) first
            first = STORE_GONE
        if first == line:
            write_failed_summary(self.output_dir, line, self.rank, self.parallel)
            log.error(line)
            return None
        log.error(f"{first}; rank {self.rank} stopped after it ({one_line(err)}).")
        return first

    def close(self) -> None:
        """Stop watching: called on every rank before the farewell barrier, so no rank sees rank 0 leave."""
        self.stopped.set()

    def _watch(self, poll_s: float) -> None:
        while not self.stopped.wait(poll_s):
            try:
                if not self.store.check([self.key]):
                    continue
                line = self.store.get(self.key).decode()
            except RuntimeError:  # dist.DistStoreError
                line = STORE_GONE
            if self.failed_here or self.stopped.is_set():
                return
            self._exit(line)

    def _exit(self, line: str) -> None:
        """End this process at once: its main thread may be blocked in a collective that will never finish."""
        message = f"{line}; rank {self.rank} stops too."
        log.error(message)
        for handler in log.handlers:
            handler.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)
