"""nanodist's one entry point: `python launch.py [group=option ...] [key=value ...]`.

Hydra composes conf/ into one config; nanodist.launch.local validates it, prepares the data and
starts (or joins) the ranks. Under torchrun every rank runs this file; rank 0's run dir is used.
"""

import os
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nanodist.config import ConfigError, register_configs
from nanodist.data import DatasetUnavailable
from nanodist.launch.local import launch

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # In a sweep a job must raise, not exit: Hydra then records it as failed and runs the others.
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = launch(cfg)
    except (ConfigError, DatasetUnavailable) as err:
        if in_sweep:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if summary is not None and summary.get("status") == "diverged" and not in_sweep:
        sys.exit(1)  # the run's log has said why, in one line


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0 and "-m" not in sys.argv and "--multirun" not in sys.argv:
        # Under torchrun, ranks other than 0 write into rank 0's run dir (agreed on after joining).
        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='nanodist-rank-')}", "hydra.output_subdir=null"]
    main()
