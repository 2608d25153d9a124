"""Trimming the output streams (docs/memory.md, "Trimming the records").

A record every reader is past (``outbox.trim_points``: every consumer group acknowledged it,
every record subscriber delivered it) may go, but ``ops.audit`` re-adds every record
version against the stock. So before a shard's entries are trimmed they are folded
(``fold``, ledger_fold.lua): each order's versions into a kept-orders hash of one generation (the
generation of the entry that first named the order; onestock/domain/tally.py
``OrderFold``), the counts into the shard's tally, behind a mark. Once no version of an
order can come any more (its idempotency state deleted, state/gens.py, and every entry
written before that folded) its kept versions are settled (``settle``, ledger_settle.lua) into
the shard's totals: units per SKU and location, outcomes. The audit then reads totals +
kept orders + the entries after the mark (``snapshot``): the same sums as the whole
stream, in memory that stops growing.

Folding and settling change state only behind a compare (the mark; one HDEL per order),
so several processes may run them at once and a process killed half way leaves nothing
counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from onestock.domain.movements import movement_from_packed
from onestock.domain.protocol import SEP
from onestock.domain.records import packed_records, return_from_packed
from onestock.domain.tally import OrderFold, Tally, Totals, aftersale, settle
from state import gens, keys, wire
from state.conn import Redis, lua, parse_id
from state.shards import Shards

FOLD_ENTRIES = 200  # output entries (decided batches) read per fold call
SETTLE_CHUNK = 2000  # kept orders settled per script call
_SCAN = 2000


class Snapshot(NamedTuple):
    """What a shard's records add up to without its trimmed entries: the fold's counts,
    the settled totals, the kept orders, and the entries after the mark (``rest``)."""

    n: int
    dup: int
    first: int
    last: int
    totals: Totals
    orders: dict[str, OrderFold]
    rest: list[str]


class Ledger:
    """Fold, trim and settle the output streams (see the module)."""

    def __init__(self, client: Redis, shards: Shards) -> None:
        self.r = client
        self.shards = shards
        self._fold = client.register_script(lua("ledger_fold"))
        self._settle = client.register_script(lua("ledger_settle"))

    def lease(self, holder: str, ms: int) -> bool:
        """Take the lease of the process that folds, trims and settles now (held at most
        ``ms``: a process killed holding it holds up the others no longer)."""
        return bool(self.r.set(keys.LEDGER_LEASE, holder, nx=True, px=ms))

    def release(self, holder: str) -> None:
        """Give the lease back (if still ours: it only saves work twice, never guards it)."""
        if self.r.get(keys.LEDGER_LEASE) == holder.encode():
            self.r.delete(keys.LEDGER_LEASE)

    # -- folding ---------------------------------------------------------------------------

    def fold(self, shard: int, entries: int = FOLD_ENTRIES) -> int:
        """Fold the next ``entries`` output entries of the shard after its mark; the
        records folded (0: none waiting, or another process folded them first)."""
        st = self._tally(shard)
        mark = st.get("mark", "")
        rows: Any = self.r.xrange(keys.outbox(shard), min=f"({mark}" if mark else "-",
                                  count=entries)  # fmt: skip
        if not rows:
            return 0
        chunk = [(gens.of_ms(parse_id(eid.decode())[0]), p) for eid, f in rows
                 for p in packed_records(f)]  # fmt: skip
        found = self._kept_of(shard, {p.partition(SEP)[0] for _, p in chunk}, st,
                              max(g for g, _ in chunk))  # fmt: skip
        tally = Tally({oid: fold for oid, (_, fold) in found.items()})
        home: dict[str, int] = {}  # an order's versions live in its latest entry's generation
        for gen, packed in chunk:
            home[tally.add(packed)] = gen
        was = {oid: g for oid, (g, _) in found.items() if g != home[oid]}
        written = sorted(set(home.values()) | set(was.values()))
        index = {g: i + 2 for i, g in enumerate(written)}
        args: list[Any] = [mark, rows[-1][0].decode(), tally.n, tally.dup]
        args += [tally.first, tally.last] if tally.n else ["", ""]
        args += [written[0], written[-1]]
        for oid, g in home.items():
            args += [index[g], index[was[oid]] if oid in was else 0, oid, tally.orders[oid].dump()]
        ks = [keys.tally(shard)] + [keys.kept(shard, g) for g in written]
        [done] = wire.scripts(self.r, [(self._fold, ks, args)])
        return len(chunk) if done else 0

    def fold_chunk(self, shard: int) -> bool:
        """Fold the shard's next entries; False when none was waiting."""
        while not self.fold(shard):  # (0: none, or another folder moved the mark first)
            if not self._pending(shard, "+"):
                return False
        return True

    def fold_all(self, shard: int) -> int:
        """Fold the shard's entries up to its end; the records folded."""
        n = 0
        while self._pending(shard, "+"):
            n += self.fold(shard)
        return n

    def _tally(self, shard: int) -> dict[str, str]:
        raw: Any = self.r.hgetall(keys.tally(shard))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _live(self, st: dict[str, str], upto: int) -> range:
        """The generations that may hold kept orders: after the settled ones, up to ``upto``."""
        lo = int(st["lo"]) if "lo" in st else upto
        return range(max(lo, int(st.get("settled", lo - 1)) + 1), upto + 1)

    def _kept_of(
        self, shard: int, oids: Iterable[str], st: dict[str, str], upto: int
    ) -> dict[str, tuple[int, OrderFold]]:
        """The kept versions of ``oids`` already folded: order id -> (generation, fold)."""
        names = list(oids)
        pipe = self.r.pipeline(transaction=False)
        live = self._live(st, upto)
        for g in live:
            pipe.hmget(keys.kept(shard, g), names)
        found: dict[str, tuple[int, OrderFold]] = {}
        for g, row in zip(live, pipe.execute(), strict=True):
            for oid, raw in zip(names, row, strict=True):
                if raw is not None:
                    found[oid] = (g, OrderFold.load(oid, raw.decode()))
        return found

    def _pending(self, shard: int, upto: str) -> bool:
        """Whether an output entry up to ``upto`` is not folded yet."""
        mark = self._tally(shard).get("mark", "")
        rows: Any = self.r.xrange(keys.outbox(shard), min=f"({mark}" if mark else "-",
                                  max=upto, count=1)  # fmt: skip
        return bool(rows)

    # -- trimming --------------------------------------------------------------------------

    def trim(self, shard: int, point: str) -> int:
        """Trim the shard's output stream below ``point`` (every reader is past it) and
        past nothing not folded; the entries trimmed."""
        mark = self._tally(shard).get("mark")
        if not mark:
            return 0
        ms, seq = parse_id(mark)
        upto = min(parse_id(point), (ms, seq + 1))
        minid = f"{upto[0]}-{upto[1]}"
        return int(self.r.xtrim(keys.outbox(shard), minid=minid, approximate=False))

    # -- settling --------------------------------------------------------------------------

    def settle(self, shards: int) -> int:
        """Settle every kept generation no version can reach any more: up to the newest
        swept one, once every entry written before that sweep is folded; the orders settled.
        (An order's versions are kept in the generation of its latest output entry; the
        state that version wrote is in the generation of its input entry, on the same
        server's clock and no later: once that is swept no event finds the order.)"""
        swept, at = self.r.get(keys.GEN_SWEPT), self.r.get(keys.GEN_SWEPT_AT)  # (this order:
        if swept is None or at is None:  # the time is written first)
            return 0
        n = 0
        effects: tuple[Any, set[str]] | None = None
        for shard in range(shards):
            if self._pending(shard, str(int(at))):
                continue  # an entry written before the sweep is not folded yet
            for g in self._live(self._tally(shard), int(swept)):
                if effects is None:  # returns and write-offs, read once per call
                    effects = self._aftersale(shards)
                n += self._settle_gen(shard, g, *effects)
        return n

    def _aftersale(self, shards: int) -> tuple[Any, set[str]]:
        returned = (return_from_packed(p) for f in self.shards.entries(keys.returns, shards)
                    for p in packed_records(f))  # fmt: skip
        moved = (movement_from_packed(p) for f in self.shards.entries(keys.movements, shards)
                 for p in packed_records(f))  # fmt: skip
        return aftersale(returned, moved, Totals())

    def _settle_gen(self, shard: int, gen: int, back: Any, offs: set[str]) -> int:
        key = keys.kept(shard, gen)
        ks = [keys.tally(shard), keys.settled_totals(shard), key]
        n = 0
        batch: list[Any] = []
        for oid, raw in self._scan(key):
            totals = Totals()
            settle([OrderFold.load(oid, raw)], back, offs, totals)
            fields = totals.fields()
            batch += [oid, len(fields)]
            for name, incr in fields.items():
                batch += [name, incr]
            if len(batch) >= SETTLE_CHUNK:
                n += self._settle_call(ks, [gen, "0", *batch])
                batch = []
        return n + self._settle_call(ks, [gen, "1", *batch])

    def _settle_call(self, ks: list[str], args: list[Any]) -> int:
        [n] = wire.scripts(self.r, [(self._settle, ks, args)])
        return int(n)

    def _scan(self, key: str) -> Iterator[tuple[str, str]]:
        for oid, raw in self.r.hscan_iter(key, count=_SCAN):
            yield oid.decode(), raw.decode()

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self, shard: int) -> Snapshot:
        """The shard's folded counts, totals and kept orders, and the records after the
        mark, read so that a fold meanwhile is not counted twice (read again)."""
        while True:
            st = self._tally(shard)
            raw: Any = self.r.hgetall(keys.settled_totals(shard))
            totals = Totals()
            totals.add_fields({k.decode(): int(v) for k, v in raw.items()})
            orders: dict[str, OrderFold] = {}
            for g in self._live(st, int(st.get("hi", -1))):
                for oid, value in self._scan(keys.kept(shard, g)):
                    orders[oid] = OrderFold.load(oid, value)
            mark = st.get("mark", "")
            rest = [p for _, f in self._after(shard, mark) for p in packed_records(f)]
            if self._tally(shard) == st:
                return Snapshot(int(st.get("n", 0)), int(st.get("dup", 0)),
                                int(st.get("first", 2**63)), int(st.get("last", 0)),
                                totals, orders, rest)  # fmt: skip

    def _after(self, shard: int, mark: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
        after = f"({mark}" if mark else "-"
        while True:
            rows: Any = self.r.xrange(keys.outbox(shard), min=after, max="+", count=5000)
            yield from rows
            if len(rows) < 5000:
                return
            after = f"({rows[-1][0].decode()}"
