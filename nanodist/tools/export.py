"""Export a checkpoint to a Hugging Face GPT-2 directory (config.json + model.safetensors), and read one back.

    python -m nanodist.tools.export checkpoint=PATH out=DIR

The layout conversion is `nanodist.model.hf`'s (shared with `checkpoint.init_from`). The export
also writes nanodist_tokenizer.json, so that `nanodist.tools.sample` can decode from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from nanodist.model import GPT
from nanodist.model.hf import hf_config, hf_gpt_config, hf_tensors, to_hf
from nanodist.tools.cli import parse_key_values
from nanodist.train.checkpoint import load_model

TOKENIZER_FILE = "nanodist_tokenizer.json"


def is_export(path: Path) -> bool:
    return (Path(path) / "config.json").exists() and (Path(path) / "model.safetensors").exists()


def export_hf(model: GPT, out_dir: Path, tokenizer: dict | None = None) -> Path:
    """Write config.json, model.safetensors (and our tokenizer description) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config(model.config), indent=1))
    save_file(to_hf(model.state_dict(), model.config), out_dir / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        (out_dir / TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    return out_dir


def load_hf(path: Path) -> tuple[GPT, dict]:
    """Our GPT from an export dir, with its tokenizer description (GPT-2 BPE when there is none)."""
    path = Path(path)
    model = GPT(hf_gpt_config(path))
    model.load_full_tensors(hf_tensors(path, [n for n, _ in model.named_parameters()], model.config))
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
