"""Shared by ``demo`` and ``bench``: a throwaway Redis, the demo catalog, pushing, draining."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from onestock import burst
from onestock.domain import sharding
from onestock.domain.settings import DEFAULT_SHARDS
from onestock.domain.types import Catalog
from state import keys
from state.server import RedisServer
from state.store import Store


@contextmanager
def scratch_redis(prefix: str) -> Iterator[tuple[RedisServer, Path]]:
    """A real, persistent (AOF) redis-server in a temporary home, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    server = RedisServer(home / "redis", persistent=True)
    try:
        server.start()
        yield server, home
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def reset(
    store: Store,
    shards: int = DEFAULT_SHARDS,
    catalog: Catalog | None = None,
    layout: str | None = None,
) -> dict[str, dict[str, int]]:
    """Empty the database and load a catalog (default: the demo's); returns the loaded stock.
    ``layout``: the dataset's (keys.LAYOUT; None: a fresh dataset's default)."""
    store.r.flushall()
    if layout is not None:
        store.r.set(keys.LAYOUT, layout)
    cat = catalog or burst.demo_catalog()
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shards.shard_count(shards)
    return {s.sku: dict(s.stock) for s in cat.skus}


def push(
    store: Store,
    lines: list[bytes],
    shards: int = DEFAULT_SHARDS,
    progress: Callable[[int], None] | None = None,
    chunk: int = 20_000,
) -> None:
    for i in range(0, len(lines), chunk):
        part = lines[i : i + chunk]
        store.shards.push((sharding.shard_of(raw, shards), raw) for raw in part)
        if progress:
            progress(len(part))


def outcomes(store: Store, shards: int = DEFAULT_SHARDS) -> int:
    return sum(store.shards.outcome_counts(shards))


def start_dataflow(
    url: str, home: Path, workers: int, *, until_drained: bool
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ONESTOCK_REDIS_URL": url, "ONESTOCK_HOME": str(home)}
    args = [sys.executable, "-m", "onestock", "run", "--workers", str(workers)]
    if until_drained:
        args.append("--until-drained")
    return subprocess.Popen(args, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def wait_outcomes(
    store: Store, n: int, proc: subprocess.Popen[bytes], tick: Callable[[int], None] | None = None
) -> None:
    """Block until ``n`` events have outcomes (or the dataflow died)."""
    done = 0
    while done < n:
        if proc.poll() is not None and proc.returncode != 0:
            raise RuntimeError(f"the dataflow exited with status {proc.returncode}")
        time.sleep(0.2)
        done = outcomes(store)
        if tick:
            tick(done)
