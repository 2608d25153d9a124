"""Trimming the output streams (docs/memory.md, "Trimming the records").

A record every reader is past (``outbox.trim_points``: every consumer group acknowledged it,
every record subscriber delivered it) may go, but ``ops.audit`` re-adds every record
version against the stock. So before a shard's entries are trimmed they are folded
(``fold``, ledger_fold.lua): each order's versions into a kept-orders hash of one
generation (that of the order's latest output entry; onestock/domain/tally.py
``OrderFold``), the counts into the shard's tally, behind a mark. Once no version of an
order can come any more (its idempotency state deleted, state/gens.py, and the fold past
the newest entry the sweep read after deleting) its kept versions are settled (``settle``,
ledger_settle.lua) into the shard's totals: units per SKU and location, outcomes. The
audit then reads totals + kept orders + the entries after the mark (``snapshot``, under
the lease): the same sums as the whole stream, in memory that stops growing.

Folding and settling change state only behind a compare (the mark; one HDEL per order),
so several processes may run them at once and a process killed half way leaves nothing
counted twice.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from onestock.domain.errors import OnestockError
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
LEASE_MS = 60_000  # the lease of the folding process (``lease``), at most
SNAPSHOT_TRIES = 20


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
        self._export_mark = client.register_script(lua("export_mark"))
        self._window = 0  # the window checked against the first folder's (``_check_window``)
        # the returns and movements streams as far as this process read them (``_aftersale``)
        self._read_to: dict[str, str] = {}
        self._back: Counter[tuple[str, str]] = Counter()
        self._offs: set[str] = set()

    def lease(self, holder: str, ms: int) -> bool:
        """Take the lease of the process that folds, trims and settles now (held at most
        ``ms``: a process killed holding it holds up the others no longer)."""
        return bool(self.r.set(keys.LEDGER_LEASE, holder, nx=True, px=ms))

    @contextmanager
    def holding(self, holder: str, wait_s: float = 30.0) -> Iterator[None]:
        """Hold the lease (waiting for it up to ``wait_s``) while reading: no process folds
        or settles meanwhile (an audit of a live system would otherwise read again and
        again)."""
        deadline = time.monotonic() + wait_s
        while not self.lease(holder, LEASE_MS) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            yield
        finally:
            self.release(holder)

    def release(self, holder: str) -> None:
        """Give the lease back (if still ours: it only saves work twice, never guards it)."""
        if self.r.get(keys.LEDGER_LEASE) == holder.encode():
            self.r.delete(keys.LEDGER_LEASE)

    def _check_window(self) -> None:
        """The kept generations are numbered by the window (``events.WINDOW_MS``) the first
        fold used; a process with another window must not fold or settle (it would read
        and write other generations)."""
        if self._window == gens.WINDOW_MS:
            return
        self.r.set(keys.LEDGER_WINDOW, gens.WINDOW_MS, nx=True)
        first = int(self.r.get(keys.LEDGER_WINDOW) or gens.WINDOW_MS)
        if first != gens.WINDOW_MS:
            raise OnestockError(
                f"the records were folded with an idempotency window of {first} ms, this "
                f"process has {gens.WINDOW_MS} ms (ONESTOCK_IDEMPOTENCY_DAYS): not folding"
            )
        self._window = gens.WINDOW_MS

    # -- folding ---------------------------------------------------------------------------

    def fold(self, shard: int, entries: int = FOLD_ENTRIES) -> int:
        """Fold the next ``entries`` output entries of the shard after its mark; the
        records folded (0: none waiting, or another process folded them first)."""
        self._check_window()
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

    def mark_exported(self, last: list[str]) -> None:
        """Each shard's records up to ``last[shard]`` are in a file (`onestock fulfilments
        --mark-exported`): where no consumer group or record subscriber reads the records,
        the trim may go up to there (``outbox.trim_points``); the greater of this and what
        was marked before is kept (export_mark.lua)."""
        for shard, eid in enumerate(last):
            if eid != "0-0":
                self._export_mark(keys=[keys.RECORDS_EXPORTED], args=[str(shard), eid])

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

    def settle(self, shards: int, until: float = math.inf) -> bool:
        """Settle every kept generation no version can reach any more: up to the newest
        swept one, once the shard's fold has reached the entry that sweep read last
        (``Sweeper.mark``), until ``time.monotonic()`` passes ``until``; whether any is
        left. (An order's versions are kept in the generation of its latest output entry;
        the state that version wrote is in the generation of its input entry, no later:
        once that is swept no event finds the order.)"""
        raw: Any = self.r.hgetall(keys.GEN_SWEPT_OUTBOX)
        if b"gen" not in raw:
            return False
        self._check_window()
        swept = int(raw[b"gen"])
        for shard in range(shards):
            upto = raw.get(str(shard).encode(), b"+").decode()
            if upto != "0-0" and self._pending(shard, upto):
                continue  # an entry written before the sweep is not folded yet
            for g in self._live(self._tally(shard), swept):
                if not self._settle_gen(shard, g, self._aftersale(shards), until):
                    return True
        return False

    def _aftersale(self, shards: int) -> tuple[Counter[tuple[str, str]], set[str]]:
        """Units returned per (order, SKU) and the applied write-offs' ids, read on from
        where this process last read the returns and movements streams (never trimmed)."""
        returned: list[Any] = []
        moved: list[Any] = []
        for s in range(shards):
            returned += self._read_on(keys.returns(s), return_from_packed)
            moved += self._read_on(keys.movements(s), movement_from_packed)
        back, offs = aftersale(returned, moved, Totals())
        self._back.update(back)
        self._offs |= offs
        return self._back, self._offs

    def _read_on(self, stream: str, decode: Any) -> list[Any]:
        """The stream's records after where this process last read it, decoded."""
        after = self._read_to.get(stream, "")
        got: list[Any] = []
        for eid, f in self._entries(stream, after):
            got += [decode(p) for p in packed_records(f)]
            after = eid.decode()
        self._read_to[stream] = after
        return got

    def _settle_gen(
        self, shard: int, gen: int, effects: tuple[Counter[tuple[str, str]], set[str]],
        until: float,
    ) -> bool:  # fmt: skip
        """Settle the generation's kept orders of the shard; False if the time ran out."""
        key = keys.kept(shard, gen)
        ks = [keys.tally(shard), keys.settled_totals(shard), key]
        batch: list[Any] = []
        for oid, raw in self._scan(key):
            totals = Totals()
            settle([OrderFold.load(oid, raw)], *effects, totals)
            fields = totals.fields()
            batch += [oid, len(fields)]
            for name, incr in fields.items():
                batch += [name, incr]
            if len(batch) >= SETTLE_CHUNK:
                self._settle_call(ks, [gen, "0", *batch])
                batch = []
                if time.monotonic() >= until:
                    return False
        self._settle_call(ks, [gen, "1", *batch])
        return True

    def _settle_call(self, ks: list[str], args: list[Any]) -> int:
        [n] = wire.scripts(self.r, [(self._settle, ks, args)])
        return int(n)

    def _scan(self, key: str) -> Iterator[tuple[str, str]]:
        for oid, raw in self.r.hscan_iter(key, count=_SCAN):
            yield oid.decode(), raw.decode()

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self, shard: int) -> Snapshot:
        """The shard's folded counts, totals and kept orders, and the records after the
        mark, read so that a fold or settle meanwhile is not counted twice or missed (read
        again; the caller holds the lease, ``holding``, where others may be folding)."""
        for _ in range(SNAPSHOT_TRIES):
            st = self._tally(shard)
            raw: Any = self.r.hgetall(keys.settled_totals(shard))
            totals = Totals()
            totals.add_fields({k.decode(): int(v) for k, v in raw.items()})
            orders: dict[str, OrderFold] = {}
            for g in self._live(st, int(st.get("hi", -1))):
                for oid, value in self._scan(keys.kept(shard, g)):
                    orders[oid] = OrderFold.load(oid, value)
            mark = st.get("mark", "")
            rest = [p for _, f in self._entries(keys.outbox(shard), mark)
                    for p in packed_records(f)]  # fmt: skip
            if self._tally(shard) == st:
                return Snapshot(int(st.get("n", 0)), int(st.get("dup", 0)),
                                int(st.get("first", 2**63)), int(st.get("last", 0)),
                                totals, orders, rest)  # fmt: skip
        raise OnestockError(f"shard {shard}'s records kept being folded while read: try again")

    def _entries(self, stream: str, mark: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
        """The stream's entries after ``mark`` ("": all)."""
        after = f"({mark}" if mark else "-"
        while True:
            rows: Any = self.r.xrange(stream, min=after, max="+", count=5000)
            yield from rows
            if len(rows) < 5000:
                return
            after = f"({rows[-1][0].decode()}"
