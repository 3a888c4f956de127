"""The reference FSDP's seams: grad-norm groups, weight decay, and checkpoints in native FSDP2's layout.

A flat shard cuts through parameters wherever its boundaries fall, so it cannot be saved as is under
the full model's names. At save time each unit is gathered (one at a time) and every parameter is
handed to DCP as the DTensor native FSDP2 would hold: rows [r c, (r + 1) c) of it on rank r, with
c = ceil(rows / N), as `torch.chunk` cuts, i.e. Shard(0) over dp_shard. A checkpoint then moves between
native and reference layouts (and any number of ranks) through DCP's resharding. At load time every
rank writes its rows into a zeroed full flat tensor and a reduce-scatter (sum) hands each rank its
flat shard: every element comes from exactly one rank, so the sum is exact. Under fsdp_tp a tp-split
parameter is saved as the tp layout would save it (its tp-local part, Shard(tp_dim) over tp).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from nanodist.parallel.reference.flat import Entry, FlatParam
from nanodist.parallel.reference.layout import Layout


class FSDPLayout(Layout):
    """A model whose parameters are flat shards (`flats`: shard parameter -> its `FlatParam`)."""

    def __init__(self, model: nn.Module, flats: dict[nn.Parameter, FlatParam], shard_mesh: DeviceMesh, inner=None):
        super().__init__(model)
        self.flats, self.shard_mesh, self.inner = flats, shard_mesh, inner

    def norm_groups(self, param: nn.Parameter) -> tuple[dist.ProcessGroup, ...]:
        """A shard's squared norm is a partial sum over dp_shard (dp_replicate ranks hold the same one),
        and over tp too for a flat parameter of tp-split parameters."""
        if self.flats[param].kind.endswith("_tp"):
            return self.shard_mesh.get_group(), self.inner.mesh.get_group()
        return (self.shard_mesh.get_group(),)

    def decays(self, param: nn.Parameter) -> bool:
        return self.flats[param].kind.startswith("matrices")

    @torch.no_grad()
    def model_state(self) -> dict[str, torch.Tensor]:
        """Every parameter (each of a tied weight's names) as a DTensor of this rank's dim-0 chunk (see `_chunk`
        for fsdp_tp's tp-split ones); fresh copies, gathered one unit at a time: collective, every rank calls it."""
        state = {}
        for flat in self.flats.values():
            full = flat.gathered_values(flat.shard)
            for entry in flat.entries:
                chunk = self._chunk(full, entry)
                state.update((alias, chunk) for alias in entry.aliases)
        return state

    @torch.no_grad()
    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
        """AdamW's per-parameter state under the parameters' names (one name for a tied weight, as natively):
        moments chunked as in `model_state`, the step count (one per flat parameter) copied to each."""
        state: dict[str, dict[str, torch.Tensor]] = {}
        for shard, flat in self.flats.items():
            for key, value in optimizer.state.get(shard, {}).items():
                full = flat.gathered_values(value) if _is_sharded(value, flat) else None
                for entry in flat.entries:
                    chunk = self._chunk(full, entry) if full is not None else value.detach().clone()
                    state.setdefault(entry.name, {})[key] = chunk
        return state

    @torch.no_grad()
    def load_state(self, model_state: dict, optim_state: dict, optimizer: torch.optim.Optimizer) -> None:
        """Write the DTensors DCP loaded into `model_state()` / `optim_state()` back into the flat shards and
        the optimizer's state (which must exist already: one zero-lr step creates it)."""
        for shard, flat in self.flats.items():
            shard.copy_(self._unchunk(flat, {e.name: model_state[e.name] for e in flat.entries}))
            for key, value in optimizer.state.get(shard, {}).items():
                loaded = {e.name: optim_state[e.name][key] for e in flat.entries}
                if _is_sharded(value, flat):
                    value.copy_(self._unchunk(flat, loaded))
                else:
                    value.copy_(loaded[flat.entries[0].name])

    @property
    def loss_fn(self):
        """Under fsdp_tp, the tensor-parallel layout's (the vocab-parallel loss under loss parallelism)."""
        return self.inner.loss_fn if self.inner is not None else None

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.inner.full_logits(logits) if self.inner is not None else logits

    def _rows(self, entry: Entry) -> tuple[int, int, int]:
        """This rank's dim-0 rows [lo, hi) of the entry, as torch.chunk cuts them, and the elements per row."""
        rows = entry.shape[0]
        per_rank = -(-rows // self.shard_mesh.size())
        lo = min(self.shard_mesh.get_local_rank() * per_rank, rows)
        return lo, min(lo + per_rank, rows), entry.numel // max(rows, 1)

    def _chunk(self, full: torch.Tensor, entry: Entry) -> DTensor:
        """The entry's DTensor: this rank's dim-0 chunk over dp_shard; a tp-split entry (fsdp_tp) is saved
        as its whole tp-local part over tp instead (replicated over dp_shard, which DCP writes once)."""
        stride = torch.empty(entry.full_shape, device="meta").stride()
        if entry.tp_dim is not None:
            local = full[entry.offset:entry.offset + entry.numel].view(entry.shape).clone()
            mesh, placement = self.inner.mesh, Shard(entry.tp_dim)
        else:
            lo, hi, row = self._rows(entry)
            local = full[entry.offset + lo * row:entry.offset + hi * row].view(hi - lo, *entry.shape[1:]).clone()
            mesh, placement = self.shard_mesh, Shard(0)
        return DTensor.from_local(local, mesh, [placement], run_check=False, shape=entry.full_shape, stride=stride)

    def _unchunk(self, flat: FlatParam, chunks: dict[str, torch.Tensor]) -> torch.Tensor:
        """This rank's flat shard of the entries whose DTensor chunks each rank holds."""
        first = next(iter(chunks.values()))
        full = torch.zeros(flat.padded_numel, dtype=first.dtype, device=flat.shard.device)
        for entry in flat.entries:
            lo, hi, row = self._rows(entry)
            local = chunks[entry.name]
            local = local.to_local() if isinstance(local, DTensor) else local
            if entry.tp_dim is not None:  # the whole tp-local part: keep this rank's rows of it
                local = local[lo:hi]
            full[entry.offset + lo * row:entry.offset + hi * row].copy_(local.reshape(-1))
        return flat.scatter_values(full)


def _is_sharded(value: torch.Tensor, flat: FlatParam) -> bool:
    """Whether an optimizer state tensor is per element (a moment) rather than per parameter (AdamW's step)."""
    return torch.is_tensor(value) and value.shape == flat.shard.shape
