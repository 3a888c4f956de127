"""What a checkpoint holds of a rank's training state: the model's and the optimizer's tensors under the
full model's names, so that every layout writes and reads the same keys.

The native layouts (FSDP2, TP, replicate, pipeline stages) keep the plain model's names and speak
DTensor, so DCP's state-dict helpers serve them (`NativeLayout`); the reference layouts convert their
plain shards themselves (`nanodist.parallel.reference.layout.Layout`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    set_model_state_dict,
)

from nanodist.model import GPT
from nanodist.parallel.reference.layout import Layout


def param_names(parts: list[GPT]) -> dict[nn.Parameter, str]:
    """Each parameter's name in the full model, over all the model parts (pipeline stages) of a rank.

    A tied head's copy on the last pipeline stage takes the embedding's name, so its optimizer
    state is the embedding's in every layout (one process holds one parameter under that name).
    """
    return {param: part.source_name(name) for part in parts for name, param in part.named_parameters()}


def optimizer_state(parts: list[nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's per-parameter state keyed by parameter name: the same keys in every layout.

    Its tensors (DTensors where the parameter is one) are the optimizer's own, so DCP loads into
    them in place. Hyper-parameters are not saved: they come from the config, the lr from the step.
    """
    names = param_names(parts)
    return {names[p]: state for p, state in optimizer.state.items()}


@torch.no_grad()
def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create every parameter's optimizer state, so that DCP has tensors of the right layout to load into.

    One step with zero gradients at lr 0 creates them without moving a weight (and the weights are
    loaded from the checkpoint right after anyway).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if all(p in optimizer.state for p in params):
        return
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


class NativeLayout(Layout):
    """The native layouts' state (whole tensors or DTensors), through DCP's state-dict helpers, over all
    of a rank's model parts (pipeline stages): their names are disjoint."""

    def __init__(self, parts: list[nn.Module]):
        self.parts = parts

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v for part in self.parts for k, v in get_model_state_dict(part).items()}

    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict:
        return optimizer_state(self.parts, optimizer)

    def load_state(self, model_state: dict, optim_state: dict, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's tensors were loaded in place; the model's go through set_model_state_dict, per part."""
        for part in self.parts:
            set_model_state_dict(part, {k: model_state[k] for k in get_model_state_dict(part)})
