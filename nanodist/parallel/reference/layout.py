"""What the rest of nanodist needs of a reference layout: the seams between nanodist's own DDP, FSDP
and TP (plain torch.distributed collectives, no DTensor) and the Trainer, the clip and the checkpointer.

torch's native strategies answer these questions through DTensor: a sharded parameter knows its
mesh (so the grad norm can be reduced over it) and its placement (so DCP can save and reshard it).
The reference layouts hold plain local tensors, so each says the same things explicitly here.
`Layout` is the default, a replicated model: every answer is "as one process".
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Layout:
    """A reference layout of one model: the model's own parameters hold whole tensors, as one process's."""

    def __init__(self, model: nn.Module):
        self.model = model

    def norm_groups(self, param: nn.Parameter) -> tuple[dist.ProcessGroup, ...]:
        """The groups over which this parameter's squared gradient norm is summed, one after the other
        (a shard's norm is a partial sum over the ranks holding the other shards); () for a whole tensor."""
        return ()

    def decays(self, param: nn.Parameter) -> bool:
        """Whether weight decay applies: to matrices (embeddings, linear weights), as GPT-2 training does.
        A flat parameter is 1-D whatever it holds, so a layout of flat parameters overrides this."""
        return param.dim() >= 2

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's state under the full model's names, each value a full tensor or a DTensor of this
        rank's shard, as the native layouts save it: DCP writes it, and loads into it in place."""
        return {name: p.detach() for name, p in self.model.named_parameters()}

    def optim_state(self, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
        """The optimizer's per-parameter state under the full model's names, tensors as in `model_state`."""
        names = {p: name for name, p in self.model.named_parameters()}
        return {names[p]: state for p, state in optimizer.state.items()}

    def load_state(self, model_state: dict, optim_state: dict, optimizer: torch.optim.Optimizer) -> None:
        """Write what DCP loaded into `model_state()` / `optim_state()` back into the layout's own storage;
        nothing to do where those were views of it."""

    @property
    def loss_fn(self) -> Optional[LossFn]:
        """A loss that replaces cross-entropy on full logits (the vocab-parallel one); None: the usual."""
        return None

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The whole vocabulary's logits from what the head returned (sampling needs them all)."""
        return logits
