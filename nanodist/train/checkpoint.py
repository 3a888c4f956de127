"""Checkpoints: save and load model + optimizer with torch.distributed.checkpoint (DCP), in any layout.

A checkpoint is a dict keyed by parameter name. FSDP2, TP and replicate keep the plain model's
names, and pipeline stages keep the full model's names too, so every layout writes and reads the
same keys; DCP then gives each rank its shard (or the whole tensor) of every entry, whatever layout
wrote it. That one fact is what makes resume exact and resharding free.

On disk, in <output_dir>/checkpoints/:

    step_0000200.tmp/     being written; nothing reads it, a failed save or the next start deletes it
    step_0000100/         complete: renamed from .tmp by rank 0 once every rank's files are in
      .metadata, *.distcp   DCP: "model.<name>" and "optim.<name>.<exp_avg|exp_avg_sq|step>"
      rng_rank<r>.pt        rank r's RNG states (restored only under the same layout)
      meta.json             written last: step, the Trainer's state, model shape, tokenizer, each
                            file's size and SHA-256

The learning rate is a function of the step, so the step is all the schedule needs.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from nanodist.config import ConfigError
from nanodist.data.files import checksum
from nanodist.model import GPT, GPTConfig
from nanodist.parallel.reference.layout import Layout
from nanodist.train.checkpoint_state import NativeLayout, init_optimizer_state
from nanodist.train.metrics import to_json, with_non_finite
from nanodist.train.rng import rng_state, set_rng_state

log = logging.getLogger("nanodist")
# A single process saves and loads without a process group (no_dist) on purpose; DCP warns each time.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

META = "meta.json"
STEP_DIR = re.compile(r"step_(\d+)")
# The fields of GPTConfig that decide tensor shapes (dropout does not).
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "tie_embeddings", "true_vocab_size")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used by this run; the message is one sentence saying why."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def checkpoint_dirs(path: Path) -> list[Path]:
    """Checkpoints at `path`, newest first: a step dir itself, or those in a checkpoints dir or run dir."""
    if (path / META).exists():
        return [path]
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not path.is_dir():
        return []
    found = [d for d in path.iterdir() if d.is_dir() and STEP_DIR.fullmatch(d.name)]
    return sorted(found, key=lambda d: int(STEP_DIR.fullmatch(d.name).group(1)), reverse=True)


def read_checkpoint_meta(path: Path) -> dict:
    """meta.json as saved: strict JSON on disk (a NaN loss is null there, named under "non_finite"), floats here."""
    return with_non_finite(json.loads((Path(path) / META).read_text()))


def problem(path: Path, checksums: bool = True) -> Optional[str]:
    """Why the checkpoint at `path` is incomplete or damaged (a missing, resized or altered file), or None.

    meta.json, written last, records every file's size and SHA-256. Sizes catch a truncated or
    half-copied checkpoint for free; the checksums (one read of every file, ~1 GB/s) catch damage
    that keeps sizes, which DCP itself does not: a flipped byte inside a tensor loads silently.
    Checkpoints written before checksums were recorded are checked by size only.
    """
    try:
        meta = read_checkpoint_meta(path)
    except (OSError, ValueError):
        return f"its {META} is missing or unreadable"
    digests = meta.get("sha256", {}) if checksums else {}
    for name, size in meta["files"].items():
        file = path / name
        if not file.exists():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes instead of {size}"
        if name in digests and checksum(file) != digests[name]:
            return f"{name} does not match its SHA-256 in {META}"
    return None


def describe(err: BaseException) -> str:
    """The first failed rank's underlying error in one line (DCP's own message only lists the ranks)."""
    if isinstance(err, CheckpointException) and err.failures:
        rank = min(err.failures)
        return f"rank {rank}: {describe(err.failures[rank][0])}"
    lines = str(err).strip().splitlines() or [""]
    return f"{type(err).__name__}: {lines[-1]}"[:300]


def disk_full(root: Path, previous: Optional[Path]) -> str:
    """"; the disk is full (...)" when what is free under `root` cannot hold a checkpoint as big as `previous`.

    A full disk does not always say so: torch's writer may fail with "unexpected pos 704 vs 598"
    where the OS said "No space left on device". Measured after the partial files are removed,
    so every rank that failed sees the same.
    """
    try:
        needed = sum(read_checkpoint_meta(previous)["files"].values()) if previous is not None else 0
    except (OSError, ValueError, KeyError):
        return ""
    free = shutil.disk_usage(root).free
    return f"; the disk is full ({free:,} bytes free, a checkpoint takes {needed:,})" if free < needed else ""


def file_writer(path: Path, step: int) -> FileSystemWriter:
    """DCP's writer of checkpoint step_`step` into `path`: its plain file system writer."""
    return FileSystemWriter(path)


