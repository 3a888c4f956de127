"""Export a checkpoint to a Hugging Face GPT-2 directory (config.json + model.safetensors), and read one back.

    python -m nanodist.tools.export checkpoint=PATH out=DIR

Our GPT and transformers' GPT2LMHeadModel share parameter names, GELU (tanh), LayerNorm eps and
attention scaling; two layouts differ:
- our c_attn rows are head-major, (head, q|k|v, head_dim), so TP hands each rank whole heads;
  HF's are (q|k|v, head, head_dim);
- HF's projections are Conv1D modules, whose weights are stored transposed, (in, out).
The export also writes nanodist_tokenizer.json, so that `nanodist.tools.sample` can decode from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nanodist.data.tokenizer import GPT2_EOT_ID
from nanodist.model import GPT, GPTConfig
from nanodist.tools.cli import parse_key_values
from nanodist.train.checkpoint import load_model

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TOKENIZER_FILE = "nanodist_tokenizer.json"


def is_export(path: Path) -> bool:
    return (Path(path) / "config.json").exists() and (Path(path) / "model.safetensors").exists()


def hf_config(config: GPTConfig) -> dict:
    # GPT-2's <|endoftext|> only exists in a GPT-2-sized vocabulary (a char vocabulary has none).
    eot = GPT2_EOT_ID if config.vocab_size > GPT2_EOT_ID else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
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


def to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict in GPT2LMHeadModel's layout (contiguous, untied: what safetensors stores)."""
    c = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if not c.bias:  # HF's GPT-2 always has biases; zeros compute the same function
        for name in [k for k in state if k.endswith(".weight") and (".h." in k or ".ln_f." in k)]:
            state[name[: -len("weight")] + "bias"] = torch.zeros(state[name].shape[0])
    if c.tie_embeddings:
        del state["lm_head.weight"]  # HF ties it to transformer.wte.weight on load
    for name in list(state):
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            state[name] = qkv_to_hf(state[name], c.n_head)
        if name.endswith(CONV1D):
            state[name] = state[name].t()
    return {k: v.contiguous() for k, v in state.items()}


def from_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The inverse of `to_hf`: a GPT2LMHeadModel state dict in our layout."""
    state = dict(state)
    for name in list(state):
        if name.endswith(CONV1D):
            state[name] = state[name].t()
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            state[name] = qkv_from_hf(state[name], config.n_head)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def export_hf(model: GPT, out_dir: Path, tokenizer: dict | None = None) -> Path:
    """Write config.json, model.safetensors (and our tokenizer description) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config(model.config), indent=1))
    save_file(to_hf(model), out_dir / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        (out_dir / TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    return out_dir


def load_hf(path: Path) -> tuple[GPT, dict]:
    """Our GPT from an export dir, with its tokenizer description (GPT-2 BPE when there is none)."""
    path = Path(path)
    c = json.loads((path / "config.json").read_text())
    config = GPTConfig(c["n_layer"], c["n_head"], c["n_embd"], c["n_positions"], c["vocab_size"],
                       bias=True, tie_embeddings=c.get("tie_word_embeddings", True))
    model = GPT(config)
    model.load_state_dict(from_hf(load_file(path / "model.safetensors"), config))
    tokenizer_file = path / TOKENIZER_FILE
    tokenizer = json.loads(tokenizer_file.read_text()) if tokenizer_file.exists() else {"tokenizer": "gpt2"}
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    args = parse_key_values(sys.argv[1:] if argv is None else argv, {"checkpoint": str, "out": str})
    model, meta = load_model(Path(args["checkpoint"]))
    out = export_hf(model, Path(args["out"]), meta.get("tokenizer"))
    print(f"exported step {meta['step']} of {args['checkpoint']} to {out}")


if __name__ == "__main__":
    main()
