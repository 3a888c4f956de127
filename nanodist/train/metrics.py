"""What a run reports: one record per logged step in metrics.jsonl, a progress line, and the sinks
(wandb, tensorboard) that mirror the same records when chosen; rank 0 only.

metrics.jsonl and summary.json are JSON that any reader parses: Python's json writes NaN and
Infinity, which JSON has not, so a diverged loss is written as null, its reason beside it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf


class MetricsLog:
    """metrics.jsonl + console progress line + optional wandb/tensorboard, all on rank 0 only."""

    def __init__(self, output_dir: str, cfg, max_steps: int, enabled: bool, print_fn=print, first_step: int = 0):
        """`first_step`: where this attempt starts (a resumed run's checkpoint step)."""
        self.enabled, self.max_steps, self.print = enabled, max_steps, print_fn
        self.start = time.perf_counter()
        path = Path(output_dir) / "metrics.jsonl"
        if enabled:
            drop_steps_from(path, first_step)
        self.file = open(path, "a") if enabled else None
        self.wandb_run = self.tensorboard = None
        if enabled and cfg.logger.name == "wandb":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=cfg.logger.project,
                group=cfg.logger.group,
                name=Path(output_dir).name,
                dir=output_dir,
                mode=cfg.logger.mode,
                config=_plain(cfg),
            )
        elif enabled and cfg.logger.name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"elapsed": round(time.perf_counter() - self.start, 3), **record}
        self.file.write(to_json(record) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(record, step=record["step"])
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])
        if "loss" in record:
            self.print(self._progress_line(record))

    def _progress_line(self, r: dict) -> str:
        step = r["step"]
        done = (step + 1) / max(1, self.max_steps)
        eta = r["elapsed"] * (1 - done) / done if done > 0 else 0.0
        parts = [f"step {step + 1}/{self.max_steps}", f"loss {r['loss']:.4f}"]
        if r.get("val_loss") is not None:
            parts.append(f"val {r['val_loss']:.4f}")
        parts.append(f"{r['tokens_per_s']:,.0f} tok/s")
        if r.get("mfu") is not None:
            parts.append(f"mfu {100 * r['mfu']:.1f}%")
        parts.append(f"eta {_duration(eta)}")
        return " | ".join(parts)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def finite_only(record: dict) -> dict:
    """`record` with every NaN or infinity replaced by null, and under "non_finite" what each was
    ({"loss": "nan"}; a nested value by its dotted key), so a reader still sees why it is missing."""
    reasons: dict[str, str] = {}

    def clean(value, key: str):
        if isinstance(value, float) and not math.isfinite(value):
            reasons[key] = str(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{key}.{i}") for i, v in enumerate(value)]
        return value

    cleaned = clean(record, "")
    return {**cleaned, "non_finite": reasons} if reasons else cleaned


def to_json(record: dict, indent: Optional[int] = None) -> str:
    """`record` as strict JSON (see `finite_only`); json refuses, rather than writes, anything else."""
    return json.dumps(finite_only(record), indent=indent, allow_nan=False)


def with_non_finite(record: dict) -> dict:
    """`finite_only` undone: each value named under "non_finite" back as the float it was (a resumed
    run's state then holds the same NaN its checkpoint was saved with)."""
    reasons = record.get("non_finite", {})
    restored = {k: v for k, v in record.items() if k != "non_finite"}
    for key, value in reasons.items():
        *parents, last = key.split(".")
        container = restored
        for part in parents:
            container = container[int(part)] if isinstance(container, list) else container[part]
        container[int(last) if isinstance(container, list) else last] = float(value)
    return restored


def drop_steps_from(path: Path, first_step: int) -> None:
    """Forget the records of steps >= `first_step`: a killed attempt logged them after its last
    checkpoint, and the resumed run is about to log them again, so each step keeps one record."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _step_of(line) < first_step]
    if len(kept) < len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


def _step_of(line: str) -> float:
    """A record's step; a line the killed attempt left half-written counts as past every step."""
    try:
        return json.loads(line)["step"]
    except json.JSONDecodeError:
        return float("inf")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