def shape_of(config: GPTConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k in SHAPE_FIELDS}


def check_shape(path: Path, saved: dict, wanted: dict) -> None:
    """Refuse a checkpoint of another model shape in one sentence, before DCP fails in a long one."""
    diff = {k: (saved.get(k), v) for k, v in wanted.items() if k in saved and saved[k] != v}
    if diff:
        there = ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
        here = ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {path} holds a different model ({there}) than this run builds ({here}); "
            f"resume with the model config it was trained with, or start without it."
        )


def check_resume_from(path: str, model_cfg) -> None:
    """The launcher's check of checkpoint.resume_from, before any rank starts: it exists and fits the model.

    The vocabulary size may come from the dataset (and padding), so it is checked on load instead.
    """
    # Sizes only: rank 0 verifies the checksums of the one it loads, and reading every file twice
    # would double the start-up cost of a large checkpoint.
    usable = [p for p in checkpoint_dirs(Path(path)) if problem(p, checksums=False) is None]
    if not usable:
        raise CheckpointError(f"checkpoint.resume_from={path} holds no complete checkpoint; point it at a step_N dir or a run dir.")
    wanted = {k: model_cfg[k] for k in SHAPE_FIELDS if k not in ("vocab_size", "true_vocab_size")}
    check_shape(usable[0], read_checkpoint_meta(usable[0])["model"], wanted)


