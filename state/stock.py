"""How a SKU's hashes read: its stock hash (``keys.stock``: units per location, and the
NUL-prefixed marker, rules, alert flag and channel locks beside them) and its counters of
units sold per customer (``keys.bought``), decoded from the replies Redis sends.

Pure functions of replies, no client: ``state.skus`` and ``state.shards`` (the prelude of a
batch) send the reads, in their own round trips.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from onestock.domain.protocol import INTERNAL
from state import keys
from state.gens import Gen


class Lock(NamedTuple):
    """A channel lock as stored: units held for ``channel`` until ``until_ms``, ``used`` of
    them already drawn by that channel."""

    channel: str
    qty: int
    until_ms: int
    used: int

    def left(self, at_ms: int) -> int:
        """Units the lock still holds at ``at_ms`` (0 once it dissolved)."""
        return max(0, self.qty - self.used) if at_ms < self.until_ms else 0


class Alone(NamedTuple):
    """A SKU's stock hash as refusing its orders on a read needs it (``read_alone``)."""

    levels: dict[str, int]  # units per location
    vip_until: int | None  # the VIP pre-sale's end, epoch ms
    limit: int | None  # the per-customer limit, units
    locks: list[Lock]  # its channel locks


_INTERNAL = INTERNAL.encode()
_MARKER, _LOW, _ALERTED = keys.STOCK_MARKER.encode(), keys.RULE_LOW.encode(), keys.ALERTED.encode()
_LIMIT, _VIP = keys.RULE_LIMIT.encode(), keys.RULE_VIP_UNTIL.encode()
_LOCK_QTY, _LOCK_UNTIL, _LOCK_USED = (
    p.encode() for p in (keys.LOCK_QTY, keys.LOCK_UNTIL, keys.LOCK_USED)
)


def fields(got: Any) -> dict[bytes, bytes]:
    """A hash as HGETALL answered it (a flat list on a single server, a dict on a cluster)."""
    return got if isinstance(got, dict) else dict(zip(got[::2], got[1::2], strict=True))


def stock_of(flat: dict[bytes, bytes]) -> tuple[dict[str, int], list[Lock]]:
    """A SKU's units per location and its channel locks, from its stock hash's fields (those
    that start with NUL are the marker, the SKU's rules and its locks)."""
    levels = {k.decode(): int(v) for k, v in flat.items() if not k.startswith(_INTERNAL)}
    locks = []
    for k, v in flat.items():
        if k.startswith(_LOCK_QTY):
            ch = k[len(_LOCK_QTY) :]
            until = int(flat.get(_LOCK_UNTIL + ch, 0))
            locks.append(Lock(ch.decode(), int(v), until, int(flat.get(_LOCK_USED + ch, 0))))
    return levels, locks


def read_alone(got: Any) -> Alone | None:
    """A SKU's stock hash, as HGETALL answered it, for refusing its orders on a read: None
    when the SKU is missing or has an alert decide.lua would still raise (its alert level,
    computed from the units as ``settle_alert`` in lib_stock.lua does, differs from the one
    last raised, '\0alerted'), so a decide.lua call must come."""
    if not got:
        return None
    flat = fields(got)
    if _MARKER not in flat:
        return None
    levels, locks = stock_of(flat)
    low = flat.get(_LOW)
    if low is not None:
        units = sum(u for u in levels.values() if u > 0)
        level = 2 if units <= 0 else 1 if units <= int(low) else 0
        if level != int(flat.get(_ALERTED, 0)):
            return None
    vip, limit = flat.get(_VIP), flat.get(_LIMIT)
    return Alone(
        levels, int(vip) if vip is not None else None, int(limit) if limit is not None else None,
        locks,
    )  # fmt: skip


def bought_reads(
    pairs: list[tuple[str, str]], gen: Gen
) -> tuple[list[tuple[str, ...]], list[list[int]]]:
    """Per SKU, one HMGET per generation (``gen``'s, the one before and the one after: the
    shards write in their own, and one may be a generation ahead; lib_stock.lua) of the
    units sold to the customers of these (SKU, customer) pairs, and the pairs' indices each
    one answers (see ``bought_counts``)."""
    by_sku: dict[str, list[int]] = {}
    for i, (sku, _) in enumerate(pairs):
        by_sku.setdefault(sku, []).append(i)
    commands: list[tuple[str, ...]] = []
    groups: list[list[int]] = []
    for sku, idx in by_sku.items():
        for g in gen.read():
            commands.append(("HMGET", keys.bought(sku, g), *(pairs[i][1] for i in idx)))
            groups.append(idx)
    return commands, groups


def bought_counts(groups: list[list[int]], replies: list[Any], n: int) -> list[int]:
    """The units sold per pair, from the HMGET replies of ``bought_reads`` (summed)."""
    counts = [0] * n
    for idx, got in zip(groups, replies, strict=True):
        for i, value in zip(idx, got, strict=True):
            if value:
                counts[i] += int(value)
    return counts
