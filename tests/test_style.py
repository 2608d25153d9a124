"""The house style is checked with the tests: ruff lint and format, mypy (config in pyproject)."""

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
    ],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_style_tool_passes(tool: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", *tool], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
