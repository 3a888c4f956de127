"""Layer 1, the data: tokenizers, and corpus preparation (raw text -> train.bin / val.bin + meta.json)."""

from nanodist.data.prepare import (
    DatasetUnavailable,
    data_dir,
    ensure_prepared,
    is_prepared,
    prepare_once,
    read_meta,
)
from nanodist.data.tokenizer import CharTokenizer, GPT2Tokenizer, tokenizer_for

__all__ = [
    "CharTokenizer", "DatasetUnavailable", "GPT2Tokenizer", "data_dir", "ensure_prepared", "is_prepared", "prepare_once",
    "read_meta", "tokenizer_for",
]
