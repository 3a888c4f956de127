"""Preparation at scale: a seeded 2 GB TinyStories-layout corpus through data/tinystories/prepare.py.

    python benchmarks/prepare_scale.py [--gb 2] [--slice-mb 200] [--workdir DIR]

Prints, for each run, wall time, MB/s of source text and the peak resident memory summed over
the preparing processes (the main one and its tokenizing workers, sampled every 0.1 s from
/proc), plus what else was left on disk (the Hugging Face datasets cache, set to a folder of its
own). Runs: the whole corpus with 2 workers; a 200 MB slice with 1 and 2 workers, and the same
slice prepared nanoGPT's way (the whole file read, split and tokenized in memory, then written),
whose train.bin must be identical; then the slice interrupted (SIGINT) halfway and rerun, which
must finish with identical files in less time than from zero. Everything is written under a
temporary folder and deleted (--keep keeps it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import EOT, write_tinystories  # noqa: E402

TRAIN, VALID = "TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"
WHOLE_FILE = """
import sys, numpy as np
from nanodist.data.tokenizer import GPT2Tokenizer
tok = GPT2Tokenizer()
text = open(sys.argv[1], encoding="utf-8").read()
docs = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
ids = tok.encode_batch(docs, num_threads=1)
out = np.concatenate([np.array(t + [50256], dtype=np.uint16) for t in ids])
out.tofile(sys.argv[2])
"""


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            rss = next(line for line in Path(f"/proc/{p}/status").read_text().splitlines() if line.startswith("VmRSS"))
            total += int(rss.split()[1]) * 1024
        except (OSError, StopIteration):
            continue
    return total


def default_sigint() -> None:
    """SIGINT back to its default in the child: a shell starts background jobs (`... &`, nohup) with
    it ignored, which the child would inherit, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def measure(cmd: list[str], env: dict, stop_when=None) -> dict:
    """Run `cmd`, sampling its process tree's summed RSS; `stop_when()` true sends SIGINT."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=default_sigint)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            if stop_when is not None and stop_when():
                proc.send_signal(signal.SIGINT)
                return
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out = proc.communicate()[0]
    sampler.join()
    return {"seconds": time.perf_counter() - start, "peak_rss": peak[0], "rc": proc.returncode, "stdout": out}


def prepare(source: Path, out: Path, workers: int, env: dict, stop_when=None) -> dict:
    cmd = [sys.executable, "data/tinystories/prepare.py", f"dir={out}", f"source={source}", f"num_proc={workers}"]
    return measure(cmd, env, stop_when)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report(label: str, result: dict, mb: float) -> None:
    print(f"{label:<44} {result['seconds']:7.1f} s {mb / result['seconds']:6.2f} MB/s  "
          f"peak RSS (all processes) {result['peak_rss'] / 2**20:7.0f} MiB  rc {result['rc']}", flush=True)


def make_slice(corpus: Path, folder: Path, n_bytes: int) -> Path:
    """The first ~n_bytes of the corpus's train file, cut after an <|endoftext|> line, and its valid file."""
    folder.mkdir()
    with open(corpus / TRAIN, "rb") as f:
        head = f.read(n_bytes)
    (folder / TRAIN).write_bytes(head[: head.rindex(EOT.encode()) + len(EOT) + 1])
    shutil.copy(corpus / VALID, folder / VALID)
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--slice-mb", type=int, default=200)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare_scale_", dir=args.workdir))
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf_cache"), "PYTHONUNBUFFERED": "1"}
    try:
        run(args, work, env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, env: dict) -> None:
    start = time.perf_counter()
    corpus = write_tinystories(work / "corpus", int(args.gb * 1e9), 10_000_000, seed=0)
    total_mb = folder_bytes(corpus) / 1e6
    print(f"generated {total_mb:,.0f} MB of TinyStories-layout text in {time.perf_counter() - start:.0f} s", flush=True)
    full = prepare(corpus, work / "full", 2, env)
    report(f"whole corpus ({total_mb:,.0f} MB), 2 workers", full, total_mb)
    bins = sum(p.stat().st_size for p in (work / "full").glob("*.bin"))
    print(f"  output {bins / 1e6:,.0f} MB of .bin; beside it {folder_bytes(work / 'full') - bins:,} bytes; "
          f"datasets cache {folder_bytes(work / 'hf_cache') if (work / 'hf_cache').exists() else 0:,} bytes", flush=True)
    print("  " + full["stdout"].strip().replace("\n", "\n  "), flush=True)
    shutil.rmtree(work / "full")
    piece = make_slice(corpus, work / "slice", args.slice_mb * 1_000_000)
    slice_mb = folder_bytes(piece) / 1e6
    for workers in (1, 2):
        result = prepare(piece, work / f"slice{workers}", workers, env)
        report(f"{slice_mb:,.0f} MB slice, {workers} worker{'s' * (workers > 1)}", result, slice_mb)
    whole = measure([sys.executable, "-c", WHOLE_FILE, str(piece / TRAIN), str(work / "whole_train.bin")], env)
    report(f"{slice_mb:,.0f} MB slice train file, nanoGPT-style whole file", whole, (piece / TRAIN).stat().st_size / 1e6)
    same = sha(work / "whole_train.bin") == sha(work / "slice2" / "train.bin")
    print(f"  streaming train.bin identical to the whole-file one: {same}", flush=True)
    resume(piece, work, env, slice_mb, uninterrupted=result["seconds"])


def resume(piece: Path, work: Path, env: dict, slice_mb: float, uninterrupted: float) -> None:
    """SIGINT halfway through the slice, then rerun: identical files, and the time it saved."""
    out = work / "resumed"
    progress = out / ".progress.json"
    half = (piece / TRAIN).stat().st_size / 2

    def halfway() -> bool:
        try:
            done = json.loads(progress.read_text())["streams"].get("train", {}).get("bytes", 0)
        except (OSError, ValueError):
            return False
        return done >= half

    first = prepare(piece, out, 2, env, stop_when=halfway)
    report("slice, interrupted halfway (SIGINT)", first, slice_mb)
    second = prepare(piece, out, 2, env)
    report("slice, rerun after the interruption", second, slice_mb)
    same = all(sha(out / name) == sha(work / "slice2" / name) for name in ("train.bin", "val.bin"))
    print(f"  rerun output identical to the uninterrupted run: {same}; "
          f"{'resumed' if 'resuming' in second['stdout'] else 'did NOT resume'}; the rerun took "
          f"{second['seconds']:.1f} s against {uninterrupted:.1f} s from zero ({uninterrupted - second['seconds']:.1f} s saved)",
          flush=True)


if __name__ == "__main__":
    main()
