"""nanodist's SLURM launcher: hydra-submitit-launcher's, plus checks of every job before submission.

Hydra instantiates launchers only from the `hydra_plugins` package, hence this small module;
conf/hydra/launcher/slurm.yaml points its `_target_` here. Everything else (submission, the
job running Hydra's task function, requeue on a time limit) is the stock SlurmLauncher's.
"""

import sys
from typing import Sequence

from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class NanodistSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Compose every job's config and refuse the sweep, in one sentence, before any job is queued."""
        # Imported here: Hydra imports every plugin module at each start, and nanodist.launch.slurm pulls in torch.
        from nanodist.config import ConfigError
        from nanodist.launch.slurm import check_submission

        loader = self.hydra_context.config_loader
        jobs = [
            (f"#{initial_job_idx + i} ({' '.join(filter_overrides(overrides)) or 'no overrides'})",
             loader.load_sweep_config(self.config, list(overrides)))
            for i, overrides in enumerate(job_overrides)
        ]
        try:
            check_submission(jobs, self.params)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        return super().launch(job_overrides, initial_job_idx)
