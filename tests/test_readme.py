"""The README's examples, run for real: every `python launch.py` and `torchrun` command it shows.

Commands come from README.md's fenced code blocks and from the example column of its strategy
table (backtick-quoted commands in table rows; inline code in prose is not an example). Each one
runs as written with SHORT appended (a few steps; later overrides win in Hydra) in a temporary run
dir (a sweep dir for `-m`), and must finish every run it starts, so that an example that stops
working fails the suite.

Left out, and why:
- commands with a placeholder (`<date>`, `<run>`, ...): not runnable as written (dropped when extracted);
- SLURM lines (`hydra/launcher=slurm`): their partition and cluster are the user's;
- `experiment=strategy_grid`: 32 jobs, far too long for a test (test_sweep.py covers sweeps);
- `make ...` and the tools' commands (`python -m nanodist.tools...`), which are not launch.py commands;
  `test_every_module_and_script_the_readme_runs_exists` checks that those at least exist.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from conftest import ROOT, subprocess_env

README = ROOT / "README.md"

# Appended to every command: two steps with an eval, a log line and a sample each, no checkpoint.
SHORT = ["train.max_steps=2", "train.eval_interval=2", "train.eval_iters=1", "train.log_interval=1",
         "train.sample_tokens=5", "checkpoint.enabled=false"]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


def is_example(command: str) -> bool:
    return command == "python launch.py" or command.startswith(("python launch.py ", "torchrun "))


def fenced_commands(markdown: str) -> list[str]:
    """Each `python` / `torchrun` line of the fenced code blocks, backslash continuations joined,
    comments dropped (other lines, such as a diagram's, are not shell)."""
    commands = []
    for block in FENCE.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            if line.split(" ", 1)[0] in ("python", "torchrun"):
                commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


def table_commands(markdown: str) -> list[str]:
    """The backtick-quoted code of every table row."""
    return [code for line in markdown.splitlines() if line.lstrip().startswith("|") for code in INLINE_CODE.findall(line)]


def readme_examples(markdown: str) -> list[str]:
    """The runnable `python launch.py` / `torchrun` commands of a README, in order, each once."""
    found = [c for c in fenced_commands(markdown) + table_commands(markdown) if is_example(c)]
    return list(dict.fromkeys(c for c in found if not PLACEHOLDER.search(c)))


def left_out(command: str) -> Optional[str]:
    """Why an example is not run here, or None when it is."""
    if "hydra/launcher=slurm" in command:
        return "submits to SLURM, whose partition is the user's"
    if "experiment=strategy_grid" in command:
        return "32 jobs: too long for a test"
    return None


def is_sweep(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


def starts_several_ranks(args: list[str]) -> bool:
    """Whether a README command starts more than one rank: torchrun with more than one process, or a
    mesh bigger than one process (`mesh=<shape>` other than single, `mesh.<dim>=N` with N > 1).
    A dry run and `--cfg` start none; every sweep in the README spans several ranks (test_runs
    checks this against the world size each run reports)."""
    if args[0] == "torchrun":
        return any(a.startswith("--nproc_per_node=") and int(a.partition("=")[2]) > 1 for a in args)
    if "dry_run=true" in args or "--cfg" in args:
        return False
    if is_sweep(args):
        return True
    for key, _, value in (a.partition("=") for a in args):
        if (key == "mesh" and value != "single") or (key.startswith("mesh.") and value.isdigit() and int(value) > 1):
            return True
    return False


def argv(args: list[str], out: Path) -> list[str]:
    """The command as this test runs it: this interpreter (torchrun as `python -m torch.distributed.run`,
    which needs no script on PATH, its agent's log dir under `out` rather than /tmp), SHORT appended,
    output under `out`."""
    head = [sys.executable]
    if args[0] == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", f"--log-dir={out / 'torchelastic'}"]
    where = f"hydra.sweep.dir={out}" if is_sweep(args) else f"hydra.run.dir={out}"
    return [*head, *args[1:], *SHORT, where]


def case_id(command: str, width: int = 90) -> str:
    return command if len(command) <= width else command[: width - 3] + "..."


def example_cases() -> list:
    cases = []
    for command in readme_examples(README.read_text()):
        args = shlex.split(command)
        marks = [pytest.mark.multiprocess] if starts_several_ranks(args) else []
        reason = left_out(command)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        cases.append(pytest.param(command, marks=marks, id=case_id(command)))
    return cases


@pytest.mark.parametrize("command", example_cases())
def test_readme_example_runs(command, tmp_path):
    args = shlex.split(command)
    out = tmp_path / "out"
    result = subprocess.run(argv(args, out), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    if "--cfg" in args:
        assert "model:" in result.stdout and "parallel:" in result.stdout, result.stdout[-2000:]
        return
    if "dry_run=true" in args:
        assert json.loads((out / "dry_run.json").read_text())["status"] == "dry_run"
        return
    summaries = sorted(out.glob("*/summary.json")) if is_sweep(args) else [out / "summary.json"]
    assert summaries and all(s.exists() for s in summaries), f"no summary.json under {out}:\n{result.stderr[-3000:]}"
    runs = {str(s.parent.relative_to(tmp_path)): json.loads(s.read_text()) for s in summaries}
    if "plan.prune=true" in args:  # a pruning example shows a point pruned, with its reason, and one that runs
        pruned = {name: r for name, r in runs.items() if r["status"] == "pruned"}
        assert pruned and all("does not fit" in r["error"] for r in pruned.values()), runs
        runs = {name: r for name, r in runs.items() if name not in pruned}
    assert runs and {name: (r["status"], r["error"]) for name, r in runs.items()} == {name: ("completed", None) for name in runs}
    assert {r["steps"] for r in runs.values()} == {2}
    several = max(r["world_size"] for r in runs.values()) > 1
    assert several == starts_several_ranks(args), "the multiprocess mark does not match the ranks the command started"


def test_examples_are_found_in_code_blocks_and_in_the_strategy_table():
    examples = readme_examples(README.read_text())
    assert "python launch.py" in examples  # the strategy table's `single` row
    assert "python launch.py --cfg job" in examples  # quick start, comment dropped
    assert "torchrun --standalone --nproc_per_node=2 launch.py parallel=fsdp mesh.dp_shard=2 model=nano" in examples
    assert any(c.startswith("python launch.py dry_run=true") for c in examples)
    assert any(c.startswith("python launch.py -m experiment=scaling") for c in examples)
    strategies = {a.partition("=")[2] for c in examples for a in shlex.split(c) if a.startswith("parallel=")}
    one_per_table_row = {"ddp", "fsdp", "hsdp", "tp", "tp_sp", "fsdp_tp", "pp_1f1b", "pp_interleaved", "pp_zbv",
                         "pp_fsdp", "pp_tp", "3d", "cp", "fsdp_cp", "fsdp_tp_cp", "pp_cp"}
    assert one_per_table_row <= strategies, one_per_table_row - strategies


def test_extractor_reads_fences_and_tables_but_not_prose_or_placeholders():
    markdown = "\n".join([
        "Run `python launch.py model=prose` in prose.",
        "| `fsdp` | shards | `python launch.py parallel=fsdp` |",
        "```bash",
        "python launch.py --cfg job     # a comment",
        "python launch.py -m a=1,2 \\",
        "    b=3",
        "python launch.py checkpoint=<run>",
        "make test",
        "torchrun --standalone launch.py",
        "python launch.py --cfg job",
        "```",
    ])
    assert readme_examples(markdown) == [
        "python launch.py --cfg job",
        "python launch.py -m a=1,2 b=3",
        "torchrun --standalone launch.py",
        "python launch.py parallel=fsdp",
    ]


def test_only_slurm_lines_and_the_strategy_grid_are_left_out():
    examples = readme_examples(README.read_text())
    skipped = {c: left_out(c) for c in examples if left_out(c)}
    assert skipped and all("hydra/launcher=slurm" in c or "experiment=strategy_grid" in c for c in skipped)
    assert len(examples) - len(skipped) >= 15


def test_every_module_and_script_the_readme_runs_exists():
    """`python -m <module>` and `python <script>.py`, anywhere in the README (a placeholder matches any name)."""
    markdown = README.read_text()
    commands = fenced_commands(markdown) + INLINE_CODE.findall(markdown)
    modules = {m for c in commands for m in re.findall(r"\bpython -m ([\w.]+)", c)}
    scripts = {s for c in commands for s in re.findall(r"\bpython ([\w/<>.-]+\.py)\b", c)}
    assert "nanodist.tools.report" in modules and "data/<name>/prepare.py" in scripts
    assert [m for m in sorted(modules) if importlib.util.find_spec(m) is None] == []
    assert [s for s in sorted(scripts) if not list(ROOT.glob(PLACEHOLDER.sub("*", s)))] == []
