"""Process-group life cycle: how this process learns its rank, joins the group, and leaves it cleanly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_info() -> RankInfo:
    return RankInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_process_group(device: torch.device, timeout_s: float) -> None:
    """nccl on GPU, gloo on CPU, rendezvous from the environment (torchrun, SLURM or our own launch).

    `timeout_s` bounds a collective's wait for its peers (train.collective_timeout_s).
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = dict(timeout=timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None)
    if "MASTER_ADDR" not in os.environ:  # a lone process started locally (a mesh of one): nobody to rendezvous with
        options.update(store=dist.HashStore(), rank=0, world_size=1)
    dist.init_process_group(backend, **options)


def agree_on_output_dir(output_dir: str) -> str:
    """Rank 0's run dir for everyone: under torchrun each rank's Hydra would pick its own."""
    shared = [output_dir]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def shutdown() -> None:
    """Leave together: a barrier first, so no rank tears gloo down while a peer still talks to it.

    gloo aborts ("terminate called without an active exception") when a process exits with
    pairs still open to a peer that is mid-collective; the barrier drains them all first.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abandon() -> None:
    """Leave after a failure on this rank: drop the group without waiting for anyone."""
    if dist.is_initialized():
        dist.destroy_process_group()
