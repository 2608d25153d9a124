"""dev.py under a Python it cannot use (a fake 3.13: the real interpreter told it is one) finds
a 3.12 or 3.11 on the machine and runs itself again with it, or says in one line how to get
one. The real script, copied beside no venv, with a PATH and a HOME made for the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

REAL = os.path.realpath(sys.executable)  # a 3.11 or 3.12, outside any venv
FAKE_313 = f"""#!/bin/sh
exec {REAL} -c 'import runpy, sys
sys.version_info = (3, 13, 0, "final", 0)
sys.version = "3.13.0 (fake)"
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")' "$@"
"""


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A copy of dev.py, an empty HOME, and a PATH holding only the fake python3."""
    project, home, bin_ = tmp_path / "project", tmp_path / "home", tmp_path / "bin"
    for d in (project, home, bin_):
        d.mkdir()
    shutil.copy(ROOT / "dev.py", project / "dev.py")
    (bin_ / "python3").write_text(FAKE_313)
    (bin_ / "python3").chmod(0o755)
    return project, home, {"PATH": str(bin_), "HOME": str(home)}


def run(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    python3 = Path(env["PATH"]) / "python3"
    return subprocess.run(
        [str(python3), "dev.py"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("where", ["PATH", "pyenv"])
def test_under_313_dev_py_runs_itself_again_under_a_312_it_finds(
    machine: tuple[Path, Path, dict[str, str]], where: str
) -> None:
    project, home, env = machine
    if where == "PATH":
        found = Path(env["PATH"]) / "python3.12"
    else:
        found = home / ".pyenv" / "versions" / "3.12.99" / "bin" / "python3.12"
        found.parent.mkdir(parents=True)
    found.symlink_to(REAL)  # it says 3.11 or 3.12: either will do
    proc = run(project, env)
    real = ".".join(map(str, sys.version_info[:2]))
    assert f"this is Python 3.13.0; running again under {found} ({real})" in proc.stderr
    assert proc.returncode == 2 and "python3 dev.py test-fast" in proc.stdout  # the usage


def test_under_313_with_no_312_or_311_dev_py_says_how_to_get_one(
    machine: tuple[Path, Path, dict[str, str]],
) -> None:
    project, _, env = machine
    proc = run(project, env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "uv python install 3.12" in proc.stderr
