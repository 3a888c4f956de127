"""SLURM: the checks of a sweep before anything is submitted, and preemption inside a running job.

Jobs reach SLURM through hydra-submitit-launcher (`hydra/launcher=slurm`); every SLURM task is one
rank and joins the others through `join_slurm_job` below. Two things need SLURM's view:

- Before submission, `check_submission` refuses a job whose tasks (nodes x tasks_per_node) do not
  match its mesh, or a partition the cluster does not have: a queued job that fails minutes
  later, on a busy cluster hours later, is the expensive way to learn of a typo.
- While a job runs, `nanodist.launch.preemption` turns SLURM's warning signal before its time
  limit into a checkpoint at a step boundary followed by submitit's requeue.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from typing import Optional

import torch

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


def join_slurm_job() -> Optional[int]:
    """Inside a multi-task SLURM job, export torch's rendezvous variables from SLURM's; returns the world size."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "RANK" in os.environ:
        return None
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment()
    # The first node's hostname is the rendezvous address; where it does not resolve (the
    # one-machine test cluster) NANODIST_MASTER_ADDR replaces it.
    env.master_addr = os.environ.get("NANODIST_MASTER_ADDR", env.master_addr)
    if "MASTER_PORT" not in os.environ:
        # submitit draws the port from 20000-60000, mostly inside Linux's ephemeral range (32768-60999),
        # where any socket on the first node may hold it: rank 0 then fails with EADDRINUSE and the other
        # ranks wait out the rendezvous timeout. Below that range, keyed by the job id all tasks share.
        env.master_port = 20000 + int(os.environ["SLURM_JOB_ID"]) % 12768
    env.export(set_cuda_visible_devices=False)
    # One rank per task: its threads get the task's CPUs, not every core of the node (torchrun likewise
    # sets OMP_NUM_THREADS=1), or the ranks sharing a node oversubscribe it.
    if "SLURM_CPUS_PER_TASK" in os.environ:
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    return env.world_size
