"""What the benchmarks share: compose nanodist's config, launch it through the product, read what each rank saw.

A benchmark runs the product as a user does (Hydra's config tree, `nanodist.launch.local.launch`:
validation, data preparation, ranks started by torch's elastic launcher) and measures it through
the Trainer's callback seam: `Probe` times the steps and keeps the figures of the trainer's own
meters (per-rank state bytes, the SavedActivations peak), and each rank writes them to
`<work>/probe/rank<r>.json`, so a multi-rank run reports every rank, not only rank 0's summary.
The ranks unpickle `Probe` by this module's name: the scripts put benchmarks/ on sys.path first.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

# The machine is shared and small: one intra-op thread per process (set OMP_NUM_THREADS to change it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before us
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NANODIST_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))

from nanodist.train.callbacks import Callback  # noqa: E402

RESULTS = Path(os.environ.get("NANODIST_BENCH_RESULTS", ROOT / "benchmarks" / "results"))  # raw JSON of each benchmark
MEMORY_KEYS = ("param_bytes", "grad_bytes", "optim_bytes", "activation_bytes", "peak_memory_bytes")
DEVNULL = open(os.devnull, "w")  # kept open: a rank run in-process logs to whatever stdout was at its start
# No evaluation, sampling or checkpoints: none of them is part of a training step.
STEP_ONLY = ["train.eval_interval=0", "train.sample_tokens=0", "checkpoint.enabled=false"]


def compose(overrides: list[str], output_dir: str):
    """nanodist's config as `python launch.py overrides...` composes it, writing into output_dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nanodist.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])


class Probe(Callback):
    """Step times over a window, and what the trainer's meters measured, per rank.

    Steps `first`+1 .. `last` are timed, each from the end of one step to the end of the next, so
    everything the loop does between two updates counts. On CUDA the device is synchronised only at
    the window's edges, so the window keeps whatever CPU/GPU overlap the loop has; the figure is the
    window's mean wall time. On CPU every step is synchronous and the figure is the median step's
    process CPU time, which other tenants of a shared machine do not inflate (wall figures are kept).
    The reference loop of overhead.py calls `stamp` itself.
    """

    def __init__(self, first: int, last: int, sync_cuda: bool = False, out_dir: Optional[Path] = None):
        self.first, self.last, self.sync_cuda, self.out_dir = first, last, sync_cuda, out_dir
        self.wall: dict[int, float] = {}
        self.cpu: dict[int, float] = {}

    def stamp(self, step: int) -> None:
        if self.first <= step <= self.last:
            if self.sync_cuda and step in (self.first, self.last):
                torch.cuda.synchronize()
            self.wall[step], self.cpu[step] = time.perf_counter(), time.process_time()

    def on_step_end(self, trainer, record: dict) -> None:
        self.stamp(record["step"])

    def figures(self) -> dict:
        if self.first not in self.wall or self.last not in self.wall:
            return {}
        n, keys = self.last - self.first, sorted(self.wall)
        out = {}
        for name, stamps in (("wall", self.wall), ("cpu", self.cpu)):
            out[f"{name}_mean"] = (stamps[self.last] - stamps[self.first]) / n
            out[f"{name}_median"] = statistics.median(stamps[b] - stamps[a] for a, b in zip(keys, keys[1:]))
        out["seconds_per_step"] = out["wall_mean"] if self.sync_cuda else out["cpu_median"]
        return out

    def on_fit_end(self, trainer, summary: dict) -> None:
        seen = {"rank": trainer.rank.rank, **self.figures(), **{k: summary.get(k) for k in MEMORY_KEYS}}
        save_json(Path(self.out_dir) / f"rank{trainer.rank.rank}.json", seen)


@contextlib.contextmanager
def quiet():
    """The ranks' console output (progress lines, data preparation) off the screen: the tables are the
    output, and rank*.log in the run dir keeps it. fd 1 too, for ranks in other processes."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(DEVNULL.fileno(), 1)
    try:
        with contextlib.redirect_stdout(DEVNULL):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def run(overrides: list[str], work: Path, steps: int, warmup: int, sync_cuda: bool = False,
        callbacks: tuple = ()) -> tuple[dict, list[dict]]:
    """One run through `launch`, `warmup` untimed steps then `steps` timed ones: rank 0's summary and
    every rank's Probe figures (rank order). The run's files land in work/run."""
    from nanodist.launch.local import launch

    cfg = compose([*STEP_ONLY, *overrides, f"train.max_steps={warmup + steps}"], str(work / "run"))
    probe = Probe(warmup - 1, warmup + steps - 1, sync_cuda, work / "probe")
    with quiet():
        summary = launch(cfg, [probe, *callbacks])
    files = sorted((work / "probe").glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    return summary, [json.loads(p.read_text()) for p in files]


def tokens_per_step(cfg) -> int:
    from nanodist.config import seq_len_of

    return cfg.train.batch_size * seq_len_of(cfg)


def alternate(i: int, a, b) -> tuple:
    """(a, b) in even rounds, (b, a) in odd ones: A B B A ..., so drift of a shared machine hits both alike."""
    return (a, b) if i % 2 == 0 else (b, a)


def run_job(index: int, name: str, overrides: list[str], sweep: Path, timeout: int) -> dict:
    """`python launch.py overrides...` as a user types it, into sweep/NN_name (a job dir the sweep report reads)."""
    job_dir = sweep / f"{index:02d}_{name.replace('(', '').replace(')', '')}"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, str(ROOT / "launch.py"), *overrides, f"hydra.run.dir={job_dir}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out = "timeout", e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "console.txt").write_text(out)
    return {"name": name, "dir": str(job_dir), "exit": code, "seconds": round(time.perf_counter() - start, 1),
            "command": "python launch.py " + " ".join(overrides)}


def mean_after_first(records: list[dict], key: str) -> Optional[float]:
    """Mean of a per-step metric over the logged steps after the first (which holds warm-up)."""
    values = [r[key] for r in records[1:] if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def machine() -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def write_results(path: Path, data: dict) -> None:
    """A benchmark's raw figures, with the machine they were measured on."""
    save_json(path, {**data, "machine": machine()})
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
