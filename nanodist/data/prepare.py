"""Dataset preparation: raw text -> train.bin / val.bin (uint16 tokens) + meta.json.

Each dataset has one `prepare_*` function; `data/<name>/prepare.py` is its command-line face and
training calls `ensure_prepared` when the files are missing. Sources are read from, in order: an
explicit path, the mirror folder $NANODIST_DATA_MIRROR (laid out as <mirror>/<dataset>/...), then
the dataset's public URL.
"""

from __future__ import annotations

import fcntl
import json
import os
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from nanodist.data.tokenizer import EOT_TOKEN, GPT2_EOT_ID, CharTokenizer, GPT2Tokenizer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSTORIES_URLS = {
    "train": "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
    "val": "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
}
OPENWEBTEXT_PARQUET = (
    "https://huggingface.co/datasets/Skylion007/openwebtext/resolve/refs%2Fconvert%2Fparquet/"
    "plain_text/train/{shard:04d}.parquet"
)
VAL_FRACTION = 0.1


class DatasetUnavailable(RuntimeError):
    """The dataset's files are missing and its source could not be read; the message says how to fix it."""


def data_dir(data_cfg) -> Path:
    path = Path(data_cfg.dir)
    return path if path.is_absolute() else PROJECT_ROOT / path


def is_prepared(data_cfg) -> bool:
    return data_cfg.name == "synthetic" or (data_dir(data_cfg) / "meta.json").exists()


def read_meta(data_cfg) -> dict:
    if data_cfg.name == "synthetic":
        return {"vocab_size": data_cfg.synthetic_vocab_size, "tokenizer": "none"}
    return json.loads((data_dir(data_cfg) / "meta.json").read_text())


def ensure_prepared(data_cfg, log: Callable[[str], None] = print, force: bool = False) -> dict:
    """Prepare the dataset if its files are missing (or `force`); return its meta.

    A preparer reads its source before it touches the old files, so a forced preparation whose
    source cannot be read leaves the prepared dataset as it was."""
    if force or not is_prepared(data_cfg):
        if data_cfg.name not in PREPARERS:
            raise DatasetUnavailable(f"data={data_cfg.name} has no preparation step; pick one of {sorted(PREPARERS)}.")
        log(f"preparing data={data_cfg.name} into {data_dir(data_cfg)}")
        PREPARERS[data_cfg.name](data_cfg)
    return read_meta(data_cfg)


def prepare_once(data_cfg, log: Callable[[str], None] = print, force: bool = False) -> dict:
    """`ensure_prepared` under a file lock in the data dir, so that processes starting together
    (torchrun or SLURM ranks, a prepare script) prepare it once."""
    if data_cfg.name == "synthetic":
        return read_meta(data_cfg)
    out = data_dir(data_cfg)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_prepared(data_cfg, log=log, force=force)


def locate_source(name: str, relative: str, explicit: Optional[str], url: Optional[str], max_bytes: Optional[int]) -> bytes:
    """Raw bytes of a source file: explicit path, then the mirror, then the URL (first max_bytes)."""
    if explicit:
        if not os.path.isfile(explicit):
            raise DatasetUnavailable(f"data.source={explicit} does not exist; point it at a local copy of {relative}.")
        return _read(explicit, max_bytes)
    mirror = os.environ.get("NANODIST_DATA_MIRROR")
    if mirror and os.path.isfile(os.path.join(mirror, relative)):
        return _read(os.path.join(mirror, relative), max_bytes)
    if url is None:
        raise DatasetUnavailable(f"data={name} needs a local source; set data.source or $NANODIST_DATA_MIRROR.")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read(max_bytes if max_bytes else -1)
    except OSError as err:
        raise DatasetUnavailable(
            f"data={name} could not be downloaded from {url} ({err.__class__.__name__}); set data.source to a "
            f"local copy or $NANODIST_DATA_MIRROR to a folder holding {relative}."
        ) from None


def _read(path: str, max_bytes: Optional[int]) -> bytes:
    with open(path, "rb") as f:
        return f.read(max_bytes if max_bytes else -1)


def write_split(out: Path, split: str, ids: np.ndarray | list[int]) -> None:
    array = np.asarray(ids, dtype=np.uint16)
    array.tofile(out / f"{split}.bin")


