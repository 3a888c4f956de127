"""nanodist's own FSDP: one flat parameter per unit (each transformer block, and the root), sharded over dp_shard.

What torch's `fully_shard` does with DTensors, written out with plain collectives:
- Deferred init. The model stays on the meta device; each unit's shard is filled from
  `GPT.initial_value` one parameter at a time (`FlatParam.fill`), so no rank ever holds the model.
- Forward. A unit's pre-forward hook all-gathers its shards into the flat buffer and points its
  modules at views of it; after the forward a block frees the buffer (`reshard_after_forward`),
  and a hook on its output gathers it again, into the same storage, when its backward begins.
  The root (embeddings, final norm, head) is needed first in backward and stays gathered.
- Backward. When autograd has summed a unit's gradient into the flat buffer's `.grad`, a
  post-accumulate-grad hook reduce-scatters it (averaged over every data-parallel rank) into the
  shard's `.grad`, all-reduces that over dp_replicate for HSDP, and frees buffer and gradient.
  One reduction is in flight while the next unit's backward computes; the last is waited for in a
  callback the autograd engine runs before `loss.backward()` returns.
- Accumulation. With `model.set_requires_gradient_sync(False)` the full gradient stays on the
  buffer, autograd keeps adding to it, and the sync micro-step reduces the sum once.
A unit keeps matrices and vectors in separate flat parameters, since AdamW decays only the former;
under fsdp_tp (the reference TP applied first) tp-split parameters apart from tp-replicated ones too.
Unlike FSDP2 the all-gathers are not prefetched: each unit gathers when it is reached.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from nanodist.model import GPT
from nanodist.parallel.reference.flat import Entry, FlatParam, reduce_scatter_single
from nanodist.parallel.reference.fsdp_state import FSDPLayout


class GradReducer:
    """Reduces each flat parameter's full gradient into its shard's gradient, one reduction in flight."""

    def __init__(self, shard_group: dist.ProcessGroup, replicate_group: Optional[dist.ProcessGroup],
                 reduce_dtype: Optional[torch.dtype]):
        self.shard_group, self.replicate_group, self.reduce_dtype = shard_group, replicate_group, reduce_dtype
        replicas = dist.get_world_size(replicate_group) if replicate_group is not None else 1
        self.dp_size = dist.get_world_size(shard_group) * replicas
        self.sync, self.pending, self.callback_queued = True, None, False

    def set_requires_gradient_sync(self, enabled: bool) -> None:
        """False on accumulation micro-steps that are not the last: gradients stay full and unreduced."""
        self.sync = enabled

    def on_gradient(self, flat: FlatParam) -> None:
        """The post-accumulate-grad hook of `flat`'s buffer: its unit's backward is done."""
        if not self.callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self.end_of_backward)
            self.callback_queued = True
        if self.sync:
            self.finish_pending()
            grad, flat.full.grad = flat.full.grad, None
            self.launch(flat, grad)
        flat.free()

    @torch.no_grad()
    def launch(self, flat: FlatParam, grad: torch.Tensor) -> None:
        grad = grad.to(self.reduce_dtype or grad.dtype).div_(self.dp_size)
        out = torch.empty(flat.shard_numel, dtype=grad.dtype, device=grad.device)
        work = reduce_scatter_single(out, grad, group=self.shard_group, async_op=True)
        self.pending = (flat, grad, out, work)  # `grad` must outlive the reduction

    @torch.no_grad()
    def finish_pending(self) -> None:
        if self.pending is None:
            return
        flat, _, out, work = self.pending
        self.pending = None
        work.wait()
        if self.replicate_group is not None:
            dist.all_reduce(out, group=self.replicate_group)
        out = out.to(flat.shard.dtype)
        if flat.shard.grad is None:
            flat.shard.grad = out
        else:
            flat.shard.grad += out

    def end_of_backward(self) -> None:
        self.finish_pending()
        self.callback_queued = False


class Unit:
    """A module whose parameters live in flat parameters: the hooks that gather and free them."""

    def __init__(self, module: nn.Module, flats: list[FlatParam], reshard_after_forward: bool, reducer: GradReducer):
        self.flats, self.reshard = flats, reshard_after_forward
        module.register_forward_pre_hook(self.pre_forward)
        module.register_forward_hook(self.post_forward)
        for flat in flats:
            flat.full.register_post_accumulate_grad_hook(lambda _, flat=flat: reducer.on_gradient(flat))

    def pre_forward(self, module: nn.Module, args) -> None:
        for flat in self.flats:
            flat.gather()
            flat.set_views()

    def post_forward(self, module: nn.Module, args, output) -> None:
        if not self.reshard:
            return
        for flat in self.flats:
            flat.free()
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self.pre_backward)

    def pre_backward(self, grad: torch.Tensor) -> None:
        """Gather again before the unit's backward (or its recomputation under activation checkpointing)."""
        for flat in self.flats:
            if not flat.is_gathered():
                flat.gather()


