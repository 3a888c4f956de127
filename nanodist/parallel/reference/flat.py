"""A flat parameter: several of a unit's parameters stored as one padded 1-D tensor, sharded over ranks.

Rank r owns the contiguous slice [r S, (r + 1) S) of the concatenation of the parameters' flattened
values (zero-padded to N S elements), as an `nn.Parameter` the optimizer updates: that is all the
rank keeps between steps. To run the unit, `gather` all-gathers the slices into one full-size
buffer and hands every module a view of its piece (no copies); `free` gives the buffer's memory
back by resizing its storage to zero. The buffer is one autograd leaf that lives as long as the flat
parameter: autograd sums the pieces' gradients into its `.grad` (one full-size tensor, through a
single `split`), and regathering into the same storage keeps the views autograd saved valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

# torch 2.13 renamed the single-tensor collectives (the old names warn); 2.11 has only the old ones.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class Entry:
    """One original parameter inside a flat parameter: where its values sit and which modules use it."""

    name: str  # the full model's name of its values (a tied head's weight is the embedding's)
    aliases: list[str]  # every full-model name it answers to in a state dict (the tied head adds one)
    shape: torch.Size  # as this rank's modules use it (under tensor parallelism, the local part)
    full_shape: torch.Size  # in the whole model
    tp_dim: Optional[int] = None  # the dim split over tensor parallelism, if any
    offset: int = 0  # where it starts in the flat concatenation
    users: list[tuple[nn.Module, str]] = field(default_factory=list)  # (module, attribute) pairs

    @property
    def numel(self) -> int:
        return self.shape.numel()


class FlatParam:
    """`entries` flattened into one tensor, sharded over `group`; see the module docstring."""

    def __init__(self, entries: list[Entry], group: dist.ProcessGroup, device: torch.device,
                 param_dtype: Optional[torch.dtype] = None, kind: str = "matrices"):
        self.entries, self.group, self.kind = entries, group, kind  # kind: see `nanodist.parallel.reference.fsdp`
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        offset = 0
        for entry in entries:
            entry.offset, offset = offset, offset + entry.numel
        self.numel = offset
        self.shard_numel = -(-offset // self.world)  # ceil: the last shard carries the padding
        self.padded_numel = self.shard_numel * self.world
        self.shard = nn.Parameter(torch.zeros(self.shard_numel, device=device))
        dtype = param_dtype or self.shard.dtype
        self.full = torch.empty(self.padded_numel, dtype=dtype, device=device, requires_grad=True)
        self.free()

    @property
    def start(self) -> int:
        """Where this rank's shard starts in the flat concatenation."""
        return self.rank * self.shard_numel

    @torch.no_grad()
    def fill(self, local_value: Callable[[Entry], torch.Tensor]) -> None:
        """Write each entry's values into the part of the shard they overlap, one entry at a time.

        `local_value(entry)` makes the entry's whole (local) tensor; it is asked only for the entries
        this shard overlaps, so a rank never computes, let alone holds, more than one at once.
        """
        for entry in self.entries:
            if self._overlap(entry) is not None:
                self.write(entry, local_value(entry))

    @torch.no_grad()
    def write(self, entry: Entry, values: torch.Tensor) -> None:
        """Copy the part of one entry's whole (local) values that falls in this rank's shard into it."""
        overlap = self._overlap(entry)
        if overlap is not None:
            lo, hi = overlap
            self.shard[lo - self.start:hi - self.start].copy_(values.reshape(-1)[lo - entry.offset:hi - entry.offset])

    def _overlap(self, entry: Entry) -> Optional[tuple[int, int]]:
        """The flat range [lo, hi) that the entry shares with this rank's shard, or None."""
        lo, hi = max(self.start, entry.offset), min(self.start + self.shard_numel, entry.offset + entry.numel)
        return (lo, hi) if lo < hi else None

    def is_gathered(self) -> bool:
        return self.full.untyped_storage().nbytes() > 0

    @torch.no_grad()
    def gather(self) -> None:
        """All-gather the shards into the full buffer (allocating its storage again if it was freed)."""
        storage = self.full.untyped_storage()
        if storage.nbytes() == 0:
            storage.resize_(self.padded_numel * self.full.element_size())
        # `.data` writes without bumping the leaf's version counter: autograd's saved views of the
        # previous gather stay usable, which is what a regather before backward is for.
        all_gather_single(self.full.data, self.shard.detach().to(self.full.dtype), group=self.group)

    def free(self) -> None:
        self.full.untyped_storage().resize_(0)

    def set_views(self) -> None:
        """Point every user module at its piece of the gathered buffer (differentiable views of the leaf)."""
        sizes = [entry.numel for entry in self.entries]
        pieces = self.full.split(sizes + [self.padded_numel - self.numel])
        for entry, piece in zip(self.entries, pieces):
            view = piece.view(entry.shape)
            for module, attr in entry.users:
                setattr(module, attr, view)

    def gathered_values(self, shard: torch.Tensor) -> torch.Tensor:
        """The full flat tensor of a shard-shaped tensor (a parameter or an optimizer state), in its dtype."""
        full = torch.empty(self.padded_numel, dtype=shard.dtype, device=shard.device)
        all_gather_single(full, shard.detach(), group=self.group)
        return full

    def scatter_values(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's shard of a full flat tensor that every rank holds a disjoint part of (zeros elsewhere)."""
        out = torch.empty(self.shard_numel, dtype=full.dtype, device=full.device)
        reduce_scatter_single(out, full, group=self.group)
        return out
