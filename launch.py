"""nanodist's one entry point: `python launch.py [group=option ...] [key=value ...]`.

Hydra composes conf/ into one config; nanodist.launch.local validates it, prepares the data and
starts (or joins) the ranks. Under torchrun every rank runs this file; rank 0's run dir is used.
"""

import os
import shutil
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nanodist.config import ConfigError, register_configs
from nanodist.config.overrides import check_override_types
from nanodist.data import DatasetUnavailable
from nanodist.launch.local import launch
from nanodist.train.failure import RankFailed

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
    except RankFailed as err:  # ranks started here: the one that failed first, in one line
        if in_sweep:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    if summary is not None and summary.get("status") == "diverged" and not in_sweep:
        sys.exit(1)  # the run's log has said why, in one line


if __name__ == "__main__":
    try:
        check_override_types(sys.argv[1:])  # before Hydra, whose own report of a wrong type is not one line
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    scratch = None
    if int(os.environ.get("RANK", "0")) > 0 and "-m" not in sys.argv and "--multirun" not in sys.argv:
        # Under torchrun, ranks other than 0 write into rank 0's run dir (agreed on after joining);
        # the dir Hydra makes for each of them holds only Hydra's own log, and goes when the rank does.
        scratch = tempfile.mkdtemp(prefix="nanodist-rank-")
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    try:
        main()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
