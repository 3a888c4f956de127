"""Prepare data=openwebtext (conf/data/openwebtext.yaml) ahead of training: train.bin, val.bin and meta.json
in data/openwebtext/ (or dir=...), e.g. on a machine with internet, before runs that have none.

    python data/openwebtext/prepare.py [key=value ...] [force=true]

Keys are the data.* settings without the prefix (dir=..., source=..., max_bytes=...); see
nanodist/data/cli.py, which holds the logic every dataset's script shares.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root: runs without installation

from nanodist.data.cli import run  # noqa: E402

if __name__ == "__main__":
    run("openwebtext")
