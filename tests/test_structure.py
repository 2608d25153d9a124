"""Units a reader can hold, and one home for every Redis key name.

ruff's C901 (max-complexity in pyproject.toml) bounds branching; these tests bound length
(no Python function, and no Lua function, over MAX_LINES lines) and keep Redis key names
in ``state/keys.py`` (a key literal anywhere else is a second definition of the layout)."""

from __future__ import annotations

import ast
import re
import subprocess

from tests.conftest import ROOT

MAX_LINES = 80
KEY_LITERAL = re.compile(r"""["']os:""")


SKIP_DIRS = {".venv", ".git", ".devrun", "build", "node_modules", "__pycache__"}


def tracked(pattern: str) -> list[str]:
    """The project's files matching ``pattern``: git's list where the tree is a checkout, else
    (an exported copy, as the final checks run on) the tree itself. Never empty, so a check
    cannot pass by finding nothing to look at."""
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        found = [p for p in out.stdout.split() if (ROOT / p).exists()]
    else:
        found = [
            str(p.relative_to(ROOT))
            for p in ROOT.glob(pattern if "/" in pattern else f"**/{pattern}")
            if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
        ]
    assert found, f"no files match {pattern!r} under {ROOT}"
    return found


def test_no_python_function_over_max_lines() -> None:
    long = []
    for path in tracked("*.py"):
        for node in ast.walk(ast.parse((ROOT / path).read_text(), path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_no_lua_function_over_max_lines() -> None:
    """A Lua function starts at ``local function``/``function`` at the start of a line and
    ends at the first ``end`` at that indentation (the scripts' own style)."""
    long = []
    for path in tracked("state/lua/*.lua"):
        lines = (ROOT / path).read_text().splitlines()
        for n, line in enumerate(lines):
            m = re.match(r"^(\s*)(local )?function ", line)
            if not m:
                continue
            indent = m.group(1)
            end = next(
                (k for k in range(n + 1, len(lines)) if lines[k] == f"{indent}end"), len(lines)
            )
            if end - n + 1 > MAX_LINES:
                long.append(f"{path}:{n + 1} ({end - n + 1} lines)")
    assert not long, long


def test_redis_key_names_only_in_keys_py() -> None:
    found = []
    for path in tracked("*.py"):
        if path == "state/keys.py":
            continue
        for n, line in enumerate((ROOT / path).read_text().splitlines(), 1):
            if KEY_LITERAL.search(line.split("#", 1)[0]):
                found.append(f"{path}:{n}: {line.strip()}")
    assert not found, found
