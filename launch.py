"""nanodist's one entry point: `python launch.py [group=option ...] [key=value ...]`.

Hydra composes conf/ into one config; nanodist.launcher validates it, prepares the data and
starts (or joins) the ranks. Under torchrun every rank runs this file; rank 0's run dir is used.
"""

import os
import sys
import tempfile

import hydra
from omegaconf import DictConfig

from nanodist.config import ConfigError, register_configs
from nanodist.datasets import DatasetUnavailable
from nanodist.launcher import launch

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        launch(cfg)
    except (ConfigError, DatasetUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0 and "-m" not in sys.argv and "--multirun" not in sys.argv:
        # Under torchrun, ranks other than 0 write into rank 0's run dir (agreed on after joining).
        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='nanodist-rank-')}", "hydra.output_subdir=null"]
    main()
