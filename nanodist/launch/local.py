"""How a run's ranks start: already started (torchrun, SLURM), or started here on this machine.

`launch` runs in the process Hydra gives the job. It validates the config and prepares the data
once, before any rank exists, so a bad input costs one sentence and no processes. Then either
this process is one rank among many started by torchrun or SLURM (the environment says so), or it
starts the mesh's ranks itself with torch's elastic launcher, as `torchrun --standalone` would.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from nanodist.config import validate, validate_vocab
from nanodist.data import prepare_once
from nanodist.launch.preemption import Preemption, Termination
from nanodist.launch.slurm import join_slurm_job
from nanodist.parallel.dims import ParallelDims
from nanodist.parallel.process_group import RankInfo, rank_info
from nanodist.train.callbacks import Callback
from nanodist.train.failure import RankFailed, write_failed_summary
from nanodist.train.faults import parse_fault

log = logging.getLogger("nanodist")


def launch(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> Optional[dict]:
    """Validate, prepare the data, start or join the ranks; returns rank 0's run summary.

    `callbacks` (picklable: ranks started here get copies) join every rank's Trainer; the
    benchmarks measure through them.

    A run that fails still leaves a summary.json (status "failed" and the error in one line), so
    a sweep's report lists it beside the runs that finished; the error is then raised as before,
    or, when ranks started here failed, as a RankFailed naming the rank that failed first.
    """
    started = time.time()
    try:
        return start(cfg, callbacks)
    except ChildFailedError as err:
        raise RankFailed(record_failure(cfg, err, started)) from None
    except SignalException as err:  # this launcher was terminated; its ranks have saved a checkpoint
        record_failure(cfg, err, started)
        raise RankFailed(f"stopped by {err.sigval.name}; relaunch with hydra.run.dir={cfg.output_dir} to resume.") from None
    except Exception as err:
        record_failure(cfg, err, started)
        raise


def start(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> Optional[dict]:
    """The body of `launch`: validate, prepare the data, then join or start the ranks."""
    world_size = join_slurm_job() or external_world_size()
    default_logger_group(cfg)
    validate(cfg, world_size)
    parse_fault(cfg.train.fault)
    if cfg.checkpoint.resume_from:
        # DCP's imports only when asked (see `worker`).
        from nanodist.train.checkpoint import check_resume_from

        check_resume_from(cfg.checkpoint.resume_from, cfg.model)
    if cfg.dry_run:
        from nanodist.tools.dryrun import dry_run  # imported when used: see `worker`

        return dry_run(OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True)))
    vocab = prepare_once(cfg.data, log=print)["vocab_size"]
    validate_vocab(cfg, vocab)
    if cfg.checkpoint.init_from:
        check_pretrained(cfg, vocab)
    run_cfg = OmegaConf.to_yaml(cfg, resolve=True)  # workers cannot resolve Hydra's interpolations
    if world_size is not None:
        return worker(run_cfg, rank_info(), callbacks)
    nproc = ParallelDims.from_config(cfg).world_size
    if nproc == 1:
        return worker(run_cfg, RankInfo(0, 0, 1), callbacks)
    return spawn_local(run_cfg, nproc, cfg.train.max_restarts, Path(cfg.output_dir), callbacks)


@record  # writes a failing rank's error where elastic_launch finds it, for `describe_error`
def worker(run_cfg: str, rank: Optional[RankInfo] = None, callbacks: Sequence[Callback] = ()) -> dict:
    """One rank's whole life; importable, so elastic launch and submitit can start it."""
    # Imported in the rank, not at the top: the trainer costs a launch ~2 s of imports, which a
    # launch that starts its ranks elsewhere (or stops at a config error) would pay for nothing.
    from nanodist.train.run import run

    # Inside a SLURM job: checkpoint, then requeue, at its time-limit signal; under torch elastic,
    # checkpoint and stop at SIGTERM.
    preemption = Preemption.install() or Termination.install()
    return run(OmegaConf.create(run_cfg), rank or rank_info(), [*callbacks, *([preemption] if preemption else [])])


