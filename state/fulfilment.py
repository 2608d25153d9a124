"""Fulfilment feedback in Redis (a part of ``state.store.Store``): what each location said of
its shipment of an order (``keys.REG_SHIPMENT``), and ``reroute.lua``, which takes a rejected
shipment's lines at other locations (docs/fulfilment.md)."""

from __future__ import annotations

from typing import Any, NamedTuple

from onestock.domain.protocol import SEP
from state import keys, wire
from state.conn import Redis, lua
from state.skus import sku_keys

TAKE, UNDO = "take", "undo"  # reroute.lua's modes


class Reroute(NamedTuple):
    """One reroute.lua call: a rejected shipment's lines in one slot."""

    mode: str
    key: str  # keys.DEC_REROUTE + order id SEP version
    skus: list[str]
    lines: list[tuple[int, int]]  # (1-based index into skus, qty)
    locations: list[str]  # the candidates, nearest first
    floors: list[int]  # per candidate: units the order may not take there


class Shipments:
    def __init__(self, client: Redis, touched: set[str]) -> None:
        self.r = client
        self.touched = touched  # (Store.touched: the availability feed's dirty SKUs)
        self._script = client.register_script(lua("reroute", "lib_stock"))

    def said(self, shard: int, pairs: list[tuple[str, str]]) -> list[str | None]:
        """Per (order id, location): what the location said of its shipment, if anything."""
        if not pairs:
            return []
        fields = [f"{keys.REG_SHIPMENT}{oid}{SEP}{loc}" for oid, loc in pairs]
        got = wire.reads(self.r, [("HMGET", keys.emitted(shard), *fields)])[0]
        return [v.decode() if v is not None else None for v in got]

    def reroute(self, calls: list[Reroute], now_ms: int) -> list[str]:
        """The calls, each atomic in its slot, in one round trip; each one's outcome."""
        jobs = []
        for c in calls:
            self.touched.update(c.skus)
            args: list[Any] = [c.mode, c.key, now_ms, len(c.skus), *c.skus, len(c.locations)]
            args += [*c.locations, *c.floors, len(c.lines)]
            for s, q in c.lines:
                args += [s, q]
            jobs.append((self._script, sku_keys(c.skus, keys.decisions), args))
        return [v.decode() if isinstance(v, bytes) else str(v) for v in wire.scripts(self.r, jobs)]
