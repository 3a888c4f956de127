"""`checkpoint.init_from`: start training from a Hugging Face GPT-2's weights, in any layout (nanoGPT's init_from='gpt2').

The source is a local directory (config.json + model.safetensors or pytorch_model.bin: what our
export writes and what the hub's gpt2, gpt2-medium, gpt2-large and gpt2-xl repos hold), or a hub
name fetched through huggingface_hub. The launcher resolves and checks it once, before any rank
starts (`check_init_from`); each rank then reads the tensors it holds a part of, one at a time,
and writes its shard of each (`load_pretrained`), as the seeded init does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nanodist.config import ConfigError
from nanodist.model import GPT, GPTConfig
from nanodist.model.hf import WEIGHT_FILES, hf_gpt_config, hf_tensors, weight_file

log = logging.getLogger("nanodist")


def resolve_init_from(source: str) -> Path:
    """The local directory of `source`: itself, or the hub snapshot of that name (downloaded or cached)."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=source, allow_patterns=["config.json", *WEIGHT_FILES]))
    except Exception as err:  # offline, no such repo, or no huggingface_hub: one sentence either way
        raise ConfigError(
            f"checkpoint.init_from={source} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}); point it at a GPT-2 directory (config.json + model.safetensors)."
        ) from None


def check_init_from(source: str, config: GPTConfig) -> Path:
    """The resolved directory of `source`, once its model is known to fit `config`; else one sentence why not.

    A shorter block size than the pretrained one is allowed (positions are cropped, as nanoGPT does).
    """
    path = resolve_init_from(source)
    if not (path / "config.json").exists():
        raise ConfigError(f"checkpoint.init_from={source} has no config.json; point it at a GPT-2 directory.")
    weight_file(path)
    theirs = hf_gpt_config(path)
    ours = {"n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "vocab_size": config.true_vocab_size or config.vocab_size, "tie_embeddings": config.tie_embeddings}
    diff = [f"{k}={getattr(theirs, k)} (this run: {v})" for k, v in ours.items() if getattr(theirs, k) != v]
    if theirs.block_size < config.block_size:
        diff.append(f"block_size={theirs.block_size} (this run: {config.block_size})")
    if not config.bias:
        diff.append("bias=true (this run: model.bias=false)")
    if diff:
        raise ConfigError(f"checkpoint.init_from={source} holds a different model, {', '.join(diff)}; "
                          "pick the model config that matches it.")
    return path


def load_pretrained(parts: list[GPT], path: str, config: GPTConfig) -> None:
    """Write the pretrained weights into this rank's model parts (shards, stages), replacing the seeded init."""
    for part in parts:
        part.load_full_tensors(hf_tensors(Path(path), [name for name, _ in part.named_parameters()], config))
    log.info(f"initialised from {path} ({weight_file(Path(path)).name})")
