"""nanodist's launchers: Hydra's basic (local) one and hydra-submitit-launcher's SLURM one, each
first pruning the sweep (`plan.prune=true`) and, for SLURM, checking every job before submission.

Hydra instantiates launchers only from the `hydra_plugins` package, hence this small module;
conf/hydra/launcher/{local,slurm}.yaml point their `_target_` here. The SLURM one submits itself,
one job array per nodes x tasks_per_node shape (the stock launcher has one shape per sweep), the
way the stock one does; running each job and requeue on a time limit are the stock launcher's.
"""

import sys
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict


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
        """Prune, give every job its nodes x tasks_per_node from its own mesh (refusing the sweep, in one
        sentence, before any job is queued), then submit one job array per shape and wait for them all."""
        # Imported here: Hydra imports every plugin module at each start, and nanodist.launch.slurm pulls in torch.
        from nanodist.config import ConfigError
        from nanodist.launch.slurm import check_submission

        jobs = pruned(composed_jobs(self, job_overrides, initial_job_idx))
        try:
            shapes = check_submission([(label, cfg) for _, label, _, cfg in jobs], self.params)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        groups: dict[tuple[int, int], list] = {}
        for (idx, _, overrides, _), shape in zip(jobs, shapes):
            groups.setdefault(shape, []).append((idx, overrides))
        # Every array is queued before any result is awaited: a shape's jobs do not wait for another's.
        submitted = [job for shape, group in groups.items() for job in self.submit(group, *shape)]
        return [job.results()[0] for _, job in sorted(submitted, key=lambda pair: pair[0])]

    def submit(self, jobs: list[tuple[int, list[str]]], nodes: int, tasks_per_node: int) -> list:
        """Queue (index, overrides) jobs as one array of `nodes` x `tasks_per_node` tasks each; a job on part
        of a node asks for at most one GPU per task. Returns (index, submitit job) pairs."""
        import submitit

        params = {**self.params, "nodes": nodes, "tasks_per_node": tasks_per_node}
        if params.get("gpus_per_node") is not None:
            params["gpus_per_node"] = min(int(params["gpus_per_node"]), tasks_per_node)
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # submitit's names for every cluster; the rest are slurm_*
        executor.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})
        state = Singleton.get_state()
        calls = [(overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}", state) for idx, overrides in jobs]
        return list(zip([idx for idx, _ in jobs], executor.map_array(self, *zip(*calls))))
