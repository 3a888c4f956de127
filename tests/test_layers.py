"""The package's layering, read from the source with `ast` (nothing is imported).

A module may import modules of its own layer or of a lower one, and no chain of imports may lead
back to where it started. Imports inside functions count: they run later, but still tie the layers
together, and deferring one is how a cycle used to be hidden rather than removed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional

PACKAGE = Path(__file__).resolve().parent.parent / "nanodist"

# Lowest first.
LAYERS = ("config", "data", "model", "parallel", "train", "tools", "plan", "launch")


def module_name(root: Path, path: Path) -> str:
    """nanodist/model/gpt.py is nanodist.model.gpt; nanodist/model/__init__.py is nanodist.model."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, name: str) -> bool:
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def imported_modules(root: Path, importer: str, is_package: bool, node: ast.AST) -> Iterator[str]:
    """The package's modules that one import statement loads.

    `from nanodist.model import GPT` loads nanodist.model (its __init__), while
    `from nanodist.model import gpt` loads the submodule nanodist.model.gpt.
    """
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = importer if is_package else importer.rpartition(".")[0]
            package = package.rsplit(".", node.level - 1)[0]
            base = f"{package}.{base}" if base else package
        # dict.fromkeys: `from nanodist.model import GPT, GPTConfig` is one import of nanodist.model.
        names = dict.fromkeys(f"{base}.{a.name}" if is_module(root, f"{base}.{a.name}") else base for a in node.names)
    else:
        return
    yield from (name for name in names if name == root.name or name.startswith(root.name + "."))


def package_imports(root: Path) -> list[tuple[str, int, str, str]]:
    """(file, line, importer, imported) for every import of one of the package's modules, nested ones included."""
    found = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(root, path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for imported in imported_modules(root, importer, path.name == "__init__.py", node):
                found.append((str(path.relative_to(root.parent)), node.lineno, importer, imported))
    return sorted(found)


def layer_of(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(root: Path) -> list[str]:
    """One line per import of a higher layer, or of a module that belongs to no layer."""
    offences = []
    for file, line, importer, imported in package_imports(root):
        low, high = layer_of(importer), layer_of(imported)
        if high is None:
            reason = f"{imported} is in no layer"
        elif low is None:
            reason = f"{importer} is in no layer"
        elif LAYERS.index(high) > LAYERS.index(low):
            reason = f"layer {high} above layer {low}"
        else:
            continue
        offences.append(f"{file}:{line} imports {imported} ({reason})")
    return offences


def import_cycles(root: Path) -> list[str]:
    """One "a -> b -> a" path per cycle found by a depth-first walk of the import graph."""
    graph: dict[str, set[str]] = {}
    for _, _, importer, imported in package_imports(root):
        graph.setdefault(importer, set()).add(imported)
    cycles, finished, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module):] + [module]))
        elif module not in finished:
            path.append(module)
            for imported in sorted(graph.get(module, ())):
                visit(imported)
            path.pop()
            finished.add(module)

    for module in sorted(graph):
        visit(module)
    return cycles


def write_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fake package under tmp_path from {relative path: source}; returns its root."""
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    return tmp_path / "nanodist"


def test_no_module_imports_a_higher_layer():
    offences = upward_imports(PACKAGE)
    assert not offences, "imports that break the layering:\n" + "\n".join(offences)


def test_no_import_cycle():
    cycles = import_cycles(PACKAGE)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_checker_reports_an_import_of_a_higher_layer(tmp_path):
    root = write_tree(tmp_path, {
        "nanodist/config/a.py": "import os\nfrom nanodist.train.b import run\n",
        "nanodist/train/b.py": "import nanodist.config.a\n\ndef run():\n    pass\n",
    })
    assert upward_imports(root) == ["nanodist/config/a.py:2 imports nanodist.train.b (layer train above layer config)"]


def test_checker_reports_a_cycle(tmp_path):
    root = write_tree(tmp_path, {
        "nanodist/model/a.py": "import nanodist.model.b\n",
        "nanodist/model/b.py": "from nanodist.model.a import x\n",
        "nanodist/model/c.py": "import nanodist.model.a\n",
    })
    assert import_cycles(root) == ["nanodist.model.a -> nanodist.model.b -> nanodist.model.a"]


def test_checker_reports_an_upward_import_inside_a_function(tmp_path):
    root = write_tree(tmp_path, {
        "nanodist/data/a.py": "def load():\n    from nanodist.parallel import dims\n",
        "nanodist/parallel/dims.py": "",
    })
    assert upward_imports(root) == ["nanodist/data/a.py:2 imports nanodist.parallel.dims (layer parallel above layer data)"]


def test_a_name_from_a_package_means_its_init_and_a_submodule_means_itself(tmp_path):
    """gpt.py taking GPT from nanodist.model closes a cycle through the __init__; flops.py taking the submodule does not."""
    root = write_tree(tmp_path, {
        "nanodist/model/__init__.py": "from nanodist.model.gpt import GPT\n",
        "nanodist/model/gpt.py": "def build():\n    from nanodist.model import GPT\n",
        "nanodist/model/flops.py": "from nanodist.model import gpt\n",
    })
    assert import_cycles(root) == ["nanodist.model -> nanodist.model.gpt -> nanodist.model"]


def test_relative_imports_resolve_against_the_importing_module(tmp_path):
    root = write_tree(tmp_path, {
        "nanodist/config/__init__.py": "from . import a\n",
        "nanodist/config/a.py": "from ..train import b\nfrom .schema import Config\n",
        "nanodist/config/schema.py": "",
        "nanodist/train/b.py": "",
    })
    assert [(importer, imported) for _, _, importer, imported in package_imports(root)] == [
        ("nanodist.config", "nanodist.config.a"),
        ("nanodist.config.a", "nanodist.train.b"),
        ("nanodist.config.a", "nanodist.config.schema"),
    ]
