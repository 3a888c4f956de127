"""Streaming preparation of the big corpora (tinystories, openwebtext) from local files in the hub's layout.

The corpora are small seeded stand-ins (benchmarks/corpus.py), a few MB: enough for several
pieces per run, so ordering, parallel workers, shards and resumption are all exercised.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED_DATA, launch, subprocess_env
from omegaconf import OmegaConf

sys.path.insert(0, str(ROOT))  # benchmarks/ is not a package on pytest's path

from benchmarks.corpus import write_openwebtext, write_tinystories  # noqa: E402
from benchmarks.prepare_scale import WHOLE_FILE, default_sigint  # noqa: E402
from nanodist.data.files import TokenFiles, token_dtype  # noqa: E402
from nanodist.data.tokenizer import GPT2_EOT_ID, GPT2Tokenizer  # noqa: E402
from nanodist.data.writer import SplitWriter  # noqa: E402
from nanodist.train.loader import BatchLayout, TokenLoader  # noqa: E402

TRAIN_FILE, VAL_FILE = "TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"


def prepare(name: str, *arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python data/<name>/prepare.py arguments...` as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "data" / name / "prepare.py"), *arguments], cwd=ROOT,
                          env={**subprocess_env(), **(env or {})}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """A 4 MB TinyStories-layout source and its preparation with 2 workers: (source, data dir, stdout)."""
    root = tmp_path_factory.mktemp("tinystories")
    source = write_tinystories(root / "source", 4_000_000, 400_000, seed=3)
    result = prepare("tinystories", f"dir={root / 'out'}", f"source={source}", "num_proc=2")
    assert result.returncode == 0, result.stderr
    return source, root / "out", result.stdout


def whole_file_tokens(source_file, tmp_path) -> bytes:
    """nanoGPT's way, the benchmark's reference: the whole file read, split, tokenized, written."""
    out = tmp_path / "whole.bin"
    subprocess.run([sys.executable, "-c", WHOLE_FILE, str(source_file), str(out)], cwd=ROOT, env=subprocess_env(), check=True)
    return out.read_bytes()


@pytest.mark.parametrize("split,source_file", [("train", TRAIN_FILE), ("val", VAL_FILE)])
def test_streamed_tokens_equal_whole_file_tokenization(stories, tmp_path, split, source_file):
    source, out, _ = stories
    assert (out / f"{split}.bin").read_bytes() == whole_file_tokens(source / source_file, tmp_path)


def test_preparation_logs_what_it_took_and_whether_a_cap_cut_it(stories, tmp_path):
    source, _, stdout = stories
    assert "of train: the whole source" in stdout
    capped = prepare("tinystories", f"dir={tmp_path}", f"source={source}", "max_bytes=500000", "num_proc=1")
    assert "of train: cut by data.max_bytes=500000" in capped.stdout, capped.stdout
    taken = json.loads((tmp_path / "meta.json").read_text())["taken"]["train"]
    assert 500_000 <= taken["bytes"] < 510_000 and taken["cut"]


def test_shards_hold_the_same_tokens_and_give_training_the_same_batches(stories, tmp_path):
    source, whole, _ = stories
    result = prepare("tinystories", f"dir={tmp_path}", f"source={source}", "shard_tokens=100000")
    assert result.returncode == 0, result.stderr
    shards = sorted(tmp_path.glob("train_*.bin"))
    assert len(shards) > 5 and b"".join(p.read_bytes() for p in shards) == (whole / "train.bin").read_bytes()

    def batch(folder):
        cfg = OmegaConf.create({"name": "tinystories", "dir": str(folder)})
        return TokenLoader(cfg, "train", 256, BatchLayout(16, 1, 1, 0), seed=0, vocab_size=50257).micro_batches(0)[0][0]

    assert torch.equal(batch(tmp_path), batch(whole))


@pytest.mark.parametrize("vocab_size,dtype", [(50257, "uint16"), (65536, "uint16"), (65537, "uint32"), (200_000, "uint32")])
def test_token_dtype_is_the_narrowest_that_holds_the_vocabulary(vocab_size, dtype):
    assert token_dtype(vocab_size) == dtype


def test_uint32_shards_read_back_as_one_sequence_across_their_boundaries(tmp_path):
    tokens = np.arange(70_000, 70_000 + 1000, dtype=np.int64)  # ids past uint16
    writer = SplitWriter(tmp_path, "train", "uint32", shard_tokens=300)
    writer.append(tokens[:450]), writer.append(tokens[450:])
    meta = {"dtype": "uint32", "files": {"train": writer.files}}
    files = TokenFiles(tmp_path, meta, "train")
    assert [f["tokens"] for f in writer.files] == [300, 300, 300, 100] and len(files) == 1000
    assert np.array_equal(files.window(250, 400), tokens[250:650])


def test_an_interrupted_preparation_resumes_where_it_stopped_with_identical_files(stories, tmp_path):
    source, whole, _ = stories
    cmd = [sys.executable, str(ROOT / "data" / "tinystories" / "prepare.py"), f"dir={tmp_path}", f"source={source}", "num_proc=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=default_sigint)  # SIGINT works even when the tests run in the background
    while proc.poll() is None and not (tmp_path / ".progress.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # after the first piece: the rest is still to do
    assert proc.wait(timeout=60) != 0 and not (tmp_path / "meta.json").exists()
    done = json.loads((tmp_path / ".progress.json").read_text())["streams"]["train"]["documents"]
    rerun = prepare("tinystories", f"dir={tmp_path}", f"source={source}", "num_proc=2")
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {done:,} documents already done" in rerun.stdout and done > 0
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / name).read_bytes() == (whole / name).read_bytes()


@pytest.fixture(scope="module")
def openwebtext(tmp_path_factory):
    """A 1.5 MB OpenWebText-layout source (two parquet shards) and its preparation: (source, data dir)."""
    root = tmp_path_factory.mktemp("openwebtext")
    source = write_openwebtext(root / "source", 1_500_000, shards=2, seed=5)
    result = prepare("openwebtext", f"dir={root / 'out'}", f"source={source}", "num_proc=2")
    assert result.returncode == 0, result.stderr
    return source, root / "out"


@pytest.mark.parametrize("split,goes_there", [("train", lambda i: i % 200 != 199), ("val", lambda i: i % 200 == 199)])
def test_openwebtext_parquet_shards_prepare_with_every_200th_document_in_val(openwebtext, split, goes_there):
    import pyarrow.parquet as pq

    source, out = openwebtext
    docs = [d for f in sorted(source.glob("**/*.parquet")) for d in pq.read_table(f).column("text").to_pylist()]
    tok = GPT2Tokenizer(str(SHARED_DATA / "gpt2" / "gpt2.tiktoken"))
    expected = [t for i, d in enumerate(docs) if goes_there(i) for t in tok.encode(d) + [GPT2_EOT_ID]]
    assert np.array_equal(np.fromfile(out / f"{split}.bin", dtype=np.uint16), expected)


@pytest.mark.parametrize("name", ["tinystories", "openwebtext"])
def test_training_runs_on_a_prepared_corpus(request, tmp_path, name):
    folder = request.getfixturevalue("stories" if name == "tinystories" else "openwebtext")[1]
    launch(tmp_path, "model=nano", f"data={name}", f"data.dir={folder}", "train=smoke", "train.max_steps=2", "data.verify=true")
    assert (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("damage,verify,says", [("flip", "true", "checksum"), ("truncate", "false", "bytes but meta.json lists")])
def test_a_damaged_token_file_is_refused_in_one_sentence_before_any_rank_starts(stories, tmp_path, damage, verify, says):
    folder = shutil.copytree(stories[1], tmp_path / "data")
    data = bytearray((folder / "train.bin").read_bytes())
    data[1000] ^= 0xFF
    (folder / "train.bin").write_bytes(data if damage == "flip" else data[:-2])
    result = launch(tmp_path / "run", "model=nano", "data=tinystories", f"data.dir={folder}", f"data.verify={verify}",
                    "parallel=ddp", "mesh.dp_replicate=2", "train=smoke", check=False)
    assert result.returncode == 2 and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list((tmp_path / "run").glob("rank*.log"))


def test_gpt2_tokenizer_offline_without_a_ranks_file_says_what_to_set(tmp_path):
    mirror = tmp_path / "mirror" / "tinyshakespeare"
    mirror.mkdir(parents=True)
    shutil.copy(SHARED_DATA / "tinyshakespeare" / "input.txt", mirror)
    env = {"NANODIST_DATA_MIRROR": str(tmp_path / "mirror"), "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NANODIST_TIKTOKEN_FILE": ""}
    result = prepare("shakespeare", f"dir={tmp_path / 'out'}", env=env)
    assert result.returncode == 2 and "data.tokenizer_file" in result.stderr and "NANODIST_TIKTOKEN_FILE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_offline_corpus_with_no_local_files_says_what_to_set(tmp_path):
    env = {"NANODIST_DATA_MIRROR": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = prepare("tinystories", f"dir={tmp_path / 'out'}", env=env)
    assert result.returncode == 2 and "data.source" in result.stderr and "NANODIST_DATA_MIRROR" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
