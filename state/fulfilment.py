"""Fulfilment feedback in Redis (a part of ``state.store.Store``): what each location said of
its shipment of an order (``keys.REG_SHIPMENT``), and ``reroute.lua``, which takes a rejected
shipment's lines at other locations (docs/fulfilment.md)."""

from __future__ import annotations

from typing import Any, NamedTuple

from onestock.domain.protocol import SEP
from state import keys, wire
from state.conn import Redis, lua
from state.gens import Gen, newer_first
from state.skus import sku_keys

TAKE, UNDO, GIVE = "take", "undo", "give"  # reroute.lua's modes
CAPACITY_KEEP_S = 3 * 86400  # a location's day of counted orders is kept this long


class Reroute(NamedTuple):
    """One reroute.lua call: a rejected shipment's lines in one slot."""

    mode: str
    key: str  # keys.DEC_REROUTE + order id SEP version
    skus: list[str]
    lines: list[tuple[int, int]]  # (1-based index into skus, qty)
    locations: list[str]  # the candidates, nearest first
    floors: list[int]  # per candidate: units the order may not take there


class Shipments:
    def __init__(self, client: Redis, touched: set[str], gen: Gen | None = None) -> None:
        self.r = client
        self.gen = gen or Gen()  # the generation this process writes in now
        self.touched = touched  # (Store.touched: the availability feed's dirty SKUs)
        self._script = client.register_script(lua("reroute", "lib_stock"))
        self._claims = client.register_script(lua("claims", "lib_clock"))
        self._capacity = client.register_script(lua("capacity"))

    def said(self, shard: int, pairs: list[tuple[str, str]]) -> list[tuple[str | None, bool]]:
        """Per (order id, location): what the location said last of its shipment (shipped,
        picked_up, rejected), if anything, and whether it claimed it."""
        if not pairs:
            return []
        fields: list[str] = []
        for oid, loc in pairs:
            fields += [f"{keys.REG_SHIPMENT}{oid}{SEP}{loc}", f"{keys.REG_CLAIM}{oid}{SEP}{loc}"]
        reads = [("HMGET", keys.emitted(shard, g), *fields) for g in self.gen.read()]
        got = newer_first(*wire.reads(self.r, reads))
        return [
            (got[i].decode() if got[i] is not None else None, got[i + 1] is not None)
            for i in range(0, len(got), 2)
        ]

    def claims_due(
        self,
        shard: int,
        after: str,
        new: list[tuple[str, str, int]],
        gone: list[tuple[str, str]],
        limit: int,
    ) -> list[tuple[str, str, int]]:
        """Record the new shipments to claim (order id, location, deadline ms), drop the
        ``gone`` ones, then the due ones (``claims.lua``): (order id, location, deadline)."""
        args: list[Any] = [after, limit, len(new)]
        for oid, loc, deadline in new:
            args += [f"{oid}{SEP}{loc}", deadline]
        args += [len(gone), *(f"{oid}{SEP}{loc}" for oid, loc in gone)]
        ks = [keys.claims(shard), keys.inbox(shard)]
        got = wire.scripts(self.r, [(self._claims, ks, args)])[0]
        out: list[tuple[str, str, int]] = []
        for i in range(0, len(got), 2):
            oid, _, loc = got[i].decode().partition(SEP)
            out.append((oid, loc, int(float(got[i + 1]))))
        return out

    def reroute(self, calls: list[Reroute], now_ms: int) -> list[str]:
        """The calls, each atomic in its slot, in one round trip; each one's outcome."""
        if not calls:
            return []
        jobs = []
        for c in calls:
            self.touched.update(c.skus)
            args: list[Any] = [c.mode, c.key, now_ms, len(c.skus), *c.skus, len(c.locations)]
            args += [*c.locations, *c.floors, len(c.lines)]
            for s, q in c.lines:
                args += [s, q]
            jobs.append((self._script, sku_keys(c.skus, keys.decisions, self.gen), args))
        return [v.decode() if isinstance(v, bytes) else str(v) for v in wire.scripts(self.r, jobs)]

    def loads(self, day: int, locations: list[str]) -> dict[str, int]:
        """The orders counted so far on ``day`` per location (one round trip)."""
        got = wire.reads(self.r, [("HLEN", keys.capacity(loc, day)) for loc in locations])
        return {loc: int(n) for loc, n in zip(locations, got, strict=True)}

    def count(self, day: int, asks: dict[str, tuple[int, list[str]]]) -> dict[str, set[str]]:
        """Count orders against locations' capacity on ``day``: per location (its capacity,
        its order ids); answers per location the order ids it had no room for
        (``capacity.lua``, once per order: a replay gets the same answer)."""
        jobs = []
        for loc, (cap, oids) in asks.items():
            jobs.append((self._capacity, [keys.capacity(loc, day)], [cap, CAPACITY_KEEP_S, *oids]))
        got = wire.scripts(self.r, jobs)
        return {
            loc: {oid for oid, ok in zip(oids, answer, strict=True) if not int(ok)}
            for (loc, (_, oids)), answer in zip(asks.items(), got, strict=True)
        }
