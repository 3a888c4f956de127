"""nanodist's own tensor (and sequence) parallelism for the GPT: the layout of `nanodist.parallel.tp`,
built from the hand-written layers of `tp_layers` instead of DTensor.

The split is the native one: QKV and MLP-up column-parallel (head-major QKV rows, so a rank owns
n_head / tp whole heads), attention-out and MLP-down row-parallel, the token embedding by
vocabulary and the LM head by output vocabulary, both the (vocab, n_embd) weight's dim 0, so a
tied weight stays one parameter. Under sequence parallelism the residual stream and the
LayerNorms hold 1/tp of the sequence: the embedding's output is split after the positions are
added (at the first block's input), attention, MLP and head gather it at their inputs, and each
row-parallel linear reduce-scatters its output over it. Under loss parallelism the head's logits
stay vocab-sharded into `vocab_parallel_cross_entropy`.

Parameters are plain tensors holding this rank's shard under the plain model's names; `TPLayout`
says what DTensor would: which dim is split, over which group the grad norm sums, and the
DTensor views (the native placements) that DCP saves and loads in place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard

from nanodist.model import GPT
from nanodist.parallel.reference.layout import Layout, LossFn
from nanodist.parallel.reference.tp_layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    SequenceParallelLayerNorm,
    VocabParallelEmbedding,
    all_gather,
    gather_sequence_hook,
    split_sequence_hook,
)
from nanodist.parallel.reference.tp_loss import vocab_parallel_cross_entropy


@dataclass(frozen=True)
class Split:
    """How one parameter is laid out: the full model's shape, and the dim split over tp (None: whole on every rank)."""

    full_shape: torch.Size
    dim: Optional[int]

    @property
    def placement(self) -> Placement:
        return Replicate() if self.dim is None else Shard(self.dim)


def apply_reference_tp(model: GPT, tp_mesh: DeviceMesh, sequence_parallel: bool, loss_parallel: bool) -> "TPLayout":
    """Replace the Linear, Embedding (and under SP LayerNorm) modules of a meta-device `model` (or a
    pipeline stage of it) with tensor-parallel ones holding this rank's shards, still on meta."""
    full_shapes = {name: p.shape for name, p in model.named_parameters(remove_duplicate=False)}
    group, t = tp_mesh.get_group(), model.transformer
    tied = model.lm_head is not None and "wte" in t and model.lm_head.weight is t.wte.weight
    device = next(model.parameters()).device
    column = functools.partial(_column, group=group, sequence_parallel=sequence_parallel, device=device)
    row = functools.partial(_row, group=group, sequence_parallel=sequence_parallel, device=device)
    if "wte" in t:
        t.wte = VocabParallelEmbedding(t.wte.num_embeddings, t.wte.embedding_dim, group, device)
    for block in t.h.values():
        block.attn.c_attn, block.attn.c_proj = column(block.attn.c_attn), row(block.attn.c_proj)
        block.mlp.c_fc, block.mlp.c_proj = column(block.mlp.c_fc), row(block.mlp.c_proj)
        if sequence_parallel:
            block.ln_1 = SequenceParallelLayerNorm(block.ln_1, group)
            block.ln_2 = SequenceParallelLayerNorm(block.ln_2, group)
    if sequence_parallel and "ln_f" in t:
        t.ln_f = SequenceParallelLayerNorm(t.ln_f, group)
    if model.lm_head is not None:
        model.lm_head = column(model.lm_head, gather_output=not loss_parallel)
    if tied:
        model.lm_head.weight = t.wte.weight
    if sequence_parallel:
        _hook_sequence_gathers(model, group)
    return TPLayout(model, tp_mesh, _splits(model, full_shapes), loss_parallel)


def _hook_sequence_gathers(model: GPT, group) -> None:
    """SP's layout changes at module inputs, as the native plan's PrepareModuleInput: the first block splits
    the embedding's whole sequence; attention, MLP and head gather it back (attention needs all of it)."""
    t, gather = model.transformer, functools.partial(gather_sequence_hook, group)
    blocks = list(t.h.values())
    if "wte" in t and blocks:
        blocks[0].register_forward_pre_hook(functools.partial(split_sequence_hook, group))
    for block in blocks:
        block.attn.register_forward_pre_hook(gather)
        block.mlp.register_forward_pre_hook(gather)
    if model.lm_head is not None:
        model.lm_head.register_forward_pre_hook(gather)


def _column(linear: nn.Linear, group, sequence_parallel: bool, device, gather_output: bool = False) -> ColumnParallelLinear:
    """Under SP the input arrives gathered by `gather_sequence_hook`."""
    return ColumnParallelLinear(linear.in_features, linear.out_features, linear.bias is not None, group,
                                sequence_parallel, gather_output, device)


