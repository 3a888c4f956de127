"""Where the big corpora come from, as streams of documents read through Hugging Face `datasets`.

Each file is looked for, in order: under `data.source` (a folder in the hub's layout), under
$NANODIST_DATA_MIRROR/<dataset>/, in the local Hugging Face hub cache, then on the hub itself
(streamed, so nothing the size of the corpus is cached on disk) unless HF_HUB_OFFLINE or
HF_DATASETS_OFFLINE is set. `datasets` streams local files too (`load_dataset("text" | "parquet",
data_files=..., streaming=True)`): no Arrow cache is built beside the output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Optional

from nanodist.data.errors import DatasetUnavailable
from nanodist.data.stream import Stream
from nanodist.data.tokenizer import EOT_TOKEN

TINYSTORIES_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "val": "TinyStoriesV2-GPT4-valid.txt"}
OPENWEBTEXT_HUB = "hf://datasets/Skylion007/openwebtext@~parquet/plain_text/train/*.parquet"
# OpenWebText has one split: every VAL_EVERY-th document goes to val (0.5%; nanoGPT holds out 0.05%).
VAL_EVERY = 200
# Read 1 MiB of text at a time, 4096 lines a batch, with Arrow's memory from the system allocator:
# measured on a 100 MB file, the reading process then stays at 380 MB resident, where datasets'
# defaults (10 MB chunks, Arrow's own pool) reach 580 MB and keep growing with the file.
TEXT_CHUNK_BYTES = 1 << 20
LINES_PER_BATCH = 4096


def offline() -> bool:
    return any(os.environ.get(var, "0").lower() in ("1", "true", "yes") for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def local_folders(name: str, source: Optional[str]) -> list[Path]:
    """data.source, else the mirror's <dataset>/ folder; data.source must exist when it is set."""
    if source:
        if not os.path.isdir(source):
            raise DatasetUnavailable(f"data.source={source} is not a folder; point it at a folder in the hub's layout for data={name}.")
        return [Path(source)]
    mirror = os.environ.get("NANODIST_DATA_MIRROR")
    return [Path(mirror) / name] if mirror and (Path(mirror) / name).is_dir() else []


def unavailable(name: str, wanted: str) -> DatasetUnavailable:
    how = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached"
    return DatasetUnavailable(f"data={name} found no {wanted} locally and {how}; set data.source to a folder holding it "
                              f"or $NANODIST_DATA_MIRROR to a folder holding {name}/{wanted}.")


def tinystories_streams(data_cfg) -> list[Stream]:
    """TinyStories' train and valid text files, stories separated by <|endoftext|>."""
    streams = []
    for split, filename in TINYSTORIES_FILES.items():
        path = next((str(f / filename) for f in local_folders("tinystories", data_cfg.source) if (f / filename).is_file()), None)
        path = path or cached_hub_file(TINYSTORIES_REPO, filename)
        if path is None and (offline() or data_cfg.source):
            raise unavailable("tinystories", filename)
        files = path or f"hf://datasets/{TINYSTORIES_REPO}/{filename}"
        size = os.path.getsize(path) if path else None
        streams.append(Stream(split, lambda skip, files=files: text_documents("tinystories", files, skip),
                              lambda i, split=split: split, size, "B"))
    return streams


def openwebtext_streams(data_cfg) -> list[Stream]:
    """OpenWebText's parquet shards (the hub's conversion, a `text` column), in name order, one stream."""
    folders = local_folders("openwebtext", data_cfg.source)
    files = sorted(str(p) for folder in folders for p in folder.glob("**/*.parquet"))
    if not files and (offline() or data_cfg.source):
        raise unavailable("openwebtext", "plain_text/train/*.parquet")
    total = None
    if files:
        import pyarrow.parquet as pq

        total = sum(pq.read_metadata(f).num_rows for f in files)
    split_of = lambda i: "val" if i % VAL_EVERY == VAL_EVERY - 1 else "train"  # noqa: E731
    return [Stream("train+val", lambda skip: parquet_documents("openwebtext", files or OPENWEBTEXT_HUB, skip),
                   split_of, total, "doc")]


def cached_hub_file(repo: str, filename: str) -> Optional[str]:
    """A file of a hub dataset already in the local hub cache (huggingface_hub's), offline or not."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, filename, repo_type="dataset")
    return path if isinstance(path, str) else None


def text_documents(name: str, files, skip: int) -> Iterator[str]:
    """The stripped, non-empty documents between <|endoftext|> markers, after the first `skip`.

    Lines keep their line breaks, so joining them gives the file's text back exactly."""
    batches = _remote_errors(name, lambda: _datasets().load_dataset(
        "text", data_files=files, split="train", streaming=True, keep_linebreaks=True, encoding_errors="ignore",
        chunksize=TEXT_CHUNK_BYTES,
    ).with_format("arrow").iter(batch_size=LINES_PER_BATCH))
    rest, index = "", 0
    for batch in batches:
        parts = (rest + "".join(batch.column("text").to_pylist())).split(EOT_TOKEN)
        rest = parts.pop()
        for doc in parts:
            if (doc := doc.strip()) and (index := index + 1) > skip:
                yield doc
    if (doc := rest.strip()) and index + 1 > skip:
        yield doc


def parquet_documents(name: str, files, skip: int) -> Iterator[str]:
    """The `text` column's documents in order, after the first `skip` (read, not tokenized)."""
    batches = _remote_errors(name, lambda: _datasets().load_dataset(
        "parquet", data_files=files, split="train", streaming=True, columns=["text"],
    ).skip(skip).with_format("arrow").iter(batch_size=1024))
    for batch in batches:
        yield from batch.column("text").to_pylist()


def _datasets():
    """The `datasets` module, imported when a big corpus is prepared (it costs a launch ~1 s otherwise),
    with Arrow allocating from the system allocator (see TEXT_CHUNK_BYTES)."""
    import datasets
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    return datasets


def _remote_errors(name: str, open_batches: Callable[[], Iterator]) -> Iterator:
    """The batches `open_batches` streams, with a failure to reach the source (no network, no such
    file on the hub) turned into the one-sentence error of an unavailable source."""
    try:
        yield from open_batches()
    except OSError:
        raise unavailable(name, "source files") from None