def apply_reference_fsdp(model: GPT, shard_mesh: DeviceMesh, replicate_mesh: Optional[DeviceMesh], fsdp_cfg,
                         device: torch.device, seed: int, inner=None) -> FSDPLayout:
    """Shard a meta-device GPT unit by unit and initialise the shards on `device`; returns the layout.

    `replicate_mesh` (HSDP) replicates the shards over dp_replicate. `inner`, a tensor-parallel
    layout already applied, gives each parameter's local part (`shard_of`) and whether it is split
    over tp (`tp_dim`); tp-split and tp-replicated parameters go into different flat parameters.
    """
    if fsdp_cfg.cpu_offload:
        raise ValueError("parallel.fsdp.cpu_offload is not implemented by the reference FSDP; use the native one.")
    param_dtype, reduce_dtype = _dtype(fsdp_cfg.param_dtype), _dtype(fsdp_cfg.reduce_dtype)
    replicate_group = replicate_mesh.get_group() if replicate_mesh is not None else None
    reducer = GradReducer(shard_mesh.get_group(), replicate_group, reduce_dtype)

    def local_value(entry: Entry) -> torch.Tensor:
        full = model.initial_value(entry.name, entry.full_shape, seed)
        return inner.shard_of(entry.name, full) if inner is not None else full

    make_entry = functools.partial(_entry, model, _full_shapes(model), inner)
    reshard = fsdp_cfg.reshard_after_forward is not False  # null: true, as pipelines are refused
    flats: dict[nn.Parameter, FlatParam] = {}
    units = [(f"transformer.h.{index}.", block, reshard) for index, block in model.transformer.h.items()]
    for prefix, module, unit_reshard in units + [("", model, False)]:
        made = flatten_unit(module, prefix, {id(p) for p in flats}, make_entry, shard_mesh.get_group(), device, param_dtype)
        for kind, flat in made.items():
            module.register_parameter(f"flat_{kind}", flat.shard)
            flat.fill(local_value)
            flats[flat.shard] = flat
        _return_freed_host_memory()
        Unit(module, list(made.values()), unit_reshard, reducer)
    model.set_requires_gradient_sync = reducer.set_requires_gradient_sync
    return FSDPLayout(model, flats, shard_mesh, inner)


def flatten_unit(module: nn.Module, prefix: str, skip: set, make_entry: Callable[[str, nn.Parameter], Entry],
                 group: dist.ProcessGroup, device: torch.device, param_dtype: Optional[torch.dtype]) -> dict[str, FlatParam]:
    """The unit's remaining parameters (those of no inner unit) grouped into flat parameters by kind,
    and removed from their modules; each module keeps a meta tensor of the shape until the first gather."""
    entries: dict[int, tuple[nn.Parameter, Entry]] = {}  # by id: a tied weight is one entry with two users
    kinds: dict[str, list[Entry]] = {}
    for name, param in module.named_parameters(prefix=prefix.rstrip("."), remove_duplicate=False):
        if id(param) in skip:
            continue
        if id(param) not in entries:
            entry = make_entry(name, param)
            entries[id(param)] = (param, entry)
            kinds.setdefault(_kind(param, entry), []).append(entry)
        entry = entries[id(param)][1]
        entry.aliases.append(name)
        owner_name, _, attr = name[len(prefix):].rpartition(".")
        entry.users.append((module.get_submodule(owner_name), attr))
    for param, entry in entries.values():
        for owner, attr in entry.users:
            del owner._parameters[attr]
            setattr(owner, attr, param.detach())
    return {kind: FlatParam(group_entries, group, device, param_dtype, kind) for kind, group_entries in kinds.items()}


def _entry(model: GPT, full_shapes: dict[str, torch.Size], inner, name: str, param: nn.Parameter) -> Entry:
    source = model.source_name(name)
    return Entry(source, [], param.shape, full_shapes[source], inner.tp_dim(source) if inner is not None else None)


def _kind(param: nn.Parameter, entry: Entry) -> str:
    """Which flat parameter of its unit a parameter joins: decayed matrices apart from vectors, and
    under tensor parallelism tp-split parameters apart from tp-replicated ones (their norms reduce differently)."""
    kind = "matrices" if param.dim() >= 2 else "vectors"
    return kind + "_tp" if entry.tp_dim is not None else kind


def _full_shapes(model: GPT) -> dict[str, torch.Size]:
    """Every parameter's shape in the whole (unsharded) model, from a meta copy of it."""
    with torch.device("meta"):
        whole = GPT(model.config)
    return {name: p.shape for name, p in whole.named_parameters()}


def _return_freed_host_memory() -> None:
    """Hand the freed full-size initial values back to the OS. glibc keeps freed heap blocks mapped, and
    with shards allocated between them they pile up: measured on gpt2_xl at 2 ranks, one rank's peak RSS
    reached 5.2 GB instead of 4.1 GB (the shard is 3.1 GB) without this. A no-op where there is no glibc."""
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


def _dtype(name: Optional[str]) -> Optional[torch.dtype]:
    return None if name is None else getattr(torch, name)