def _row(linear: nn.Linear, group, sequence_parallel: bool, device) -> RowParallelLinear:
    return RowParallelLinear(linear.in_features, linear.out_features, linear.bias is not None, group, sequence_parallel,
                             device)


def _splits(model: nn.Module, full_shapes: dict[str, torch.Size]) -> dict[str, Split]:
    """Every parameter name (a tied head's too) -> its split, as the module holding it declares (`tp_dims`)."""
    splits = {}
    for module_name, module in model.named_modules():
        for attr, _ in module.named_parameters(prefix="", recurse=False, remove_duplicate=False):
            name = f"{module_name}.{attr}" if module_name else attr
            splits[name] = Split(full_shapes[name], getattr(module, "tp_dims", {}).get(attr))
    return splits


class TPLayout(Layout):
    """The seams of the reference TP layout: shards as plain parameters, and what DTensor would say about them."""

    def __init__(self, model: GPT, tp_mesh: DeviceMesh, splits: dict[str, Split], loss_parallel: bool):
        super().__init__(model)
        self.mesh, self.group, self.splits, self.loss_parallel = tp_mesh, tp_mesh.get_group(), splits, loss_parallel
        self._names = self._param_names()

    def _param_names(self) -> dict[nn.Parameter, str]:
        return {p: name for name, p in self.model.named_parameters()}

    def tp_dim(self, name: str) -> Optional[int]:
        """The dim of parameter `name` (full model's name) split over tp; None where every rank holds it whole."""
        return self.splits[name].dim

    def shard_of(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of parameter `name`'s full tensor (a view of `full`, or `full` itself)."""
        dim = self.tp_dim(name)
        return full if dim is None else full.chunk(self.mesh.size(), dim=dim)[self.mesh.get_local_rank()]

    @torch.no_grad()
    def materialize(self, device: torch.device, seed: int) -> None:
        """Allocate the shards on `device` and fill each with its part of the full model's initial value,
        so that the model starts as one process's does."""
        t, model = self.model.transformer, self.model
        tied = model.lm_head is not None and "wte" in t and model.lm_head.weight is t.wte.weight
        model.to_empty(device=device)
        if tied:
            model.lm_head.weight = t.wte.weight
        for name, param in model.named_parameters():
            full = model.initial_value(model.source_name(name), self.splits[name].full_shape, seed)
            param.copy_(self.shard_of(name, full))
        self._names = self._param_names()

    def norm_groups(self, param: nn.Parameter) -> tuple[dist.ProcessGroup, ...]:
        """tp for a shard; () for a parameter every tp rank holds whole with the same gradient (count it once)."""
        return () if self.tp_dim(self._names[param]) is None else (self.group,)

    def _as_dtensor(self, name: str, local: torch.Tensor) -> DTensor:
        split = self.splits[name]
        return DTensor.from_local(local, self.mesh, [split.placement], run_check=False,
                                  shape=split.full_shape, stride=torch.empty(split.full_shape, device="meta").stride())

    def model_state(self) -> dict[str, torch.Tensor]:
        """Full names -> DTensor views of the parameters with the native TP placements (a tied head's name
        too, as `get_model_state_dict` lists it), so DCP saves and loads them in place."""
        params = self.model.named_parameters(remove_duplicate=False)
        return {name: self._as_dtensor(name, p.detach()) for name, p in params}

    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
        """AdamW's state under the full model's names (a tied head's copy under the embedding's, as
        `nanodist.train.checkpoint_state.param_names` keys it): the moments as DTensor views placed like
        their parameter, `step` as is."""
        state = {}
        for param, values in optimizer.state.items():
            name = self._names[param]
            state[self.model.source_name(name)] = {
                key: self._as_dtensor(name, v) if torch.is_tensor(v) and v.shape == param.shape else v
                for key, v in values.items()
            }
        return state

    def load_state(self, model_state: dict, optim_state: dict, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to copy: `model_state()` and `optim_state()` are views of the parameters and of AdamW's
        tensors, which DCP has loaded in place."""

    @property
    def loss_fn(self) -> Optional[LossFn]:
        """Under loss parallelism the vocab-parallel cross-entropy of the head's local logits; else None."""
        if not self.loss_parallel:
            return None
        return functools.partial(vocab_parallel_cross_entropy, group=self.group,
                                 true_vocab_size=self.model.config.true_vocab_size)

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Under loss parallelism the head's vocab shards gathered (sampling needs them all); else the logits."""
        return all_gather(logits, -1, self.group) if self.loss_parallel else logits

