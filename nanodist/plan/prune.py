"""`plan.prune=true` in a sweep: the grid points that cannot run, found before any job starts or is
queued, each with its reason, and left in the sweep dir as a "pruned" summary for the report.

A point is pruned when the launcher's validator refuses it, or when the dry run's per-rank
estimate (state + activations) of its fullest rank exceeds the cluster's memory less its reserve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from nanodist.config import ConfigError, resolved_mesh, validate, validate_vocab
from nanodist.model import gpt_config
from nanodist.parallel.dims import ParallelDims
from nanodist.plan.rank import memory_reason, total_bytes
from nanodist.tools.dryrun import estimate_layout, fake_process_group, vocab_size


def prune_reason(job_cfg: DictConfig) -> Optional[str]:
    """Why this sweep point would fail (one sentence), or None when it should run."""
    cfg = resolved_job(job_cfg)
    cfg.train.compile = False
    try:
        world = math.prod(resolved_mesh(cfg).values())
        validate(cfg, world_size=world)
        vocab = vocab_size(cfg)
        validate_vocab(cfg, vocab)
    except ConfigError as err:
        return str(err)
    dims = ParallelDims.from_config(cfg)
    with fake_process_group(0, dims.world_size):
        records = estimate_layout(cfg, dims, gpt_config(cfg, vocab))
    fullest = max(records, key=total_bytes)
    reason = memory_reason({"memory_bytes": total_bytes(fullest), "fullest_rank": fullest["rank"]}, cfg.cluster)
    return None if reason is None else f"does not fit: {reason}"


def resolved_job(job_cfg: DictConfig) -> DictConfig:
    """The job's own config, resolved, without Hydra's node; its output dir is the job dir it will get."""
    kept = [k for k in job_cfg if k not in ("hydra", "output_dir")]
    cfg = OmegaConf.create(OmegaConf.to_yaml(OmegaConf.masked_copy(job_cfg, kept), resolve=True))
    cfg.output_dir = str(job_dir(job_cfg))
    return cfg


def job_dir(job_cfg: DictConfig) -> Path:
    return Path(job_cfg.hydra.sweep.dir, job_cfg.hydra.sweep.subdir)


def write_pruned(job_cfg: DictConfig, reason: str) -> None:
    """The job dir a pruned point leaves: its composed config, as a job's, and a summary saying why."""
    out = job_dir(job_cfg)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    (out / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(resolved_job(job_cfg)))
    summary = {"status": "pruned", "error": reason, "parallel": job_cfg.parallel.name}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
