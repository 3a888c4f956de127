"""Tokenizers: GPT-2 BPE through tiktoken (from a local ranks file when offline) and characters."""

from __future__ import annotations

import os
from typing import Optional

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from nanodist.data.errors import DatasetUnavailable

EOT_TOKEN = "<|endoftext|>"
GPT2_EOT_ID = 50256


class GPT2Tokenizer:
    """GPT-2's byte-level BPE. `ranks_file` (or $NANODIST_TIKTOKEN_FILE) lets it work without network."""

    vocab_size = GPT2_EOT_ID + 1

    def __init__(self, ranks_file: Optional[str] = None):
        ranks_file = ranks_file or os.environ.get("NANODIST_TIKTOKEN_FILE") or _mirrored_ranks_file()
        self.ranks_file = ranks_file  # what worker processes load too
        if ranks_file is None:
            try:
                self._enc = tiktoken.get_encoding("gpt2")  # downloads once into tiktoken's cache
            except OSError:  # requests' network errors are OSErrors; offline, tiktoken's own message is a traceback
                raise DatasetUnavailable(
                    "GPT-2's tokenizer could not be downloaded; set data.tokenizer_file (or $NANODIST_TIKTOKEN_FILE) "
                    "to a local gpt2.tiktoken ranks file.") from None
        else:
            self._enc = tiktoken.Encoding(
                name="gpt2",
                pat_str=r50k_pat_str,
                mergeable_ranks=load_tiktoken_bpe(ranks_file),
                special_tokens={EOT_TOKEN: GPT2_EOT_ID},
            )

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """One thread by default: preparation's parallelism is its worker processes (data.num_proc)."""
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)


class CharTokenizer:
    """One token per distinct character of the corpus, as in nanoGPT's shakespeare_char."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.vocab_size = len(chars)
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        return [self._index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def _mirrored_ranks_file() -> Optional[str]:
    mirror = os.environ.get("NANODIST_DATA_MIRROR")
    path = os.path.join(mirror, "gpt2", "gpt2.tiktoken") if mirror else None
    return path if path and os.path.exists(path) else None


def tokenizer_for(meta: dict, tokenizer_file: Optional[str] = None):
    """The tokenizer a dataset's (or checkpoint's) meta describes; None for synthetic tokens."""
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    if meta["tokenizer"] == "gpt2":
        return GPT2Tokenizer(tokenizer_file)
    return None
