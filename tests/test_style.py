"""Size limits on nanodist/: a function fits on a screen and a file can be read in one sitting.

A function's length runs from its `def` line (decorators not counted) to its last line, nested
functions included; a file's is its number of lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nanodist"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def long_functions(root: Path) -> list[str]:
    """"path:line name N lines" for every function or method longer than MAX_FUNCTION_LINES."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        nodes = ast.walk(ast.parse(path.read_text(), str(path)))
        for node in sorted((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), key=lambda n: n.lineno):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                offenders.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} {length} lines")
    return offenders


def long_files(root: Path) -> list[str]:
    """"path N lines" for every file longer than MAX_FILE_LINES."""
    lengths = {path: len(path.read_text().splitlines()) for path in sorted(root.rglob("*.py"))}
    return [f"{path.relative_to(root.parent)} {n} lines" for path, n in lengths.items() if n > MAX_FILE_LINES]


def function_source(name: str, lines: int) -> str:
    return f"def {name}():\n" + "    x = 1\n" * (lines - 1)


def test_no_function_is_longer_than_the_limit():
    offenders = long_functions(PACKAGE)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_no_file_is_longer_than_the_limit():
    offenders = long_files(PACKAGE)
    assert not offenders, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(offenders)


def test_checker_reports_a_61_line_function_but_not_a_60_line_one(tmp_path):
    (tmp_path / "nanodist").mkdir()
    (tmp_path / "nanodist" / "a.py").write_text(function_source("short", 60) + function_source("long", 61))
    assert long_functions(tmp_path / "nanodist") == ["nanodist/a.py:61 long 61 lines"]


def test_checker_reports_a_401_line_file_but_not_a_400_line_one(tmp_path):
    (tmp_path / "nanodist").mkdir()
    (tmp_path / "nanodist" / "short.py").write_text("x = 1\n" * 400)
    (tmp_path / "nanodist" / "long.py").write_text("x = 1\n" * 401)
    assert long_files(tmp_path / "nanodist") == ["nanodist/long.py 401 lines"]
