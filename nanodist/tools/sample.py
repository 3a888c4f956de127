"""Sample text from a checkpoint or an export, in one process:

    python -m nanodist.tools.sample checkpoint=PATH prompt="ROMEO:" [max_new_tokens=200 temperature=0.8 top_k=200 seed=1337 device=auto]

PATH is a checkpoint (a step_N dir, or a run dir / checkpoints dir: its newest checkpoint), whatever
layout saved it, or a Hugging Face export dir written by `python -m nanodist.tools.export`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from nanodist.data import tokenizer_for
from nanodist.model import generate_text
from nanodist.model.generate import next_token_logits
from nanodist.parallel.process_group import pick_device
from nanodist.tools.cli import parse_key_values
from nanodist.tools.export import is_export, load_hf
from nanodist.train.checkpoint import load_model

OPTIONS: dict[str, Callable] = {
    "checkpoint": str, "prompt": str, "max_new_tokens": int, "temperature": float, "top_k": int, "seed": int, "device": str,
}
DEFAULTS = {"prompt": "\n", "max_new_tokens": 200, "temperature": 0.8, "top_k": 200, "seed": 1337, "device": "auto"}


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
    tokenizer = tokenizer_for(tokenizer_meta, tokenizer_meta.get("tokenizer_file"))
    if tokenizer is None:
        sys.exit("error: this model was trained on synthetic tokens and has no tokenizer to sample text with.")
    model.eval()
    try:
        text = generate_text(lambda ids: next_token_logits(model, ids), tokenizer, args["prompt"], args["max_new_tokens"],
                             args["seed"], device, args["temperature"], args["top_k"])
    except KeyError as err:
        sys.exit(f"error: the prompt holds {err}, which the model's character vocabulary lacks.")
    print(text)
    return text


if __name__ == "__main__":
    main()
