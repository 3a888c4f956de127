"""SLURM: the checks of a sweep before anything is submitted, and preemption inside a running job.

Jobs reach SLURM through hydra-submitit-launcher (`hydra/launcher=slurm`); every SLURM task is one
rank and joins the others through `nanodist.launcher.join_slurm_job`. Two things need SLURM's view:

- Before submission, `check_submission` refuses a job whose tasks (nodes x tasks_per_node) do not
  match its mesh, or a partition the cluster does not have: a queued job that fails minutes
  later, on a busy cluster hours later, is the expensive way to learn of a typo.
- While a job runs, `Preemption` turns SLURM's warning signal before its time limit into a
  checkpoint at a step boundary followed by submitit's requeue; the requeued job runs the whole
  Hydra job again in the same run dir and resumes from that checkpoint.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
from typing import Optional

import torch
import torch.distributed as dist

from nanodist.config import ConfigError, resolved_mesh, validate


def check_submission(jobs: list[tuple[str, object]], launcher: dict) -> None:
    """Refuse, in one sentence, a sweep that SLURM would run on no partition or with the wrong rank count.

    `jobs` holds (description, composed config) per job; `launcher` is hydra.launcher's parameters.
    """
    nodes, per_node = int(launcher["nodes"]), int(launcher["tasks_per_node"])
    for description, cfg in jobs:
        try:
            check_tasks(cfg, nodes, per_node)
            validate(cfg, nodes * per_node)
        except ConfigError as err:
            raise ConfigError(f"job {description}: {err}") from None
    check_partition(launcher.get("partition"))


def check_tasks(cfg, nodes: int, per_node: int) -> None:
    """Every SLURM task is one rank, so nodes x tasks_per_node must be the mesh's product."""
    tasks = nodes * per_node
    sizes = resolved_mesh(cfg)
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if -1 in sizes.values():  # dp_shard inferred from the tasks
        if tasks % fixed == 0:
            return
        needed, advice = f"a multiple of {fixed}", f"a multiple of {fixed}"
    elif fixed == tasks:
        return
    else:
        needed, advice = str(fixed), str(fixed)
    raise ConfigError(
        f"parallel={cfg.parallel.name} with mesh {'x'.join(str(sizes[d]) for d in sizes)} (pp x dp_replicate x "
        f"dp_shard x tp) needs {needed} ranks but hydra.launcher asks for {nodes} node(s) x {per_node} "
        f"tasks_per_node = {tasks}; set hydra.launcher.nodes and tasks_per_node so that their product is {advice}."
    )


def check_partition(partition: Optional[str]) -> None:
    """The partition must exist; none given means the cluster's default, which must then exist."""
    names, default = cluster_partitions()
    if partition is None and default is None:
        raise ConfigError(
            f"this cluster has no default partition; set hydra.launcher.partition to one of: {', '.join(names)}."
        )
    if partition is not None and partition not in names:
        raise ConfigError(
            f"hydra.launcher.partition={partition} is not a partition of this cluster; "
            f"pick one of: {', '.join(names) or 'none (sinfo lists no partition)'}."
        )


def cluster_partitions() -> tuple[list[str], Optional[str]]:
    """The cluster's partitions as sinfo lists them, and its default one (sinfo marks it with '*')."""
    if shutil.which("sinfo") is None:
        raise ConfigError(
            "hydra/launcher=slurm needs SLURM's commands (sinfo, sbatch) on PATH; run it where they are, "
            "or sweep on this machine without hydra/launcher=slurm."
        )
    result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ConfigError(f"sinfo could not reach the SLURM controller ({result.stderr.strip()}); is the cluster up?")
    listed = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    default = next((name.rstrip("*") for name in listed if name.endswith("*")), None)
    return [name.rstrip("*") for name in listed], default


class Preemption:
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
        distributed = dist.is_available() and dist.is_initialized()
        self.group = dist.new_group(backend="gloo") if distributed else None
        signal.signal(signum, self._flag)

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
