"""The Redis side of first-N gift campaigns (a part of ``state.store.Store``): settle a SKU's
ranked candidates under a lease, take gift units for the winners and give them back, write
the records held for their settlement, acknowledge settled ranks."""

from __future__ import annotations

from typing import Any

from state import gens, keys
from state.conn import Redis, lua
from state.gens import Gen
from state.skus import sku_keys


class Campaigns:
    def __init__(
        self, client: Redis, touched: set[str] | None = None, gen: Gen | None = None
    ) -> None:
        self._r = client
        self.gen = gen or Gen()  # the generation this process writes in now
        self.touched: set[str] = touched if touched is not None else set()  # (Store.touched)
        self._settle = client.register_script(lua("settle", "lib_stock"))
        self._settled_ack = client.register_script(lua("settled_ack"))
        self._gift = client.register_script(lua("gift"))
        self._release_held = client.register_script(lua("release_held"))
        self._gift_return = client.register_script(lua("gift_return"))
        self._candidates = client.register_script(lua("candidates", "lib_stock"))

    def add_candidates(self, sku: str, orders: list[tuple[str, int]]) -> None:
        """Orders across slots (order id, paid_at ms), accepted whole, become candidates of
        the campaigns of ``sku``: once each (candidates.lua)."""
        args: list[Any] = [len(orders)]
        for oid, paid in orders:
            args += [oid, paid]
        ks = [*sku_keys([sku], keys.decisions, self.gen), keys.candidacies(sku)]
        self._candidates(keys=ks, args=args)

    def report(self, shard: int, paid_ms: int | None, idle: bool, wall_ms: int) -> None:
        """Say how far ``shard`` has read in event time (``keys.PROGRESS``)."""
        value = f"{'' if paid_ms is None else paid_ms} {int(idle)} {wall_ms}"
        self._r.hset(keys.PROGRESS, str(shard), value)

    def finished(self, shard: int) -> None:
        """Say that this run reads no more of ``shard`` (``run --until-drained`` found it
        drained): it holds no watermark back, however old the report grows."""
        got: Any = self._r.hget(keys.PROGRESS, str(shard))
        paid = got.decode().split(" ")[0] if got else ""
        self._r.hset(keys.PROGRESS, str(shard), f"{paid} 2 0")

    def progress(self) -> dict[int, tuple[int | None, int, int]]:
        """Every shard's last report: shard -> (paid_at ms read up to, state, wall ms);
        state 0 reading, 1 idle, 2 finished (see ``finished``)."""
        out: dict[int, tuple[int | None, int, int]] = {}
        got: dict[bytes, bytes] = self._r.hgetall(keys.PROGRESS)  # type: ignore[assignment]
        for shard, value in got.items():
            paid, state, wall = value.decode().split(" ")
            out[int(shard)] = (int(paid) if paid else None, int(state), int(wall))
        return out

    def settle(
        self, sku: str, token: str, lease_ms: int, force: bool, watermark: int | None, idle: bool
    ) -> tuple[set[str], list[str]] | None:
        """Settle the campaigns of ``sku`` up to the input's event-time ``watermark`` (ms;
        None: not known yet), everything when ``idle`` long enough or ``force``: None if
        another worker holds the lease, else (campaigns whose gift stock ran out, settled
        entries not yet acknowledged)."""
        ks = [keys.stock(sku), keys.candidates(sku), keys.campaigns(sku), keys.settled(sku),
              keys.lease(sku)]  # fmt: skip
        wm = "" if watermark is None else watermark
        res = self._settle(keys=ks, args=[token, lease_ms, int(force), wm, int(idle)])
        if not res:
            return None
        ended, entries = res
        return {e.decode() for e in ended}, [e.decode() for e in entries]

    def take_gifts(self, gift_sku: str, winners: list[tuple[str, list[str]]]) -> list[str]:
        """One gift unit per winner key (preferred locations in order): location or "-"."""
        args: list[Any] = [len(winners)]
        for key, locs in winners:
            args += [key, len(locs), *locs]
        self.touched.add(gift_sku)
        got = self._gift(keys=[keys.stock(gift_sku), keys.gift_taken(gift_sku)], args=args)
        return [g.decode() for g in got]

    def release_held(self, shard: int, items: list[tuple[str, str, str]]) -> list[int]:
        """Write held records with their gift fields: per order 1 now, 2 before, 0 not yet."""
        args: list[Any] = [len(items)]
        for item in items:
            args += item
        # the generation of the shard's last written entry (this process may not read the
        # shard; a held order was written at or before it) and the one before it
        wm: Any = self._r.get(keys.watermark(shard))
        now = gens.of_id(wm.decode()) if wm else self.gen.now
        ks = [keys.emitted(shard, now), keys.outbox(shard), keys.held(shard),
              keys.counters(shard), keys.emitted(shard, now - 1)]  # fmt: skip
        return [int(x) for x in self._release_held(keys=ks, args=args)]

    def settled_ack(self, sku: str, entries: list[tuple[str, str]], head: bool) -> int:
        """Acknowledge released ranks; ``head``: they are the settled LIST's first entries."""
        args: list[Any] = [int(head), len(entries)]
        for entry, gift in entries:
            args += [entry, gift]
        ks = [keys.campaigns(sku), keys.settled(sku), keys.ranks(sku)]
        return int(self._settled_ack(keys=ks, args=args))

    def return_gifts(self, gift_sku: str, winner_keys: list[str]) -> list[int]:
        """Put back the gift units of cancelled winners: per key 1 (a unit went back), 0
        (none was taken, or it is back already)."""
        ks = [keys.stock(gift_sku), keys.gift_taken(gift_sku)]
        self.touched.add(gift_sku)
        return [int(x) for x in self._gift_return(keys=ks, args=winner_keys)]
