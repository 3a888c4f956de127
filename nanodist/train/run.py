"""One rank's life: join the process group, log to the run dir, fit a Trainer, leave the group cleanly."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable

from nanodist.parallel.process_group import (
    RankInfo,
    abandon,
    agree_on_output_dir,
    init_process_group,
    pick_device,
    shutdown,
)
from nanodist.train.callbacks import Callback
from nanodist.train.failure import FailureWatch, RankFailed
from nanodist.train.faults import FaultInjection
from nanodist.train.metrics import to_json
from nanodist.train.profiling import StepProfiler
from nanodist.train.trainer import Trainer

log = logging.getLogger("nanodist")


def run(cfg, rank: RankInfo, callbacks: Iterable[Callback] = ()) -> dict:
    """Entry point of every rank: train with `callbacks` (and the profiler), write summary.json on rank 0."""
    device = pick_device(cfg.train.device, rank.local_rank)
    p = cfg.parallel
    # A strategy on a mesh of one (parallel=fsdp mesh.dp_shard=1) still needs a process group and mesh.
    if rank.world_size > 1 or p.data_parallel != "none" or p.tensor_parallel or p.pipeline:
        init_process_group(device, cfg.train.collective_timeout_s)
        cfg.output_dir = agree_on_output_dir(cfg.output_dir)
    setup_logging(cfg.output_dir, rank)
    watch = FailureWatch.start(rank.rank, rank.world_size, cfg.output_dir, p.name)
    fault = FaultInjection.from_config(cfg.train.fault, rank.rank)
    try:
        profiler = StepProfiler(cfg.train.profile_steps, Path(cfg.output_dir, "profile", f"rank{rank.rank}"), device)
        summary = Trainer(cfg, rank, device, [profiler, *callbacks, *([fault] if fault else [])]).fit()
        if rank.is_main:
            Path(cfg.output_dir, "summary.json").write_text(to_json(summary, indent=1))
    except BaseException as err:
        # An error (not an exit: a requeue ends ranks with SystemExit) is told to the other ranks,
        # which end too. No farewell barrier: the peers may never reach it.
        first = watch.report(err) if watch is not None and isinstance(err, Exception) else None
        if watch is not None and not isinstance(err, Exception):
            watch.close()  # an exit all ranks agreed on (a requeue, a SIGTERM): none has failed
        abandon()
        if first is not None:
            raise RankFailed(first) from err
        raise
    if watch is not None:
        watch.close()
    shutdown()
    return summary


def setup_logging(output_dir: str, rank: RankInfo) -> None:
    """Each rank logs to rank<r>.log in the run dir; rank 0 also prints to the console."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    file_handler = logging.FileHandler(Path(output_dir) / f"rank{rank.rank}.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    if rank.is_main:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
