"""Helpers shared by the benchmarks: compose nanodist's config, start real ranks, and probe them.

Every benchmark drives the product through its own code path (Hydra's config tree, `nanodist.launch.local`,
`nanodist.train`) and measures it from the outside with hooks that the product does not know about:

- optimizer step hooks (torch's global `register_optimizer_step_*_hook`) time each training step and
  read the per-rank bytes of parameters, gradients (before the step, while they exist) and optimizer state;
- `saved_tensors_hooks` count the bytes autograd keeps for backward (the activation memory), per rank.

A probe is a dict, so that ranks started by torch's elastic launcher (fresh interpreters) can install
the same hooks: `probed_worker(run_cfg, probe)` installs them, runs the ordinary nanodist worker, and
writes what it saw to `<probe["out"]>/rank<r>.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

# This machine is shared and small: one intra-op thread per process avoids oversubscription (set
# OMP_NUM_THREADS yourself to change it); spawned ranks inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.optim.optimizer as optimizer_hooks  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before us

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NANODIST_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))


# ---------------------------------------------------------------- config


def compose(overrides: list[str], output_dir: str):
    """nanodist's config as `python launch.py overrides...` would compose it, writing into output_dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nanodist.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])
    return cfg


def has_key(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


def machine() -> dict:
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


# ---------------------------------------------------------------- probes


class StepClock:
    """Timestamps after every optimizer step, whichever optimizer (trainer's or reference's) runs.

    Steps `first`+1 .. `last` are the timed window, each step measured from one optimizer step to the
    next. On CUDA the device is synchronised only at the window edges, so the window keeps whatever
    CPU/GPU overlap the loop itself has, and the figure is the window's mean wall time. On CPU every
    step is synchronous; the figure is the median step's process CPU time (all threads of this
    process), which other tenants of a shared machine do not inflate; wall figures are kept as well.
    """

    def __init__(self, first: int, last: int, sync_cuda: bool):
        self.first, self.last, self.sync_cuda = first, last, sync_cuda
        self.count, self.wall, self.cpu = 0, {}, {}
        self.handle = optimizer_hooks.register_optimizer_step_post_hook(self._hook)

    def _hook(self, optimizer, args, kwargs) -> None:
        if self.first <= self.count <= self.last:
            if self.sync_cuda and self.count in (self.first, self.last):
                torch.cuda.synchronize()
            self.wall[self.count] = time.perf_counter()
            self.cpu[self.count] = time.process_time()
        self.count += 1

    @staticmethod
    def _deltas(stamps: dict) -> list[float]:
        keys = sorted(stamps)
        return [stamps[b] - stamps[a] for a, b in zip(keys, keys[1:])]

    def figures(self) -> dict:
        if self.first not in self.wall or self.last not in self.wall:
            return {}
        n = self.last - self.first
        wall, cpu = self._deltas(self.wall), self._deltas(self.cpu)
        out = {
            "wall_mean": (self.wall[self.last] - self.wall[self.first]) / n,
            "wall_median": statistics.median(wall),
            "cpu_mean": (self.cpu[self.last] - self.cpu[self.first]) / n,
            "cpu_median": statistics.median(cpu),
        }
        out["seconds_per_step"] = out["wall_mean"] if self.sync_cuda else out["cpu_median"]
        out["measure"] = "wall time, window mean (CUDA)" if self.sync_cuda else "process CPU time, median step"
        return out

    def seconds_per_step(self) -> Optional[float]:
        return self.figures().get("seconds_per_step")

    def close(self) -> None:
        self.handle.remove()


def _storage_key_bytes(t: torch.Tensor) -> tuple[int, int]:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t._local_tensor
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


class ActivationProbe:
    """Bytes of distinct storages that autograd saves for backward during one step (parameters excluded).

    Everything saved in a forward stays alive until its backward, so the sum over one step's forward
    (one micro-batch) is the activation peak of that step. Views of one storage count once.
    """

    def __init__(self):
        self.enabled = False
        self.seen: dict[int, int] = {}
        self.per_step: list[int] = []
        self.context = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.context.__enter__()

    def _pack(self, t):
        if self.enabled and not isinstance(t, torch.nn.Parameter) and t.device.type != "meta":
            key, nbytes = _storage_key_bytes(t)
            self.seen[key] = nbytes
        return t

    def end_step(self) -> None:
        if self.enabled:
            self.per_step.append(sum(self.seen.values()))
        self.seen = {}

    def close(self) -> None:
        self.context.__exit__(None, None, None)


class StateProbe:
    """Per-rank bytes of parameters and gradients (just before each optimizer step) and optimizer state (after)."""

    def __init__(self):
        from nanodist.train.metrics import local_bytes

        self.local_bytes = local_bytes
        self.record: dict[str, int] = {}
        self.handles = [
            optimizer_hooks.register_optimizer_step_pre_hook(self._pre),
            optimizer_hooks.register_optimizer_step_post_hook(self._post),
        ]

    @staticmethod
    def _params(optimizer) -> list[torch.Tensor]:
        return list({id(p): p for g in optimizer.param_groups for p in g["params"]}.values())

    def _pre(self, optimizer, args, kwargs) -> None:
        params = self._params(optimizer)
        self.record["param_bytes"] = self.local_bytes(params)
        self.record["grad_bytes"] = self.local_bytes(p.grad for p in params)

    def _post(self, optimizer, args, kwargs) -> None:
        tensors = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        self.record["optim_bytes"] = self.local_bytes(tensors)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def probed_worker(run_cfg: str, probe: dict) -> dict:
    """One rank: install the probes named in `probe`, run nanodist's own worker, write what was seen.

    probe keys: out (dir), first/last (timed steps), activations (list of step indices to count),
    state (bool).
    """
    from nanodist.parallel.process_group import rank_info
    from nanodist.launch.local import worker

    rank = rank_info()
    probes = []
    clock = StepClock(probe["first"], probe["last"], sync_cuda=probe.get("sync_cuda", torch.cuda.is_available())) if "first" in probe else None
    acts = ActivationProbe() if probe.get("activations") else None
    state = StateProbe() if probe.get("state") else None
    step = {"i": 0}

    if acts is not None:
        acts.enabled = 0 in probe["activations"]

        def on_step(optimizer, args, kwargs):
            acts.end_step()
            step["i"] += 1
            acts.enabled = step["i"] in probe["activations"]

        probes.append(optimizer_hooks.register_optimizer_step_post_hook(on_step))
    try:
        summary = worker(run_cfg, rank)
    finally:
        for h in probes:
            h.remove()
        for p in (clock, acts, state):
            if p is not None:
                p.close()
    seen = {"rank": rank.rank, "world_size": rank.world_size}
    if clock is not None:
        seen.update(clock.figures())
    if acts is not None:
        seen["activation_bytes_per_step"] = acts.per_step
        seen["activation_bytes"] = max(acts.per_step) if acts.per_step else None
    if state is not None:
        seen.update(state.record)
    if torch.cuda.is_available():
        seen["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    save_json(Path(probe["out"]) / f"rank{rank.rank}.json", seen)
    return summary or {}


def run_probed(overrides: list[str], out_dir: Path, probe: dict, quiet: bool = True, checkpoints: bool = False) -> list[dict]:
    """Compose, validate and prepare as launch.py does, then start the mesh's ranks with probes installed.

    Returns each rank's probe record (rank order). The run's own files (summary.json, metrics.jsonl,
    rank*.log) land in out_dir/run. Checkpoint saving is turned off unless asked for (it is not
    what these benchmarks measure, and costs seconds per run here).
    """
    from omegaconf import OmegaConf

    from nanodist.config import validate
    from nanodist.launch.local import prepare_data
    from nanodist.parallel.dims import ParallelDims

    run_dir = out_dir / "run"
    cfg = compose(overrides, str(run_dir))
    if not checkpoints and has_key(cfg, "checkpoint.enabled") and not any(o.startswith("checkpoint.enabled=") for o in overrides):
        cfg = compose([*overrides, "checkpoint.enabled=false"], str(run_dir))
    validate(cfg, None)
    prepare_data(cfg.data)
    run_cfg = OmegaConf.to_yaml(cfg, resolve=True)
    nproc = ParallelDims.from_config(cfg).world_size
    probe = {**probe, "out": str(out_dir / "probe")}
    sink = open(os.devnull, "w") if quiet else sys.stdout
    with contextlib.redirect_stdout(sink):
        if nproc == 1:
            probed_worker(run_cfg, probe)
        else:
            from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
            from torch.distributed.launcher.api import elastic_launch

            from nanodist.launch.local import local_launch_config

            logs = DefaultLogsSpecs(log_dir=str(out_dir / "elastic"), redirects=Std.OUT if quiet else Std.NONE)
            config = local_launch_config(nproc, max_restarts=0, logs_specs=logs)
            elastic_launch(config, probed_worker)(run_cfg, probe)
    return [json.loads((out_dir / "probe" / f"rank{r}.json").read_text()) for r in range(nproc)]


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    metrics_path = run_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    return summary, metrics


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)
