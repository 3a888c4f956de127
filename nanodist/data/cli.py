"""The command-line face of dataset preparation, shared by every `data/<name>/prepare.py`.

    python data/<name>/prepare.py [key=value ...] [force=true]

Keys are the data.* settings preparation reads, written *without* the `data.` prefix (`dir=/scratch/sc`,
`source=/path/to/input.txt`, `tokenizer_file=...`, `max_bytes=1000000`); values follow Hydra's
override grammar (`null`, numbers, quoting). The prefix is dropped because the script only ever
sets its own dataset's node; `data.dir=...` is refused with a hint.
A relative `dir` is taken from the project root, as in training. `force=true` prepares again even
when the files are there; otherwise the script only fills in what is missing.

The config is composed exactly as `launch.py` composes it (conf/ with `data=<name>` and the
overrides), so the script writes the same files, to the same place, that training would read.
A bad argument or an unavailable source exits 2 with one sentence on stderr, like launch.py.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nanodist.config import register_configs
from nanodist.config.schema import DataConfig
from nanodist.data.prepare import (
    PROJECT_ROOT,
    DatasetUnavailable,
    data_dir,
    is_prepared,
    prepare_once,
)

CONF_DIR = PROJECT_ROOT / "conf"
SPLITS = ("train", "val")
# DataConfig fields preparation does not read: the preparers fix each dataset's tokenizer, and
# synthetic data has no files. Accepting them would silently ignore them.
FIXED_KEYS = ("tokenizer", "synthetic_vocab_size")
# The dataset itself is the script's own: overriding name would prepare another dataset into this one's place.
SETTABLE_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name not in ("name", *FIXED_KEYS))
ARGUMENT = re.compile(r"^(?P<key>[A-Za-z_]\w*)=(?P<value>.*)$", re.DOTALL)
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
USAGE = """usage: python data/{name}/prepare.py [key=value ...] [force=true]

Prepares data={name} (conf/data/{name}.yaml) into train.bin, val.bin and meta.json.
keys (data.* without the prefix): {keys}
  a relative dir is taken from the project root; values follow Hydra's override grammar
force=true  prepare again even when the files are there (default: only when missing)"""


class BadArgument(ValueError):
    """A command-line argument this script cannot use; the message is one sentence saying why."""


def main(name: str, argv: Optional[Sequence[str]] = None) -> int:
    """Prepare dataset `name` as `argv` says and report it; the exit status (0, or 2 on a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE.format(name=name, keys=", ".join(SETTABLE_KEYS)))
        return 0
    try:
        overrides, force = parse_arguments(name, argv)
        data_cfg = compose_data_config(name, overrides)
        meta, prepared_now = prepare(data_cfg, force)
    except (BadArgument, DatasetUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe(data_cfg, meta, prepared_now))
    return 0


def parse_arguments(name: str, argv: Sequence[str]) -> tuple[list[str], bool]:
    """Hydra overrides (`data.<key>=<value>`) and the force flag, checked here so that a typo gets
    one sentence naming the valid keys instead of Hydra's multi-line traceback."""
    overrides, force = [], False
    for arg in argv:
        match = ARGUMENT.match(arg)
        if arg.startswith("data.") and match is None:
            raise BadArgument(f"write {arg.removeprefix('data.')!r} instead of {arg!r}: keys go without the data. prefix.")
        if match is None:
            raise BadArgument(f"argument {arg!r} is not key=value with a key among {', '.join(SETTABLE_KEYS)} and force.")
        key, value = match["key"], match["value"]
        if key == "force":
            force = parse_flag(value)
        elif key == "name":
            raise BadArgument(f"this script prepares data={name}; run data/{value}/prepare.py for another dataset.")
        elif key in FIXED_KEYS:
            raise BadArgument(f"{key} is fixed by data={name}'s preparation (conf/data/{name}.yaml) and cannot be set here.")
        elif key not in SETTABLE_KEYS:
            raise BadArgument(f"unknown key {key!r} for data={name}; valid keys are {', '.join(SETTABLE_KEYS)} and force.")
        else:
            overrides.append(f"data.{key}={value}")
    return overrides, force


def parse_flag(value: str) -> bool:
    """force=true/false (also 1/0, yes/no), so a typo like force=ture is refused rather than read as false."""
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise BadArgument(f"force={value} is not a boolean; use force=true or force=false.")


def compose_data_config(name: str, overrides: list[str]) -> DictConfig:
    """The `data` node as launch.py would compose it, with every interpolation (data.dir) resolved,
    so a wrong type (max_bytes=lots) is refused before anything is written."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"data={name}", *overrides])
        data_cfg = cfg.data
        for key in SETTABLE_KEYS:
            getattr(data_cfg, key)  # resolve now: a bad interpolation is a bad argument too
    except (HydraException, OmegaConfBaseException) as err:
        raise BadArgument(one_sentence(err)) from None
    return data_cfg


def one_sentence(err: BaseException) -> str:
    """The innermost cause's first line, naming the key when OmegaConf knows it: Hydra wraps
    OmegaConf's precise message in several lines of its own."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    message = (lines[0] if lines else type(err).__name__).rstrip(".")
    key = str(getattr(err, "full_key", "") or "").removeprefix("data.")
    return f"{key} is invalid: {message}." if key else f"the arguments do not compose: {message}."


def prepare(data_cfg: DictConfig, force: bool) -> tuple[dict, bool]:
    """Prepare when forced or when the files are missing, under training's lock; (meta, whether it ran)."""
    ran = force or not is_prepared(data_cfg)
    return prepare_once(data_cfg, log=lambda line: print(line, flush=True), force=force), ran


def describe(data_cfg: DictConfig, meta: dict, prepared_now: bool) -> str:
    """Where the files are and how many tokens each split holds, as meta.json lists them."""
    out = data_dir(data_cfg)
    state = "prepared" if prepared_now else "already prepared (force=true prepares again)"
    lines = [f"data={data_cfg.name} {state} in {out}: vocab_size {meta['vocab_size']}, tokenizer {meta['tokenizer']}, "
             f"{meta['dtype']}"]
    for split in SPLITS:
        files = meta["files"][split]
        names = files[0]["name"] if len(files) == 1 else f"{files[0]['name']} .. {files[-1]['name']}"
        lines.append(f"  {names:<10}{sum(f['tokens'] for f in files):>14,} tokens")
    return "\n".join(lines)


def run(name: str) -> None:
    """Entry point for `data/<name>/prepare.py`: exit with main's status."""
    sys.exit(main(name))