def write_meta(out: Path, **meta) -> None:
    # meta.json last: its presence marks a complete preparation.
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def prepare_shakespeare_char(data_cfg) -> None:
    text = locate_source("shakespeare_char", "tinyshakespeare/input.txt", data_cfg.source, SHAKESPEARE_URL, data_cfg.max_bytes).decode()
    tokenizer = CharTokenizer.from_text(text)
    split = int(len(text) * (1 - VAL_FRACTION))
    out = _fresh_dir(data_cfg)
    write_split(out, "train", tokenizer.encode(text[:split]))
    write_split(out, "val", tokenizer.encode(text[split:]))
    write_meta(out, vocab_size=tokenizer.vocab_size, tokenizer="char", chars=tokenizer.chars)


def prepare_shakespeare(data_cfg) -> None:
    text = locate_source("shakespeare", "tinyshakespeare/input.txt", data_cfg.source, SHAKESPEARE_URL, data_cfg.max_bytes).decode()
    tokenizer = GPT2Tokenizer(data_cfg.tokenizer_file)
    split = int(len(text) * (1 - VAL_FRACTION))
    out = _fresh_dir(data_cfg)
    write_split(out, "train", tokenizer.encode(text[:split]))
    write_split(out, "val", tokenizer.encode(text[split:]))
    write_meta(out, vocab_size=tokenizer.vocab_size, tokenizer="gpt2")


def prepare_tinystories(data_cfg) -> None:
    tokenizer = GPT2Tokenizer(data_cfg.tokenizer_file)
    splits = {}
    for split, url in TINYSTORIES_URLS.items():
        source = data_cfg.source and os.path.join(data_cfg.source, Path(url).name)
        raw = locate_source("tinystories", f"tinystories/{Path(url).name}", source, url, data_cfg.max_bytes)
        stories = [s.strip() for s in raw.decode(errors="ignore").split(EOT_TOKEN) if s.strip()]
        splits[split] = _join_documents(tokenizer.encode_batch(stories))
    out = _fresh_dir(data_cfg)
    for split, ids in splits.items():
        write_split(out, split, ids)
    write_meta(out, vocab_size=tokenizer.vocab_size, tokenizer="gpt2")


def prepare_openwebtext(data_cfg) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetUnavailable("data=openwebtext reads parquet shards; pip install pyarrow first.") from None
    import io

    tokenizer = GPT2Tokenizer(data_cfg.tokenizer_file)
    budget = data_cfg.max_bytes or float("inf")
    documents: list[str] = []
    shard = 0
    while budget > 0:
        relative = f"openwebtext/{shard:04d}.parquet"
        source = data_cfg.source and os.path.join(data_cfg.source, f"{shard:04d}.parquet")
        try:
            raw = locate_source("openwebtext", relative, source, OPENWEBTEXT_PARQUET.format(shard=shard), None)
        except DatasetUnavailable:
            if shard == 0:
                raise
            break  # past the last shard
        for text in pq.read_table(io.BytesIO(raw), columns=["text"]).column("text").to_pylist():
            documents.append(text)
            budget -= len(text)
            if budget <= 0:
                break
        shard += 1
    split = max(1, int(len(documents) * (1 - VAL_FRACTION)))
    out = _fresh_dir(data_cfg)
    write_split(out, "train", _join_documents(tokenizer.encode_batch(documents[:split])))
    write_split(out, "val", _join_documents(tokenizer.encode_batch(documents[split:] or documents[-1:])))
    write_meta(out, vocab_size=tokenizer.vocab_size, tokenizer="gpt2")


def _join_documents(token_lists: list[list[int]]) -> np.ndarray:
    """Documents separated by <|endoftext|>, as GPT-2 was trained."""
    total = sum(len(t) + 1 for t in token_lists)
    out = np.empty(total, dtype=np.uint16)
    pos = 0
    for tokens in token_lists:
        out[pos : pos + len(tokens)] = tokens
        out[pos + len(tokens)] = GPT2_EOT_ID
        pos += len(tokens) + 1
    return out


def _fresh_dir(data_cfg) -> Path:
    out = data_dir(data_cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    return out


PREPARERS: dict[str, Callable] = {
    "shakespeare_char": prepare_shakespeare_char,
    "shakespeare": prepare_shakespeare,
    "tinystories": prepare_tinystories,
    "openwebtext": prepare_openwebtext,
}
