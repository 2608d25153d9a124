"""The house style is checked with the tests: ruff lint and format, mypy, and the layers
contract (import-linter); their configuration is in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(
    "tool",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy", "onestock", "state", "dataflows", "intake", "loadtest", "tests"],
        ["importlinter.cli"],
    ],
    ids=["ruff-lint", "ruff-format", "mypy", "layers"],
)
def test_style_tool_passes(tool: list[str]) -> None:
    if tool == ["importlinter.cli"]:  # no __main__: call its console entry point
        tool = ["-c", "import sys, importlinter.cli as c; sys.exit(c.lint_imports_command())"]
    else:
        tool = ["-m", *tool]
    proc = subprocess.run([sys.executable, *tool], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
