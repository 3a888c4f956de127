"""Seeded synthetic corpora in the Hugging Face hub's layouts, for the data tests and benchmarks/prepare_scale.py.

Real TinyStories and OpenWebText cannot be committed or downloaded here, so these stand in for them:
the same files and formats (TinyStoriesV2-GPT4-{train,valid}.txt with `<|endoftext|>` between
stories; parquet shards with a `text` column under plain_text/train/), English-like words with some
non-ASCII characters (so that chunk boundaries can fall inside a UTF-8 character), any size.
A pool of stories is sampled with replacement, which writes gigabytes in seconds; tiktoken keeps no
cache, so repetition does not flatter its speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"
# Words of the commonest English kinds plus a few non-ASCII ones; the rest are made of syllables.
WORDS = ("the a and was she he they said one day happy little big dog cat sun tree play friend "
         "mom saw wanted went very had to of in it her his with café naïve — “hi”").split()
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "go", "hu", "ji", "zé", "ñа"]
POOL_STORIES = 4000


def story_pool(seed: int) -> list[str]:
    """POOL_STORIES stories of 3-12 sentences in two paragraphs, from a seeded RNG."""
    rng = np.random.default_rng(seed)
    made = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(1000)]
    words = np.array(WORDS * 40 + made)  # the common words are most of the text, as in English
    stories = []
    for _ in range(POOL_STORIES):
        sentences = [" ".join(rng.choice(words, size=rng.integers(4, 14))).capitalize() + "." for _ in range(rng.integers(3, 13))]
        cut = int(rng.integers(1, len(sentences)))
        stories.append(" ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:]))
    return stories


def stories(n_bytes: int, seed: int):
    """Stories (from the pool, seeded) until they hold about `n_bytes` of UTF-8 text."""
    pool = story_pool(seed)
    rng = np.random.default_rng(seed + 1)
    written = 0
    while written < n_bytes:
        for index in rng.integers(0, len(pool), size=1024):
            yield pool[index]
            written += len(pool[index].encode()) + len(EOT) + 2
            if written >= n_bytes:
                return


def write_tinystories(folder: Path, train_bytes: int, val_bytes: int, seed: int = 0) -> Path:
    """TinyStoriesV2-GPT4-train.txt and -valid.txt in `folder`, as the hub holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size, offset in (("train", train_bytes, 0), ("valid", val_bytes, 1000)):
        with open(folder / f"TinyStoriesV2-GPT4-{name}.txt", "w", encoding="utf-8") as f:
            for story in stories(size, seed + offset):
                f.write(f"{story}\n{EOT}\n")
    return folder


def write_openwebtext(folder: Path, n_bytes: int, shards: int = 2, seed: int = 0) -> Path:
    """plain_text/train/0000.parquet ... in `folder` (the hub's parquet conversion), a `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = folder / "plain_text" / "train"
    out.mkdir(parents=True, exist_ok=True)
    documents = list(stories(n_bytes, seed))
    for shard, part in enumerate(np.array_split(np.arange(len(documents)), shards)):
        table = pa.table({"text": [documents[i] for i in part]})
        pq.write_table(table, out / f"{shard:04d}.parquet", row_group_size=256)
    return folder
