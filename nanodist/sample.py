"""Sample text from a checkpoint or an export, in one process:

    python -m nanodist.sample checkpoint=PATH prompt="ROMEO:" [max_new_tokens=200 temperature=0.8 top_k=200 seed=1337 device=auto]

PATH is a checkpoint (a step_N dir, or a run dir / checkpoints dir: its newest checkpoint), whatever
layout saved it, or a Hugging Face export dir written by `python -m nanodist.export`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from nanodist.checkpoint import load_model
from nanodist.distributed import pick_device
from nanodist.export import is_export, load_hf
from nanodist.sampling import generate, tokenizer_for

OPTIONS: dict[str, Callable] = {
    "checkpoint": str, "prompt": str, "max_new_tokens": int, "temperature": float, "top_k": int, "seed": int, "device": str,
}
DEFAULTS = {"prompt": "\n", "max_new_tokens": 200, "temperature": 0.8, "top_k": 200, "seed": 1337, "device": "auto"}


def parse_key_values(argv: list[str], options: dict[str, Callable], defaults: dict | None = None) -> dict:
    """key=value arguments, as Hydra's command line takes them, but values stay literal (a prompt is text)."""
    args = dict(defaults or {})
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            sys.exit(f"error: {arg!r} is not one of {', '.join(k + '=...' for k in options)}.")
        args[key] = options[key](value)
    missing = [k for k in options if k not in args]
    if missing:
        sys.exit(f"error: give {', '.join(k + '=...' for k in missing)}.")
    return args


def load(path: Path) -> tuple[torch.nn.Module, dict]:
    """The model and its tokenizer description, from an export dir or a checkpoint."""
    if is_export(path):
        return load_hf(path)
    model, meta = load_model(path)
    return model, meta["tokenizer"]


def main(argv: list[str] | None = None) -> str:
    args = parse_key_values(sys.argv[1:] if argv is None else argv, OPTIONS, DEFAULTS)
    device = pick_device(args["device"], 0)
    model, tokenizer_meta = load(Path(args["checkpoint"]))
    model.to(device)
    tokenizer = tokenizer_for(tokenizer_meta, SimpleNamespace(tokenizer_file=tokenizer_meta.get("tokenizer_file")))
    if tokenizer is None:
        sys.exit("error: this model was trained on synthetic tokens and has no tokenizer to sample text with.")
    try:
        prompt = tokenizer.encode(args["prompt"]) or [0]
    except KeyError as err:
        sys.exit(f"error: the prompt holds {err}, which the model's character vocabulary lacks.")
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    out = generate(model, ids, args["max_new_tokens"], model.config.block_size, args["seed"], args["temperature"], args["top_k"])
    text = tokenizer.decode([min(i, tokenizer.vocab_size - 1) for i in out[0].tolist()])
    print(text)
    return text


if __name__ == "__main__":
    main()
