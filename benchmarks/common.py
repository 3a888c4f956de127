"""What the benchmarks share: compose nanodist's config, launch it through the product, read what each rank saw.

Runs go through `nanodist.launch.local.launch` and are measured through the Trainer's callbacks
(`Probe`). Ranks unpickle `Probe` by this module's name, from the sys.path they inherit, whose
first entry is benchmarks/ when a script runs as `python benchmarks/<script>.py`.
"""

import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # a small shared machine: one intra-op thread per process
import torch  # noqa: E402
from hydra import compose as hydra_compose  # noqa: E402
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from nanodist.config import register_configs, seq_len_of  # noqa: E402
from nanodist.launch.local import launch  # noqa: E402
from nanodist.tools.collectives import CollectiveBytes  # noqa: E402
from nanodist.train.callbacks import Callback  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before us
ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NANODIST_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
RESULTS = Path(os.environ.get("NANODIST_BENCH_RESULTS", ROOT / "benchmarks" / "results"))  # each benchmark's raw JSON
STEP_ONLY = ["train.eval_interval=0", "train.sample_tokens=0", "checkpoint.enabled=false"]  # none is part of a step
DEVNULL = open(os.devnull, "w")  # never closed: a rank run in-process keeps logging to the stdout it started with


def compose(overrides: list[str], output_dir: str):
    """nanodist's config as `python launch.py overrides...` composes it, writing into output_dir."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])


class Probe(Callback):
    """Steps `first`+1 .. `last` timed from the end of one update to the end of the next, and the trainer's meters.

    CUDA: the window's mean wall time, synchronised at its edges only (the loop keeps its CPU/GPU overlap).
    CPU: the median step's process CPU time, which other tenants of a shared machine do not inflate.
    """

    def __init__(self, first: int, last: int, sync_cuda: bool = False, out_dir: Path | None = None):
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
        n, keys, out = self.last - self.first, sorted(self.wall), {}
        for name, at in (("wall", self.wall), ("cpu", self.cpu)):
            out[f"{name}_mean"] = (at[self.last] - at[self.first]) / n
            out[f"{name}_median"] = statistics.median(at[b] - at[a] for a, b in itertools.pairwise(keys))
        return {**out, "seconds_per_step": out["wall_mean"] if self.sync_cuda else out["cpu_median"]}

    def on_fit_end(self, trainer, summary: dict) -> None:
        seen = {"rank": trainer.rank.rank, **self.figures(), **{k: v for k, v in summary.items() if k.endswith("_bytes")}}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.rank.rank}.json").write_text(json.dumps(seen))


class CommCounter(Callback):
    """The collectives this rank issues during step `step` (by op: how many calls; by kind and group:
    how many payload bytes), written to out_dir/rank<r>.json."""

    def __init__(self, step: int, out_dir: Path):
        self.step, self.out_dir, self.mode = step, out_dir, None

    def on_step_start(self, trainer, step: int) -> None:
        if step == self.step:
            self.mode = CollectiveBytes(trainer.rank.world_size)
            self.mode.__enter__()

    def on_step_end(self, trainer, record: dict) -> None:
        if record["step"] == self.step:
            self.mode.__exit__(None, None, None)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            seen = {"calls": self.mode.calls, "bytes": self.mode.bytes}
            (self.out_dir / f"rank{trainer.rank.rank}.json").write_text(json.dumps(seen))


@contextlib.contextmanager
def quiet():
    """The ranks' console output (progress lines, data preparation) off the screen, fd 1 included for
    ranks in other processes: the tables are the output, and rank*.log in the run dir keeps the rest."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(DEVNULL.fileno(), 1)
    try:
        with contextlib.redirect_stdout(DEVNULL):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def run(overrides: list[str], work: Path, steps: int, warmup: int, sync_cuda: bool = False, callbacks=()) -> tuple[dict, list[dict]]:
    """`warmup` untimed then `steps` timed steps into work/run: rank 0's summary, and every rank's Probe figures."""
    cfg = compose([*STEP_ONLY, *overrides, f"train.max_steps={warmup + steps}"], str(work / "run"))
    with quiet():
        summary = launch(cfg, [Probe(warmup - 1, warmup + steps - 1, sync_cuda, work / "probe"), *callbacks])
    files = sorted((work / "probe").glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    return summary, [json.loads(p.read_text()) for p in files]


def run_job(index: int, name: str, overrides: list[str], sweep: Path, timeout: int) -> dict:
    """`python launch.py overrides...` as a user types it (its own process: host memory peaks stay its own), into sweep/NN_name."""
    job_dir = sweep / f"{index:02d}_{name.replace('(', '').replace(')', '')}"
    cmd, start = [sys.executable, str(ROOT / "launch.py"), *overrides, f"hydra.run.dir={job_dir}"], time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out = "timeout", e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "console.txt").write_text(out)
    return {"name": name, "dir": str(job_dir), "exit": code, "seconds": round(time.perf_counter() - start, 1)}


def tokens_per_step(cfg) -> int:
    return cfg.train.batch_size * seq_len_of(cfg)


def alternate(i: int, a, b) -> tuple:
    """(a, b) in even rounds, (b, a) in odd ones: A B B A ..., so a shared machine's drift hits both alike."""
    return (a, b) if i % 2 == 0 else (b, a)


def machine() -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads()}
    return {**info, "gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda} if torch.cuda.is_available() else info


def write_results(path: Path, data: dict) -> None:
    """A benchmark's raw figures, with the machine they were measured on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "machine": machine()}, indent=1, default=str) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