class Checkpointer:
    """Saves this rank's share of the training state every `interval` steps, and resumes from the newest.

    `info` is what every meta.json carries besides the step: the model shape (checked on load),
    the layout (RNG states are restored only under the same one) and the tokenizer (for sampling).
    Every rank makes the same calls in the same order; DCP's collectives run on a gloo group of
    their own, so an async save's background thread never interleaves with training collectives.
    """

    def __init__(self, root: Path, parts: list[nn.Module], optimizer: torch.optim.Optimizer, info: dict,
                 device: torch.device, interval: Optional[int] = 0, keep_last: int = 0, async_save: bool = False,
                 layout: Optional[Layout] = None):
        """`interval`: save every that many steps (0: only at the end; None: never save, only resume).
        `layout`: a reference layout's state conversion (None: the native layouts', DTensor-aware)."""
        self.root, self.parts, self.optimizer, self.info, self.device = Path(root), parts, optimizer, info, device
        self.layout = layout if layout is not None else NativeLayout(parts)
        self.interval, self.keep_last, self.async_save = interval, keep_last, async_save
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.group = dist.new_group(backend="gloo") if self.distributed else None
        self.latest: Optional[Path] = None  # the checkpoint this run saved or resumed from last
        self.pending: Optional[threading.Thread] = None
        self.storage_writer = file_writer  # DCP's writer for a save; tests put a failing one here (train.faults)
        if self.rank == 0:
            for stale in self.root.glob("step_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)  # a save cut short by a crash
        if self.distributed:
            dist.barrier(group=self.group)

    @classmethod
    def from_config(cls, cfg, parts: list[nn.Module], optimizer: torch.optim.Optimizer, config: GPTConfig,
                    data_meta: dict, layout_name: dict, device: torch.device, layout: Optional[Layout] = None) -> "Checkpointer":
        """The run's checkpointer, in <output_dir>/checkpoints; `layout_name` names the parallel layout."""
        c = cfg.checkpoint
        info = {
            "model": shape_of(config),
            "layout": layout_name,
            "tokenizer": {**data_meta, "tokenizer_file": cfg.data.tokenizer_file},
        }
        return cls(Path(cfg.output_dir) / "checkpoints", parts, optimizer, info, device,
                   c.interval if c.enabled else None, c.keep_last, c.async_save, layout)

    # ---- saving ----

    def maybe_save(self, step: int, trainer_state: dict, final: bool = False) -> Optional[Path]:
        """Save after `step` steps when the interval says so, or at the end of the run; the dir, if saved."""
        if self.interval is None:
            return None
        due = final or (self.interval > 0 and step % self.interval == 0)
        if due and step_dir(self.root, step) != self.latest:
            self.save(step, trainer_state)
            return self.latest
        return None

    def save(self, step: int, trainer_state: dict) -> None:
        """Write into step_N.tmp/; rank 0 renames it to step_N/ once DCP reports every rank's files written.

        A write that fails (a full disk) leaves nothing behind: the .tmp goes and the newest complete
        checkpoint stays. A synchronous save then stops the run in one sentence (CheckpointError);
        a background one logs it and training goes on (the next save tries again).
        """
        self.wait()  # one checkpoint in flight at a time
        tmp, previous = step_dir(self.root, step).with_suffix(".tmp"), self.latest
        meta = {"step": step, "trainer": trainer_state, **self.info, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        state = self._state()
        start = time.perf_counter()
        self.latest = step_dir(self.root, step)
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            torch.save(rng_state(self.device), tmp / f"rng_rank{self.rank}.pt")
            writer = self.storage_writer(tmp, step)
            if self.async_save:
                # Staging copies the state to CPU memory before returning, so training may go on at once.
                future = dcp.async_save(state, checkpoint_id=tmp, storage_writer=writer, process_group=self.group,
                                        no_dist=not self.distributed)
                self.pending = threading.Thread(target=self._finish_async, args=(tmp, meta, start, future, previous),
                                                daemon=True)
                self.pending.start()
            else:
                dcp.save(state, checkpoint_id=tmp, storage_writer=writer, process_group=self.group,
                         no_dist=not self.distributed)
                self._finish(tmp, meta, start)
        except (CheckpointException, OSError) as err:  # CheckpointException: every rank hears of any rank's error
            self.latest = previous
            raise CheckpointError(self._discard(tmp, err, previous)) from None

    def wait(self) -> None:
        """Block until the checkpoint being written in the background (if any) is complete."""
        if self.pending is not None:
            self.pending.join()
            self.pending = None

    def _discard(self, tmp: Path, err: BaseException, previous: Optional[Path]) -> str:
        """Remove what a failed save wrote; the one-sentence account of it (short: it ends a one-line error)."""
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"{previous.name} stays the newest" if previous is not None else "none was saved before"
        return (f"checkpoint {tmp.stem} was not written ({describe(err)}){disk_full(self.root, previous)}; "
                f"its files are removed and {kept} in {self.root}.")

    def _finish_async(self, tmp: Path, meta: dict, start: float, future, previous: Optional[Path]) -> None:
        """The background half of an async save; a failure must not kill training."""
        try:
            future.result()
            self._finish(tmp, meta, start)
        except (CheckpointException, Exception) as err:
            self.latest = previous
            log.warning(f"{self._discard(tmp, err, previous)} Training goes on; the next save tries again.")

    def _finish(self, tmp: Path, meta: dict, start: float) -> None:
        """Rank 0 completes the checkpoint: meta.json with every file's size and SHA-256, then the rename."""
        if self.rank != 0:
            return
        files = [f for f in sorted(tmp.iterdir()) if f.name != META]
        hashing = time.perf_counter()  # an async save hashes here, in its background thread
        meta["files"], meta["sha256"] = {f.name: f.stat().st_size for f in files}, {f.name: checksum(f) for f in files}
        hashing = time.perf_counter() - hashing
        (tmp / META).write_text(to_json(meta, indent=1))
        final = tmp.with_suffix("")
        if final.exists():  # an unusable checkpoint of the same step, skipped on resume
            shutil.rmtree(final)
        tmp.rename(final)
        log.info(f"saved checkpoint {final} in {time.perf_counter() - start:.2f}s ({hashing:.3f}s of it checksums)")
        self._prune()

    def _prune(self) -> None:
        if self.keep_last > 0:
            for old in checkpoint_dirs(self.root)[self.keep_last:]:
                shutil.rmtree(old, ignore_errors=True)

    # ---- loading ----

    def resume(self, resume_from: Optional[str] = None) -> Optional[dict]:
        """Load the newest usable checkpoint of this run, else of `resume_from`; returns its meta, or None.

        This run's own checkpoints come first: after a crash, an elastic restart or a requeue they
        are further along than the one the run started from. An incomplete or unreadable checkpoint
        is skipped with a warning; one of another model shape stops the run.
        """
        candidates = self._candidates(resume_from)
        for path, reason in candidates:
            if reason is None:  # sizes fit: now the checksums, of this one only (one read of every file)
                reason = self._on_rank0(lambda: problem(path))
            if reason is None:
                meta = read_checkpoint_meta(path)
                check_shape(path, meta["model"], self.info["model"])
                reason = self._load(path, meta)
            if reason is None:
                self.latest = path
                log.info(f"resumed from {path} (step {meta['step']})")
                return meta
            log.warning(f"checkpoint {path} is unusable ({reason}); falling back to the previous one.")
        if candidates:
            raise CheckpointError(f"no usable checkpoint among {[str(p) for p, _ in candidates]}; see the warnings above.")
        return None

    def _candidates(self, resume_from: Optional[str]) -> list[tuple[Path, Optional[str]]]:
        """(checkpoint, problem by sizes) pairs, newest first, as rank 0 sees them: every rank tries the same ones."""

        def listed():
            found = [(p, problem(p, checksums=False)) for p in checkpoint_dirs(self.root)]
            if not resume_from:
                return found
            others = checkpoint_dirs(Path(resume_from))
            if not others:
                return CheckpointError(f"checkpoint.resume_from={resume_from} holds no checkpoint.")
            return found + [(p, problem(p, checksums=False)) for p in others]

        found = self._on_rank0(listed)
        if isinstance(found, CheckpointError):
            raise found
        return found

    def _on_rank0(self, compute):
        """`compute()`'s result, computed by rank 0 alone (one reader of the shared files) and given to every rank."""
        box = [compute() if self.rank == 0 else None]
        if self.distributed:
            dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def _load(self, path: Path, meta: dict) -> Optional[str]:
        """Load model, optimizer and (same layout only) RNG states from `path`; the reason it failed, or None."""
        init_optimizer_state(self.optimizer)
        state = self._state()
        try:
            dcp.load(state, checkpoint_id=path, process_group=self.group, no_dist=not self.distributed)
        except CheckpointException as err:  # DCP gathers every rank's error: all ranks agree that it failed
            return describe(err)
        self.layout.load_state(state["model"], state["optim"], self.optimizer)
        if meta.get("layout") == self.info["layout"]:
            set_rng_state(torch.load(path / f"rng_rank{self.rank}.pt", weights_only=True), self.device)
        else:
            log.info(f"RNG states not restored: {path} was saved under another layout ({meta.get('layout')}).")
        return None

    def _state(self) -> dict:
        """What DCP writes and reads: the model's state and the optimizer's, under the full model's names."""
        return {"model": self.layout.model_state(), "optim": self.layout.optim_state(self.optimizer)}


def load_model(path: Path) -> tuple[GPT, dict]:
    """The whole model of the newest usable checkpoint at `path` (any layout wrote it) in one process, with its meta.

    DCP reads every shard into a freshly built plain GPT; no process group is needed. As a resume
    does, it verifies the files against meta.json's sizes and SHA-256 first, and skips a damaged or
    incomplete checkpoint with a one-sentence warning for the previous one.
    """
    found = checkpoint_dirs(Path(path))
    if not found:
        raise CheckpointError(f"{path} holds no checkpoint.")
    for candidate in found:
        reason = problem(candidate)
        if reason is None:
            meta = read_checkpoint_meta(candidate)
            model = GPT(GPTConfig(**meta["model"]))
            state = model.state_dict()
            try:
                dcp.load({"model": state}, checkpoint_id=candidate, no_dist=True)
            except CheckpointException as err:
                reason = describe(err)
        if reason is None:
            model.load_state_dict(state)
            return model, meta
        log.warning(f"checkpoint {candidate} is unusable ({reason}); falling back to the previous one.")
    raise CheckpointError(f"no usable checkpoint among {[str(p) for p in found]}; see the warnings above.")
