"""Appending tokens to a split's output files as they come, optionally in shards, resumably.

A writer's state is the list of its files with the tokens each holds; preparation saves it after
every piece it writes (nanodist/data/stream.py). After an interruption the files are cut back to
that state, which drops a half-written piece, and writing goes on from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from nanodist.data.files import checksum
from nanodist.data.tokenizer import GPT2_EOT_ID


class SplitWriter:
    """One split's .bin files: `<split>.bin`, or `<split>_0000.bin`, `<split>_0001.bin`, ... of
    `shard_tokens` tokens each (the last shorter) when sharded."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: Optional[int], files: Optional[list] = None):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, np.dtype(dtype), shard_tokens
        self.files = [dict(entry) for entry in files or []]
        self._restore()

    def _restore(self) -> None:
        """Cut each listed file back to its recorded length and delete any later shard, so a piece
        written after the last saved state is gone; with no state, start empty."""
        if not self.files:
            self.files.append({"name": self._name(0), "tokens": 0})
        listed = {entry["name"] for entry in self.files}
        for stale in self.folder.glob(f"{self.split}*.bin"):
            if stale.name not in listed:
                stale.unlink()
        for entry in self.files:
            with open(self.folder / entry["name"], "ab") as f:
                f.truncate(entry["tokens"] * self.dtype.itemsize)

    def _name(self, index: int) -> str:
        return f"{self.split}.bin" if self.shard_tokens is None else f"{self.split}_{index:04d}.bin"

    def append(self, tokens: np.ndarray) -> None:
        """Write `tokens` after the last ones, starting a new shard whenever one fills up."""
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            entry = self.files[-1]
            room = len(tokens) if self.shard_tokens is None else self.shard_tokens - entry["tokens"]
            if room == 0:
                self.files.append({"name": self._name(len(self.files)), "tokens": 0})
                continue
            with open(self.folder / entry["name"], "ab") as f:
                tokens[:room].tofile(f)
            entry["tokens"] += min(room, len(tokens))
            tokens = tokens[room:]

    @property
    def tokens(self) -> int:
        return sum(entry["tokens"] for entry in self.files)

    def listing(self) -> list[dict]:
        """The files for meta.json, each with its SHA-256 (one more read of what was written)."""
        return [{**entry, "sha256": checksum(self.folder / entry["name"])} for entry in self.files]


def join_documents(token_lists: list[list[int]], dtype: str = "uint16") -> np.ndarray:
    """Documents each followed by <|endoftext|>, as GPT-2 was trained (and nanoGPT prepares)."""
    out = np.empty(sum(len(t) + 1 for t in token_lists), dtype=dtype)
    pos = 0
    for tokens in token_lists:
        out[pos : pos + len(tokens)] = tokens
        out[pos + len(tokens)] = GPT2_EOT_ID
        pos += len(tokens) + 1
    return out
