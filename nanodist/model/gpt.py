"""GPT-2, as nanoGPT writes it, with parameter names that map one to one onto Hugging Face's GPT2LMHeadModel.

Two choices serve the parallel strategies:
- The fused QKV projection `c_attn` stores its output rows head-major, (head, q|k|v, head_dim),
  as Megatron does, so a plain column-wise split over the tensor-parallel mesh hands each rank
  whole heads. Export (`nanodist.tools.export`) permutes the rows back to Hugging Face's q|k|v order.
- Every top-level piece (embeddings, blocks, final norm, head) may be absent, so a pipeline stage is
  the same class with the pieces it does not own deleted, and keeps the full model's parameter names.
  A last stage of a tied model keeps the head's own copy of the embedding (`nanodist.parallel.tied`).
- A vocabulary padded for speed or for tensor parallelism (`true_vocab_size` < `vocab_size`) keeps
  its padding columns in the logits; the loss and the sampler leave them out of their softmax
  (`nanodist.model.loss`), so both equal those of the unpadded model.
- Two seams let context parallelism (`nanodist.parallel.cp`) give a rank only some of a sequence's
  tokens without this module knowing: `CausalSelfAttention.attention` (the attention of the local
  queries against the sequence's keys and values) and `GPT.positions` (the true positions of the
  local tokens, for the learned position embedding).

Weights are initialised per parameter from a generator seeded by (seed, parameter name): any layout
that owns a parameter, or a shard of it, gets exactly the values one process would.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, distribute_tensor

from nanodist.model.loss import chunked_linear_cross_entropy


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    true_vocab_size: Optional[int] = None  # the tokenizer's vocabulary when vocab_size is padded past it

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention over a whole sequence held by this rank: (batch, heads, seq, head_dim) each."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


def contiguous_positions(length: int, device: torch.device) -> torch.Tensor:
    """The positions of a whole sequence held by this rank: 0 .. length - 1."""
    return torch.arange(length, device=device)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.attn_dropout = config.dropout
        self.attention: Attention = causal_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # Head-major rows: under tensor parallelism this rank's slice holds n_head / tp whole heads.
        qkv = self.c_attn(x).view(batch, seq, -1, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (batch, heads, seq, head_dim)
        dropout = self.attn_dropout if self.training else 0.0
        y = self.attention(q, k, v, dropout)
        y = y.transpose(1, 2).reshape(batch, seq, -1)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                # A dict keyed by layer index keeps names like transformer.h.7 when a pipeline
                # stage deletes the layers it does not own.
                h=nn.ModuleDict({str(i): Block(config) for i in range(config.n_layer)}),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head: Optional[nn.Linear] = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.positions: Callable[[int, torch.device], torch.Tensor] = contiguous_positions

    def forward(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None, loss_chunk: int = 0) -> torch.Tensor:
        """Token ids (batch, seq) -> logits (batch, seq, vocab); a pipeline stage maps hidden -> hidden.

        Given `targets` and a `loss_chunk`, the mean loss instead, the head fused into it (inside
        forward, where FSDP has gathered the head's weight).
        """
        t = self.transformer
        if "wte" in t:
            x = t.drop(t.wte(x) + t.wpe(self.positions(x.size(1), x.device)))
        for block in t.h.values():
            x = block(x)
        if "ln_f" in t:
            x = t.ln_f(x)
        if targets is not None and loss_chunk:
            return chunked_linear_cross_entropy(x, self.lm_head.weight, targets, loss_chunk, self.config.true_vocab_size)
        if self.lm_head is not None:
            x = self.lm_head(x)
        return x

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """GPT-2 init, written into whatever this rank holds of each parameter (a DTensor shard, or all
        of it), so every layout starts equal; see `initial_value`."""
        for name, param in self.named_parameters():
            _copy_into_local_shard(param, self.initial_value(self.source_name(name), param.shape, seed))

    def initial_value(self, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
        """The full initial tensor of parameter `name`, on CPU: GPT-2's N(0, 0.02), residual projections
        N(0, 0.02/sqrt(2 n_layer)), zero biases, unit norms.

        Each parameter draws from its own generator seeded by (seed, name), so a layout that builds
        its shards one parameter at a time (the reference FSDP) gets the values one process would.
        """
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if name.endswith("c_proj.weight"):
            return torch.randn(shape, generator=gen) * (0.02 / math.sqrt(2 * self.config.n_layer))
        if name.endswith(".weight") and len(shape) == 2:
            return torch.randn(shape, generator=gen) * 0.02
        if "ln_" in name and name.endswith(".weight"):
            return torch.ones(shape)
        return torch.zeros(shape)

    def source_name(self, name: str) -> str:
        """The full model's name of the values a parameter holds: a tied head's copy holds the embedding's."""
        return "transformer.wte.weight" if name == "lm_head.weight" and self.config.tie_embeddings else name

    @torch.no_grad()
    def load_full_tensors(self, tensors) -> None:
        """Write (name, full tensor) pairs into whatever this rank holds of each parameter (pretrained weights)."""
        params = dict(self.named_parameters())
        for name, full in tensors:
            _copy_into_local_shard(params[name], full)


def _copy_into_local_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Write the part of `full` that this rank owns into `param` (a DTensor shard or a plain tensor)."""
    if isinstance(param, DTensor):
        # src_data_rank=None: every rank computed `full` identically, so each slices its own part.
        full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
        param = param.to_local()
    param.copy_(full.to(device=param.device, dtype=param.dtype))
