"""Hugging Face's GPT-2 layout: config.json and weights, to and from ours, for export and for `checkpoint.init_from`.

Our GPT and transformers' GPT2LMHeadModel share parameter names, GELU (tanh), LayerNorm eps and
attention scaling; two layouts differ:
- our c_attn rows are head-major, (head, q|k|v, head_dim), so TP hands each rank whole heads;
  HF's are (q|k|v, head, head_dim);
- HF's projections are Conv1D modules, whose weights are stored transposed, (in, out).
A padded vocabulary (tp needs one that splits evenly) exists only on our side: export drops the
padding rows, and loading adds them back as zeros (the model masks them out of every softmax).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from nanodist.config import ConfigError
from nanodist.data.tokenizer import GPT2_EOT_ID
from nanodist.model.gpt import GPTConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_config(config: GPTConfig) -> dict:
    """GPT2LMHeadModel's config.json for our model (its real vocabulary, without padding)."""
    vocab = config.true_vocab_size or config.vocab_size
    # GPT-2's <|endoftext|> only exists in a GPT-2-sized vocabulary (a char vocabulary has none).
    eot = GPT2_EOT_ID if vocab > GPT2_EOT_ID else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }


def qkv_to_hf(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """c_attn rows (or bias) from (head, q|k|v, head_dim) to (q|k|v, head, head_dim)."""
    return t.unflatten(0, (n_head, 3, -1)).transpose(0, 1).flatten(0, 2)


def qkv_from_hf(t: torch.Tensor, n_head: int) -> torch.Tensor:
    return t.unflatten(0, (3, n_head, -1)).transpose(0, 1).flatten(0, 2)


def to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our full state dict in GPT2LMHeadModel's layout (contiguous, fp32, no padding rows: what safetensors stores)."""
    state = {k: v.detach().float().cpu() for k, v in state.items()}
    if not config.bias:  # HF's GPT-2 always has biases; zeros compute the same function
        for name in [k for k in state if k.endswith(".weight") and (".h." in k or ".ln_f." in k)]:
            state[name[: -len("weight")] + "bias"] = torch.zeros(state[name].shape[0])
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # HF ties it to transformer.wte.weight on load
    for name in list(state):
        if name in ("transformer.wte.weight", "lm_head.weight") and config.true_vocab_size:
            state[name] = state[name][: config.true_vocab_size]
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            state[name] = qkv_to_hf(state[name], config.n_head)
        if name.endswith(CONV1D):
            state[name] = state[name].t()
    return {k: v.contiguous() for k, v in state.items()}


def from_hf(name: str, value: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """The inverse of `to_hf` for one tensor: HF's `name` -> ours (same name), padded rows added as zeros.

    The zero rows are never seen: the model masks padding out of its logits, and no token id reaches them.
    """
    if name.endswith(CONV1D):
        value = value.t()
    if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
        value = qkv_from_hf(value, config.n_head)
    if name in ("transformer.wte.weight", "lm_head.weight") and value.size(0) < config.vocab_size:
        value = torch.cat([value, value.new_zeros(config.vocab_size - value.size(0), value.size(1))])
    if name == "transformer.wpe.weight":
        value = value[: config.block_size]  # a shorter context than pretrained: nanoGPT's crop_block_size
    return value


def hf_gpt_config(path: Path) -> GPTConfig:
    """The model shape a Hugging Face GPT-2 directory holds (GPT-2 always has biases)."""
    c = json.loads((Path(path) / "config.json").read_text())
    return GPTConfig(c["n_layer"], c["n_head"], c["n_embd"], c["n_positions"], c["vocab_size"],
                     bias=True, tie_embeddings=c.get("tie_word_embeddings", True))


def weight_file(path: Path) -> Path:
    """The weights of a Hugging Face directory: model.safetensors, else pytorch_model.bin."""
    for name in WEIGHT_FILES:
        if (Path(path) / name).exists():
            return Path(path) / name
    raise ConfigError(f"{path} holds neither {' nor '.join(WEIGHT_FILES)}; point checkpoint.init_from at a GPT-2 directory.")


def hf_tensors(path: Path, names: list[str], config: GPTConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor in our layout) for each of `names`, read one at a time (peak memory: one tensor).

    HF's files name the tied head only through transformer.wte.weight, and the hub's older
    pytorch_model.bin files have no "transformer." prefix; both are looked up by their own names.
    """
    file = weight_file(path)
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            for name in names:
                yield name, from_hf(name, f.get_tensor(_stored_name(name, keys, config)), config)
    else:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        for name in names:
            yield name, from_hf(name, state[_stored_name(name, set(state), config)], config)


def _stored_name(name: str, keys: set[str], config: GPTConfig) -> str:
    if name == "lm_head.weight" and config.tie_embeddings:
        name = "transformer.wte.weight"
    for candidate in (name, name.removeprefix("transformer.")):
        if candidate in keys:
            return candidate
    raise ConfigError(f"the pretrained weights lack {name}; they are not a GPT-2 of this shape.")
