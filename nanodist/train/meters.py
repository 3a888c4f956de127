"""Meters of one rank: peak FLOP/s for MFU, the bytes of its training state, and its activations.

One activation meter serves training, the dry run and the benchmarks, so every "activation bytes"
figure nanodist prints is counted the same way.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.distributed.tensor import DTensor

from nanodist.parallel.tensors import local_bytes, unique_parameters

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


def state_bytes(modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Per-rank bytes of parameters, gradients and optimizer state (tied parameters counted once)."""
    params = unique_parameters(modules)
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


def memory_record(state: dict, activation_bytes: Optional[int], device: torch.device) -> dict:
    """Per-rank memory: parameter, gradient and optimizer bytes, the measured activation peak, and
    on GPU the allocator's true peak (which also holds temporaries, buffers and fragmentation)."""
    record = {**state, "activation_bytes": activation_bytes}
    if device.type == "cuda":
        record["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return record
