"""The house style is checked with the tests: ruff lint and format, mypy, and the layers
contract (import-linter); the tools are dev.py's LINT (also `python3 dev.py lint` and the
pre-commit hooks), their configuration is in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dev
from tests.conftest import ROOT


@pytest.mark.parametrize("tool", list(dev.LINT))
def test_style_tool_passes(tool: str) -> None:
    proc = subprocess.run(
        [sys.executable, *dev.LINT[tool]], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
