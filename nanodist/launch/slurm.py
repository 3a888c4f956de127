"""SLURM: the checks of a sweep before anything is submitted, and preemption inside a running job.

Jobs reach SLURM through hydra-submitit-launcher (`hydra/launcher=slurm`); every SLURM task is one
rank and joins the others through `join_slurm_job` below. Two things need SLURM's view:

- Before submission, `check_submission` gives each job its nodes x tasks_per_node from its own mesh
  (so one sweep may mix world sizes; the launcher submits one job array per shape), and refuses a
  mesh that does not fit the nodes, or a partition the cluster does not have: a queued job that
  fails minutes later, on a busy cluster hours later, is the expensive way to learn of a typo.
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


def check_submission(jobs: list[tuple[str, object]], launcher: dict) -> list[tuple[int, int]]:
    """Each job's (nodes, tasks_per_node), or a refusal in one sentence of a sweep that SLURM would run
    on no partition or that a job's mesh does not fit.

    `jobs` holds (description, composed config) per job; `launcher` is hydra.launcher's parameters:
    its tasks_per_node is what one node holds, its nodes the most that one job may take.
    """
    max_nodes, per_node = int(launcher["nodes"]), int(launcher["tasks_per_node"])
    shapes = []
    for description, cfg in jobs:
        try:
            nodes, tasks = job_shape(cfg, max_nodes, per_node)
            validate(cfg, nodes * tasks)
        except ConfigError as err:
            raise ConfigError(f"job {description}: {err}") from None
        shapes.append((nodes, tasks))
    check_partition(launcher.get("partition"))
    return shapes


def job_shape(cfg, max_nodes: int, per_node: int) -> tuple[int, int]:
    """(nodes, tasks_per_node) of one job: every SLURM task is one rank, so the job takes as few nodes as
    its mesh's ranks fill, whole nodes of `per_node` tasks or part of one. A mesh that leaves dp_shard
    to the world size (-1) takes all `max_nodes` x `per_node` tasks, which its other dims must divide."""
    sizes = resolved_mesh(cfg)
    ranks = math.prod(size for size in sizes.values() if size != -1)
    mesh = f"parallel={cfg.parallel.name} with mesh {'x'.join(str(sizes[d]) for d in sizes)} (pp x dp_replicate x dp_shard x tp)"
    if -1 in sizes.values():
        if (max_nodes * per_node) % ranks:
            raise ConfigError(
                f"{mesh} needs a multiple of {ranks} ranks but hydra.launcher asks for {max_nodes} node(s) x {per_node} "
                f"tasks_per_node = {max_nodes * per_node}; set hydra.launcher.nodes and tasks_per_node so that their "
                f"product is a multiple of {ranks}.")
        return max_nodes, per_node
    if ranks <= per_node:
        return 1, ranks
    if ranks % per_node:
        raise ConfigError(
            f"{mesh} needs {ranks} ranks, which do not fill whole nodes of hydra.launcher.tasks_per_node={per_node}; "
            f"use at most {per_node} ranks or a multiple of {per_node}.")
    if ranks // per_node > max_nodes:
        raise ConfigError(
            f"{mesh} needs {ranks} ranks = {ranks // per_node} nodes x {per_node} tasks_per_node, more than "
            f"hydra.launcher.nodes={max_nodes} allows; set hydra.launcher.nodes={ranks // per_node}.")
    return ranks // per_node, per_node


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
