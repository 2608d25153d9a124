"""Settings as one dataclass, from the environment (``ONESTOCK_*``) with CLI overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Input shards of a new dataset. Bytewax gives each worker whole shards, so K sets how evenly
# N workers share the work: 48 splits 1, 2, 3, 4, 6, 8, 12 and 16 workers exactly and any
# count up to 8 within 5 % (16 left 5 to 7 workers 12-31 % apart). More costs per shard:
# polls and ticks when idle, smaller batches at a given rate (docs/performance.md).
DEFAULT_SHARDS = 48
# Two worker processes on two cores. Three overlap more Redis round trips but, with Redis on
# the same cores, measured erratically (37k to 53k orders/s drained) where two held 45-49k.
DEFAULT_WORKERS = 2


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        from onestock.domain.errors import OnestockError

        raise OnestockError(f"{name}={raw!r} is not a whole number") from None


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None  # None: the embedded server under `home`
    home: Path = field(default_factory=lambda: Path(".onestock"))
    shards: int = DEFAULT_SHARDS
    batch_size: int = 1000  # events read per shard per batch (decide.lua calls of <= 250 orders)
    poll_ms: int = 20  # how soon a caught-up shard is polled again
    snapshot_ms: int = 1000  # Bytewax epoch / snapshot interval
    workers: int = DEFAULT_WORKERS
    # Bytewax's dataflow API (/metrics, /dataflow) on worker i at metrics_port + i; 0: off
    metrics_port: int = 0
    # 1: fork the workers from `onestock run`'s process (a start 2-3 x faster on few cores,
    # ~6 % more CPU per accepted order: docs/performance.md); 0: a fresh interpreter each
    fork_workers: int = 0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        s = cls(
            redis_url=os.environ.get("ONESTOCK_REDIS_URL") or None,
            home=Path(os.environ.get("ONESTOCK_HOME") or ".onestock"),
            shards=_int("ONESTOCK_SHARDS", DEFAULT_SHARDS),
            batch_size=_int("ONESTOCK_BATCH_SIZE", 1000),
            poll_ms=_int("ONESTOCK_POLL_MS", 20),
            snapshot_ms=_int("ONESTOCK_SNAPSHOT_MS", 1000),
            workers=_int("ONESTOCK_WORKERS", DEFAULT_WORKERS),
            metrics_port=_int("ONESTOCK_DATAFLOW_METRICS_PORT", 0),
            fork_workers=_int("ONESTOCK_FORK_WORKERS", 0),
        )
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return replace(s, **given)
