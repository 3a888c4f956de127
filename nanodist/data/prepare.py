"""Dataset preparation: raw text -> token files + meta.json (nanodist/data/files.py describes them).

Each dataset has one `prepare_*` function; `data/<name>/prepare.py` is its command-line face and
training calls `prepare_once` before any rank starts. Tiny Shakespeare (1 MB) is read whole, from
an explicit path, the mirror folder $NANODIST_DATA_MIRROR (<mirror>/tinyshakespeare/input.txt), then
its public URL. The big corpora stream (nanodist/data/stream.py): memory stays bounded, workers
tokenize in parallel, and an interrupted preparation resumes.
"""

from __future__ import annotations

import fcntl
import json
import os
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from nanodist.data.errors import DatasetUnavailable
from nanodist.data.files import META_FORMAT, check_files, token_dtype
from nanodist.data.sources import openwebtext_streams, tinystories_streams
from nanodist.data.stream import PROGRESS, prepare_streams
from nanodist.data.tokenizer import CharTokenizer, GPT2Tokenizer
from nanodist.data.writer import SplitWriter

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
VAL_FRACTION = 0.1

__all__ = ["DatasetUnavailable", "data_dir", "ensure_prepared", "is_prepared", "prepare_once", "read_meta"]


def data_dir(data_cfg) -> Path:
    path = Path(data_cfg.dir)
    return path if path.is_absolute() else PROJECT_ROOT / path


def is_prepared(data_cfg) -> bool:
    """A meta.json of this format (an older layout, or an interrupted preparation, prepares again)."""
    if data_cfg.name == "synthetic":
        return True
    path = data_dir(data_cfg) / "meta.json"
    return path.exists() and json.loads(path.read_text()).get("format") == META_FORMAT


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
        PREPARERS[data_cfg.name](data_cfg, log)
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
        meta = ensure_prepared(data_cfg, log=log, force=force)
    # Sizes always (free), checksums when asked: a truncated or corrupted file stops the run here,
    # before any rank starts, rather than as garbage batches or a crash inside one.
    check_files(out, meta, full=data_cfg.verify)
    return meta


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


def write_whole(data_cfg, vocab_size: int, splits: dict, **meta) -> None:
    """Token arrays of a small corpus, one per split, as the files and meta.json streaming writes."""
    out = _fresh_dir(data_cfg)
    dtype = token_dtype(vocab_size)
    writers = {split: SplitWriter(out, split, dtype, data_cfg.shard_tokens) for split in splits}
    for split, ids in splits.items():
        writers[split].append(ids)
    listing = {split: writer.listing() for split, writer in writers.items()}
    (out / "meta.json").write_text(json.dumps({"format": META_FORMAT, "name": data_cfg.name, "vocab_size": vocab_size,
                                               "dtype": dtype, "files": listing, **meta}, indent=1))


def prepare_shakespeare_char(data_cfg) -> None:
    text = locate_source("shakespeare_char", "tinyshakespeare/input.txt", data_cfg.source, SHAKESPEARE_URL, data_cfg.max_bytes).decode()
    tokenizer = CharTokenizer.from_text(text)
    split = int(len(text) * (1 - VAL_FRACTION))
    splits = {"train": tokenizer.encode(text[:split]), "val": tokenizer.encode(text[split:])}
    write_whole(data_cfg, tokenizer.vocab_size, {k: np.asarray(v) for k, v in splits.items()}, tokenizer="char", chars=tokenizer.chars)


def prepare_shakespeare(data_cfg) -> None:
    text = locate_source("shakespeare", "tinyshakespeare/input.txt", data_cfg.source, SHAKESPEARE_URL, data_cfg.max_bytes).decode()
    tokenizer = GPT2Tokenizer(data_cfg.tokenizer_file)
    split = int(len(text) * (1 - VAL_FRACTION))
    splits = {"train": tokenizer.encode(text[:split]), "val": tokenizer.encode(text[split:])}
    write_whole(data_cfg, tokenizer.vocab_size, {k: np.asarray(v) for k, v in splits.items()}, tokenizer="gpt2")


def prepare_tinystories(data_cfg, log: Callable[[str], None]) -> None:
    # Sources and tokenizer first: when either is missing, the prepared files stay as they were.
    streams, tokenizer = tinystories_streams(data_cfg), GPT2Tokenizer(data_cfg.tokenizer_file)
    prepare_streams(_fresh_dir(data_cfg, keep_progress=True), streams, tokenizer, data_cfg, log)


def prepare_openwebtext(data_cfg, log: Callable[[str], None]) -> None:
    # Sources and tokenizer first: when either is missing, the prepared files stay as they were.
    streams, tokenizer = openwebtext_streams(data_cfg), GPT2Tokenizer(data_cfg.tokenizer_file)
    prepare_streams(_fresh_dir(data_cfg, keep_progress=True), streams, tokenizer, data_cfg, log)


def _fresh_dir(data_cfg, keep_progress: bool = False) -> Path:
    """The data dir without its meta.json (so an interrupted preparation is never taken for a finished
    one) and, unless this preparation can resume, without an interrupted one's progress."""
    out = data_dir(data_cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    if not keep_progress:
        (out / PROGRESS).unlink(missing_ok=True)
    return out


PREPARERS: dict[str, Callable] = {
    "shakespeare_char": lambda data_cfg, log: prepare_shakespeare_char(data_cfg),
    "shakespeare": lambda data_cfg, log: prepare_shakespeare(data_cfg),
    "tinystories": prepare_tinystories,
    "openwebtext": prepare_openwebtext,
}
