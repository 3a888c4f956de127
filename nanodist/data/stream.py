"""Streaming preparation: documents in, tokens out, memory bounded by a few pieces, resumable.

The main process reads each source's documents in order (nanodist/data/sources.py) and cuts them
into pieces of about PIECE_BYTES of text; `data.num_proc` worker processes tokenize pieces with
tiktoken; the main process appends each piece's tokens, in order, to the split files. At most
two pieces per worker are in flight, so memory is a few pieces whatever the corpus size.

After every piece written, `.progress.json` records how many documents of each source are done
and the files' lengths. A rerun with the same settings cuts the files back to those lengths, skips
the documents already done (reading them, not tokenizing them, which is most of the cost) and goes
on; meta.json, written last with each file's token count and checksum, marks the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from tqdm import tqdm

from nanodist.data.files import META_FORMAT, token_dtype
from nanodist.data.tokenizer import GPT2Tokenizer
from nanodist.data.writer import SplitWriter, join_documents

PIECE_BYTES = 1 << 20
PROGRESS = ".progress.json"


@dataclass
class Stream:
    """One source read in order: `documents(skip)` yields its documents after the first `skip`;
    `split_of(i)` says which split document i goes to; `total` sizes the progress bar, in `unit`s."""

    key: str
    documents: Callable[[int], Iterator[str]]
    split_of: Callable[[int], str]
    total: Optional[int]
    unit: str


_worker_tokenizer: Optional[GPT2Tokenizer] = None


def _start_worker(ranks_file: Optional[str]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = GPT2Tokenizer(ranks_file)


def _encode(piece: dict[str, list[str]], dtype: str) -> dict:
    """A piece's documents, per split, as one token array each (EOT after every document)."""
    return {split: join_documents(_worker_tokenizer.encode_batch(docs), dtype) for split, docs in piece.items()}


def prepare_streams(out: Path, streams: list[Stream], tokenizer: GPT2Tokenizer, data_cfg, log: Callable[[str], None]) -> dict:
    """Prepare `streams` into `out` (resuming a matching interrupted run); returns the meta written."""
    dtype = token_dtype(tokenizer.vocab_size)
    settings = {"format": META_FORMAT, "name": data_cfg.name, "source": data_cfg.source, "max_bytes": data_cfg.max_bytes,
                "shard_tokens": data_cfg.shard_tokens, "streams": [s.key for s in streams]}
    progress = _load_progress(out, settings, log)
    writers = {split: SplitWriter(out, split, dtype, data_cfg.shard_tokens, progress["files"].get(split))
               for split in ("train", "val")}
    nproc = data_cfg.num_proc or min(8, os.cpu_count() or 1)
    with multiprocessing.get_context("spawn").Pool(nproc, _start_worker, (tokenizer.ranks_file,)) as pool:
        for stream in streams:
            done = progress["streams"].setdefault(stream.key, {"documents": 0, "bytes": 0, "tokens": 0, "cut": False})
            if not done.get("finished"):
                _run_stream(pool, nproc, stream, done, writers, dtype, data_cfg.max_bytes, lambda: _save(out, progress, writers))
            log(_taken(stream.key, done, data_cfg.max_bytes))
    meta = {**settings, "vocab_size": tokenizer.vocab_size, "tokenizer": "gpt2", "dtype": dtype,
            "taken": progress["streams"], "files": {split: w.listing() for split, w in writers.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    (out / PROGRESS).unlink(missing_ok=True)
    return meta


def _run_stream(pool, nproc: int, stream: Stream, done: dict, writers: dict, dtype: str, max_bytes: Optional[int], save) -> None:
    """Tokenize `stream` from where `done` says, writing each piece in order and saving progress after it."""
    pending: deque = deque()
    bar = tqdm(total=min(stream.total, max_bytes) if stream.total and max_bytes and stream.unit == "B" else stream.total,
               initial=done["bytes" if stream.unit == "B" else "documents"], unit=stream.unit, unit_scale=True,
               desc=f"tokenizing {stream.key}", mininterval=1.0, smoothing=0.1)

    def write_oldest() -> None:
        result, documents, size = pending.popleft()
        arrays = result.get()
        for split, tokens in arrays.items():
            writers[split].append(tokens)
        done["documents"] += documents
        done["bytes"] += size
        done["tokens"] += sum(len(tokens) for tokens in arrays.values())
        save()
        bar.update(size if stream.unit == "B" else documents)
        bar.set_postfix_str(f"{done['tokens']:,} tokens")

    for piece, documents, size in _pieces(stream, done, max_bytes):
        pending.append((pool.apply_async(_encode, (piece, dtype)), documents, size))
        if len(pending) >= 2 * nproc:
            write_oldest()
    while pending:
        write_oldest()
    done["finished"] = True
    save()
    bar.close()


def _pieces(stream: Stream, done: dict, max_bytes: Optional[int]) -> Iterator[tuple[dict, int, int]]:
    """(documents by split, document count, text bytes) of about PIECE_BYTES each, from document
    `done["documents"]` on, until the source ends or `max_bytes` of it are taken (whole documents)."""
    index, taken = done["documents"], done["bytes"]
    piece: dict[str, list[str]] = {}
    count = size = 0
    for doc in stream.documents(index):
        if max_bytes is not None and taken >= max_bytes:
            done["cut"] = True
            break
        length = len(doc.encode())
        piece.setdefault(stream.split_of(index), []).append(doc)
        index, taken, count, size = index + 1, taken + length, count + 1, size + length
        if size >= PIECE_BYTES:
            yield piece, count, size
            piece, count, size = {}, 0, 0
    if count:
        yield piece, count, size


def _taken(key: str, done: dict, max_bytes: Optional[int]) -> str:
    cut = f"cut by data.max_bytes={max_bytes}" if done["cut"] else "the whole source"
    return f"took {done['bytes']:,} bytes, {done['documents']:,} documents, {done['tokens']:,} tokens of {key}: {cut}"


def _load_progress(out: Path, settings: dict, log: Callable[[str], None]) -> dict:
    """An interrupted run's progress when its settings match these; otherwise a fresh start."""
    path = out / PROGRESS
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            log(f"resuming: {sum(s['documents'] for s in saved['streams'].values()):,} documents already done")
            return saved
        log("an interrupted preparation with other settings is there; starting over")
    return {"settings": settings, "streams": {}, "files": {}}


def _save(out: Path, progress: dict, writers: dict) -> None:
    """Record progress atomically (write, then rename), after the tokens it counts are on file."""
    progress["files"] = {split: writer.files for split, writer in writers.items()}
    tmp = out / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(progress))
    os.replace(tmp, out / PROGRESS)
