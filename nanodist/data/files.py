"""The token files a prepared dataset lists in its meta.json: reading them as one array, and checking them.

meta.json (written last, so its presence marks a complete preparation) lists each split's files
in order with their token counts and SHA-256, and the dtype (uint16 while the vocabulary fits,
uint32 beyond). Training reads whatever is listed, one file or many shards, as one sequence of
tokens; before any rank starts it checks each file's size against its count (free) and, with
`data.verify=true`, its checksum (one read of every file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from nanodist.data.errors import DatasetUnavailable

# Bumped when the layout changes: a meta.json of another format is not a prepared dataset.
META_FORMAT = 2


def token_dtype(vocab_size: int) -> str:
    """The narrowest dtype holding every token id: two bytes a token for GPT-2's 50257."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def checksum(path: Path) -> str:
    """SHA-256 of a file, read in 8 MiB blocks so memory stays flat whatever its size."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_files(folder: Path, meta: dict, full: bool) -> None:
    """Raise DatasetUnavailable, in one sentence, when a listed file is missing, has the wrong size or
    (with `full`) the wrong checksum; a partial download or a disk error is caught before training."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for files in meta["files"].values():
        for entry in files:
            path = folder / entry["name"]
            fix = f"prepare it again with force=true (python data/{meta['name']}/prepare.py force=true)."
            if not path.is_file():
                raise DatasetUnavailable(f"{path} listed in meta.json is missing; {fix}")
            if path.stat().st_size != entry["tokens"] * itemsize:
                raise DatasetUnavailable(
                    f"{path} holds {path.stat().st_size} bytes but meta.json lists {entry['tokens']} tokens of "
                    f"{meta['dtype']}; {fix}")
            if full and checksum(path) != entry["sha256"]:
                raise DatasetUnavailable(f"{path} does not match its checksum in meta.json (data.verify=true); {fix}")


class TokenFiles:
    """A split's files, memmapped, read as one sequence: a window may span two shards, so sharded and
    unsharded preparations of one corpus give training the same batches."""

    def __init__(self, folder: Path, meta: dict, split: str):
        entries = meta["files"][split]
        self.parts = [np.memmap(folder / e["name"], dtype=meta["dtype"], mode="r") for e in entries if e["tokens"]]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens start .. start + length, as int64."""
        out, pos = [], start
        part = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < start + length:
            offset = pos - self.starts[part]
            piece = self.parts[part][offset : offset + start + length - pos]
            out.append(piece)
            pos += len(piece)
            part += 1
        return np.concatenate(out).astype(np.int64) if len(out) > 1 else out[0].astype(np.int64)
