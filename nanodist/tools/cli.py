"""The key=value command lines of the tools (export, sample), parsed as Hydra's look but kept literal."""

from __future__ import annotations

import sys
from typing import Callable


def parse_key_values(argv: list[str], options: dict[str, Callable], defaults: dict | None = None) -> dict:
    """key=value arguments, as Hydra's command line takes them, but values stay literal (a prompt is text)."""
    args = dict(defaults or {})
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            sys.exit(f"error: {arg!r} is not one of {', '.join(k + '=...' for k in options)}.")
        args[key] = options[key](value)
    missing = [k for k in options if k not in args]
    if missing:
        sys.exit(f"error: give {', '.join(k + '=...' for k in missing)}.")
    return args
