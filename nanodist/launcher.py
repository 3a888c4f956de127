"""How a run's ranks start: already started (torchrun, SLURM), or started here on this machine.

`launch` runs in the process Hydra gives the job. It validates the config and prepares the data
once, before any rank exists, so a bad input costs one sentence and no processes. Then either
this process is one rank among many started by torchrun or SLURM (the environment says so), or it
starts the mesh's ranks itself with torch's elastic launcher, as `torchrun --standalone` would.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from nanodist.config import validate, validate_vocab
from nanodist.datasets import data_dir, ensure_prepared, read_meta
from nanodist.distributed import RankInfo, rank_info

log = logging.getLogger("nanodist")


def launch(cfg: DictConfig) -> Optional[dict]:
    """Validate, prepare the data, start or join the ranks; returns rank 0's run summary."""
    world_size = join_slurm_job() or external_world_size()
    validate(cfg, world_size)
    if cfg.dry_run:
        from nanodist.dryrun import dry_run

        return dry_run(OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True)))
    validate_vocab(cfg, prepare_data(cfg.data)["vocab_size"])
    run_cfg = OmegaConf.to_yaml(cfg, resolve=True)  # workers cannot resolve Hydra's interpolations
    if world_size is not None:
        return worker(run_cfg, rank_info())
    from nanodist.parallel.dims import ParallelDims

    nproc = ParallelDims.from_config(cfg).world_size
    if nproc == 1:
        return worker(run_cfg, RankInfo(0, 0, 1))
    return spawn_local(run_cfg, nproc, cfg.train.max_restarts)


def worker(run_cfg: str, rank: Optional[RankInfo] = None) -> dict:
    """One rank's whole life; importable, so elastic launch and submitit can start it."""
    from nanodist.train import run

    return run(OmegaConf.create(run_cfg), rank or rank_info())


def spawn_local(run_cfg: str, nproc: int, max_restarts: int) -> dict:
    """Start `nproc` ranks on this machine with a c10d rendezvous on a free localhost port."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.5,
    )
    log.info(f"starting {nproc} local ranks (logs: rank*.log in the run dir)")
    results = elastic_launch(config, worker)(run_cfg)
    return results[0]


def external_world_size() -> Optional[int]:
    """Processes already started by torchrun (or exported from SLURM), or None for a local launch."""
    return int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ and "RANK" in os.environ else None


def join_slurm_job() -> Optional[int]:
    """Inside a multi-task SLURM job, export torch's rendezvous variables from SLURM's; returns the world size."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "RANK" in os.environ:
        return None
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return env.world_size


def prepare_data(data_cfg) -> dict:
    """Prepare the dataset once and return its meta; a file lock makes concurrent ranks (torchrun, SLURM) wait for the first."""
    if data_cfg.name == "synthetic":
        return read_meta(data_cfg)
    out = data_dir(data_cfg)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_prepared(data_cfg, log=print)
