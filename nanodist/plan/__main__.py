"""`python -m nanodist.plan [group=option ...] [key=value ...] cluster=... cluster.gpus=N`: rank every
layout of the composed model on the cluster, print the table, write plan.json and topk.sh.

Composed by Hydra from the same conf/ as launch.py, so model, data, train and cluster overrides
mean what they mean there; the parallel and mesh groups are what the planner varies.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nanodist.config import ConfigError, register_configs, seq_len_of
from nanodist.model import gpt_config, num_params
from nanodist.plan.layouts import enumerate_layouts
from nanodist.plan.output import format_plan, write_plan
from nanodist.plan.rank import plan_layouts, ranked
from nanodist.tools.dryrun import vocab_size

CONF = Path(__file__).resolve().parents[2] / "conf"


def plan(cfg: DictConfig, overrides: list[str]) -> list:
    """Enumerate, validate, estimate and rank; print the table and write the files into cfg.output_dir."""
    start = time.perf_counter()
    cfg = OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True))
    cfg.train.compile = False  # the dry run's figures are eager ones, which bound a compiled run's
    world, vocab = cfg.cluster.gpus, vocab_size(cfg)
    config = gpt_config(cfg, vocab)
    layouts = enumerate_layouts(cfg, world, vocab)
    plan_layouts(layouts, world, config, cfg.cluster)
    layouts = ranked(layouts)
    seconds = time.perf_counter() - start
    c = cfg.cluster
    header = (f"plan: model={cfg.model.name} ({num_params(config) / 1e6:.0f}M params), batch {cfg.train.batch_size} x "
              f"{seq_len_of(cfg)} tokens, dtype {cfg.train.dtype}, on cluster={c.name}: {world} x {c.gpu_memory_gb:g} GB, "
              f"{c.gpus_per_node} per node")
    print(format_plan(layouts, cfg.plan.top_k, header, seconds))
    kept = [o for o in overrides if not o.split("=")[0].lstrip("+~").startswith(("cluster", "plan", "hydra", "parallel", "mesh"))]
    write_plan(Path(cfg.output_dir), layouts, cfg.plan.top_k,
               {"world_size": world, "cluster": OmegaConf.to_container(c), "overrides": kept, "seconds": seconds})
    print(f"wrote {Path(cfg.output_dir) / 'plan.json'} and topk.sh")
    return layouts


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        plan(cfg, list(HydraConfig.get().overrides.task))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    register_configs()
    if not any(arg.startswith("hydra.run.dir=") for arg in sys.argv):
        sys.argv.append("hydra.run.dir=outputs/plans/${now:%Y-%m-%d}/${now:%H-%M-%S}")
    main()
