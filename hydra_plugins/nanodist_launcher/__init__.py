"""nanodist's launchers: Hydra's basic (local) one and hydra-submitit-launcher's SLURM one, each
first pruning the sweep (`plan.prune=true`) and, for SLURM, checking every job before submission.

Hydra instantiates launchers only from the `hydra_plugins` package, hence this small module;
conf/hydra/launcher/{local,slurm}.yaml point their `_target_` here. Everything else (running or
submitting each job, requeue on a time limit) is the stock launchers'.
"""

import sys
from typing import Sequence

from hydra.core.utils import JobReturn, filter_overrides
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import open_dict


def composed_jobs(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """(index, label, overrides, composed config) of every job, as the launcher will compose it."""
    loader = launcher.hydra_context.config_loader
    jobs = []
    for i, overrides in enumerate(job_overrides):
        cfg = loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = cfg.hydra.job.id = initial_job_idx + i
        label = f"#{initial_job_idx + i} ({' '.join(filter_overrides(overrides)) or 'no overrides'})"
        jobs.append((initial_job_idx + i, label, list(overrides), cfg))
    return jobs


def pruned(jobs: list) -> list:
    """The jobs left to run: those the planner finds infeasible are listed with their reason and
    leave a "pruned" job dir; none is pruned unless the sweep sets plan.prune=true."""
    if not jobs or not jobs[0][3].plan.prune:
        return jobs
    # Imported here: Hydra imports every plugin module at each start, and the planner pulls in torch.
    from nanodist.plan.prune import prune_reason, write_pruned

    kept = []
    for job in jobs:
        idx, label, _, cfg = job
        reason = prune_reason(cfg)
        if reason is None:
            kept.append(job)
            continue
        print(f"pruned {label}: {reason}", file=sys.stderr)
        write_pruned(cfg, reason)
    return kept


class NanodistLocalLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Prune, then run the jobs left one after another, each under its own index."""
        returns = []
        for idx, _, overrides, _ in pruned(composed_jobs(self, job_overrides, initial_job_idx)):
            returns += super().launch([overrides], idx)
        return returns


class NanodistSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Prune, then compose every job's config and refuse the sweep, in one sentence, before any job is queued."""
        # Imported here: Hydra imports every plugin module at each start, and nanodist.launch.slurm pulls in torch.
        from nanodist.config import ConfigError
        from nanodist.launch.slurm import check_submission

        jobs = pruned(composed_jobs(self, job_overrides, initial_job_idx))
        try:
            check_submission([(label, cfg) for _, label, _, cfg in jobs], self.params)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        # One submission for all the jobs left (submitted one by one, each would wait for the last):
        # they are numbered on from the first index, so a pruned job's number may be reused.
        return super().launch([overrides for _, _, overrides, _ in jobs], initial_job_idx) if jobs else []