def local_launch_config(nproc: int, max_restarts: int, log_dir: Optional[Path] = None, **options):
    """torch elastic's config for `nproc` ranks on this machine, as `torchrun --standalone` makes it.

    `log_dir` receives torch elastic's per-attempt folders, where a failing rank leaves its error
    (error.json) for the launcher to report; left to torch, they pile up as /tmp/torchelastic_*,
    one per launch, never removed. None: none are kept (a benchmark's ranks report to stderr).

    The ranks fork from one forkserver process that has imported the trainer once, rather than
    each importing torch anew (spawn): 2-3 s of CPU a rank, which eight ranks on a small machine
    pay eight times over, at every start and every restart. The server is a fresh single-threaded
    process, so forking it is safe where forking this one (thread pools, the rendezvous store)
    would not be.
    """
    multiprocessing.get_context("forkserver").set_forkserver_preload(["nanodist.train.run"])
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # port 0: a free one
        max_restarts=max_restarts,
        monitor_interval=0.5,
        start_method="forkserver",
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir) if log_dir is not None else os.devnull),
        **options,
    )


def spawn_local(run_cfg: str, nproc: int, max_restarts: int, run_dir: Path, callbacks: Sequence[Callback] = ()) -> dict:
    """Start `nproc` ranks on this machine with a c10d rendezvous on a free localhost port.

    torch elastic's folders (the ranks' error files, per attempt) go into <run dir>/torchelastic.
    """
    config = local_launch_config(nproc, max_restarts, Path(run_dir) / "torchelastic")
    # By default torch shares the agent's TCPStore with the ranks and keeps it across restarts
    # without a per-attempt prefix, so restarted ranks read their dead predecessors' gloo
    # addresses ("Connection refused"); a fresh store per attempt makes max_restarts work.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # As torchrun does: ranks sharing the machine's cores must not each start a thread per core.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    log.info(f"starting {nproc} local ranks (logs: rank*.log in the run dir)")
    results = elastic_launch(config, worker)(run_cfg, None, list(callbacks))
    return results[0]


def check_pretrained(cfg: DictConfig, dataset_vocab: int) -> None:
    """Resolve checkpoint.init_from to a local directory once (a hub name is fetched here, not per rank) and check its shape."""
    from nanodist.model import gpt_config
    from nanodist.train.pretrained import check_init_from  # imported when used: see `worker`

    cfg.checkpoint.init_from = str(check_init_from(cfg.checkpoint.init_from, gpt_config(cfg, dataset_vocab)))


def external_world_size() -> Optional[int]:
    """Processes already started by torchrun (or exported from SLURM), or None for a local launch."""
    return int(os.environ["WORLD_SIZE"]) if "WORLD_SIZE" in os.environ and "RANK" in os.environ else None


def default_logger_group(cfg: DictConfig) -> None:
    """In a multirun, group the sweep's runs (wandb's group) under the sweep dir unless logger.group is set."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.logger.group is not None or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.logger.group = str(hydra_cfg.sweep.dir).removeprefix("outputs/multirun/")


def record_failure(cfg: DictConfig, err: Exception, since: float) -> str:
    """summary.json of a run that raised, unless the rank that failed first has written it since `since`.

    Written by the first rank only (all ranks share the run dir). Returns the run's error line.
    """
    line = describe_error(err)
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return line
    try:
        path = Path(cfg.output_dir) / "summary.json"
    except InterpolationResolutionError:  # no Hydra run (a direct call): nowhere to write
        return line
    if path.exists() and path.stat().st_mtime >= since:
        written = json.loads(path.read_text())
        if written.get("status") == "failed":  # by the rank that failed first (nanodist.train.failure)
            return written["error"]
    write_failed_summary(path.parent, line, None, cfg.parallel.name)
    return line


def describe_error(err: Exception) -> str:
    """The error in one line; for ranks started here, the first failed rank's own exception."""
    if isinstance(err, ChildFailedError):
        rank, failure = err.get_first_failure()
        message = failure.message["message"] if isinstance(failure.message, dict) else failure.message
        text = f"rank {rank}: {message}"
    else:
        text = f"{type(err).__name__}: {err}"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:500]
