"""Which shard an event goes to: every copy of an order's events on one shard, in sequence.

The intake, the CLI's push, the load tests and the gift settler all place events with these
two functions, so an order id always lands on the same input stream (``keys.inbox``).
"""

from __future__ import annotations

import zlib

from onestock.domain.events import order_id_of


def shard_of(raw: bytes, shards: int) -> int:
    """Same order id -> same shard, so its copies are decided in sequence by one worker."""
    oid = order_id_of(raw)
    return shard_of_id(oid, shards) if oid is not None else zlib.crc32(raw) % shards


def shard_of_id(order_id: str, shards: int) -> int:
    """The shard of an event with a usable order id."""
    return zlib.crc32(order_id.encode()) % shards
