"""What a run reports: throughput, MFU, memory per rank, and the sinks that record them.

Every run writes metrics.jsonl (one JSON object per logged step) and prints one progress line per
log interval; wandb or tensorboard mirror the same records when chosen.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.distributed.tensor import DTensor

# Dense bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 HBM3": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device) -> Optional[float]:
    """Per-device peak for MFU; None on CPU or an unknown GPU (then only achieved FLOP/s is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds of the given tensors (a DTensor counts only its local shard)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def state_bytes(modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Per-rank bytes of parameters, gradients and optimizer state (tied parameters counted once)."""
    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    optim_tensors = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return {
        "param_bytes": local_bytes(params),
        "grad_bytes": local_bytes(p.grad for p in params),
        "optim_bytes": local_bytes(optim_tensors),
    }


class SavedActivations:
    """Measured peak bytes of the activations autograd keeps for backward, on this rank.

    While active, every tensor autograd saves passes through a saved-tensor hook. It is counted once
    per storage (q, k and v are views of one QKV output), parameters are left out (param_bytes has
    them), and its bytes are given back when autograd releases it in backward. `peak` is the most
    held at once: the end of the forward for a plain step, the microbatches in flight for a
    pipeline schedule. A checkpointed block saves only its input, so activation checkpointing shows
    here as a lower peak. Temporaries that die inside the forward are not counted. On meta tensors
    (the dry run) storages are told apart by identity, as they have no addresses.
    """

    def __init__(self):
        self.current = self.peak = 0
        self.held: dict[int, list[int]] = {}  # storage key -> [references, bytes]
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def __enter__(self) -> "SavedActivations":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor):
        base = tensor if tensor._base is None else tensor._base
        if base.is_leaf and base.requires_grad:
            return tensor
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        if isinstance(local, AsyncCollectiveTensor):  # a collective's result not yet waited on
            local = local.elem
        key = _storage_key(local)
        entry = self.held.setdefault(key, [0, local.untyped_storage().nbytes()])
        if entry[0] == 0:
            self.current += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        return _Held(self, key, tensor)

    def release(self, key: int) -> None:
        entry = self.held[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.held[key]


def _storage_key(tensor: torch.Tensor) -> int:
    """Equal for tensors that share memory: the storage's address, or for meta and fake tensors
    (which have none) the identity of the tensor their views were taken from."""
    if tensor.is_meta or isinstance(tensor, FakeTensor):
        return id(tensor if tensor._base is None else tensor._base)
    return tensor.untyped_storage().data_ptr()


class _Held:
    """A saved tensor as autograd keeps it; when autograd drops it, its bytes stop counting."""

    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: SavedActivations, key: int, tensor: torch.Tensor):
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self):
        self.meter.release(self.key)


def _unpack(packed):
    return packed.tensor if isinstance(packed, _Held) else packed


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
        self.file.write(json.dumps(record) + "\n")
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
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
