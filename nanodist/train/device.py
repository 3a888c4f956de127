"""Per-device settings of a training run: TF32 matmuls, the attention kernel, and host memory."""

from __future__ import annotations

import contextlib
import resource

import torch
import torch.distributed as dist

SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
    "cudnn": "CUDNN_ATTENTION",
}


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 tensor-core matmuls for fp32 on GPU (a ~10-bit mantissa, as every large run uses); no-op on CPU."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def attention_backend(name: str):
    """A context pinning scaled_dot_product_attention to one kernel; "auto" leaves PyTorch's choice.

    A kernel the device or inputs cannot use fails loudly at the first forward rather than falling back.
    """
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[name]))


def peak_host_memory(device: torch.device) -> int:
    """The largest resident set any rank has had so far (bytes): what a machine's RAM must hold per rank."""
    peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, device=device)
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return int(peak.item())
