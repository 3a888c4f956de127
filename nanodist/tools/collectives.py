"""Count the collectives a forward issues: which kind, over how many ranks, how many bytes.

The dry run's fake forward runs every collective training would (FSDP's all-gathers, TP's and
SP's redistributions, loss parallelism's reductions, CP's exchanges), so a dispatch mode that
watches the c10d ops sees each one with its real shapes, whichever strategy issued it. What it
records per collective is the full payload (the gathered tensor, the tensor before reduction),
keyed by kind, group size and the group's highest rank: the planner turns that into per-rank
traffic (a ring moves (n - 1) / n of the payload per rank, twice for an all-reduce) over the
bandwidth of the links the group spans (inside one node when its highest rank is).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import _resolve_process_group
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Op name (c10d's and the functional collectives') -> the kind the cost model knows.
KINDS = {
    "allgather_": "all_gather", "_allgather_base_": "all_gather", "all_gather_into_tensor": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather", "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter_": "reduce_scatter", "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter", "reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "allreduce_": "all_reduce", "all_reduce": "all_reduce", "allreduce_coalesced_": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "alltoall_": "all_to_all", "alltoall_base_": "all_to_all", "all_to_all_single": "all_to_all",
    "broadcast_": "broadcast", "broadcast": "broadcast",
    "send": "send", "recv_": "send",
}
NAMESPACES = ("c10d", "_c10d_functional")


def collective_key(kind: str, size: int, highest_rank: int) -> str:
    return f"{kind}:{size}:{highest_rank}"


def parse_key(key: str) -> tuple[str, int, int]:
    kind, size, highest = key.split(":")
    return kind, int(size), int(highest)


class CollectiveBytes(TorchDispatchMode):
    """While active, `bytes[collective_key(...)]` sums the payload of every collective dispatched,
    and `calls[op]` counts them by op name (how often, e.g. FSDP's reduce-scatters per step)."""

    def __init__(self, world_size: int):
        super().__init__()
        self.world_size = world_size
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func._schema.name.split("::")
        if packet[0] in NAMESPACES and packet[1] in KINDS:
            self.record(KINDS[packet[1]], packet[1], args)
        return func(*args, **(kwargs or {}))

    def record(self, kind: str, op: str, args) -> None:
        leaves = tree_leaves(args)
        boxed = next((a for a in leaves if isinstance(a, torch.ScriptObject) and is_process_group(a)), None)
        if boxed is not None:
            group = dist.ProcessGroup.unbox(boxed)
        else:  # the functional collectives name their group
            group = _resolve_process_group(next(a for a in reversed(leaves) if isinstance(a, str)))
        ranks = dist.get_process_group_ranks(group)
        payload = max(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
        if op == "all_gather_into_tensor":  # its only tensor is this rank's input
            payload *= len(ranks)
        key = collective_key(kind, len(ranks), max(ranks))
        self.bytes[key] = self.bytes.get(key, 0) + payload
        self.calls[op] = self.calls.get(op, 0) + 1


def is_process_group(obj: torch.ScriptObject) -> bool:
    """c10d ops pass their group (and reduce op) as TorchScript objects."""
    return obj._type().qualified_name().endswith("ProcessGroup")
