"""Available to sell, per channel: what each channel may sell of each SKU now, and its status.

The read side of the one inventory (``GET /availability``, ``onestock availability``,
``onestock stock``). It reads the SKUs' stock hashes, many SKUs in one pipelined round trip,
and never calls a deciding script. The arithmetic is the deciders' own (``lock_take`` in
state/lua/lib_stock.lua, and the routing floors), in one place, ``sellable``:

    available(c) = max(0, min(units - held   (online channels; a store channel takes it all),
                              units - the other channels' active, unconsumed locks))

``units``: the SKU's units over all locations (every hot-SKU bucket, and units in flight
between them); ``held``: at each location, the units of its safety stock, which only store
channels may sell (they live in bucket 0: the other buckets' units are anyone's). A lock is
active while now < its ``until``. ``status`` is ``sold_out`` at 0, ``low_stock`` at or below
the SKU's ``low_stock_threshold`` (none: never), else ``in_stock``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import hiredis
import orjson

from onestock.domain.errors import OnestockError
from onestock.domain.protocol import SEP
from onestock.domain.types import Catalog
from state import keys, wire
from state.stock import Lock, fields
from state.store import Store

IN_STOCK, LOW_STOCK, SOLD_OUT = "in_stock", "low_stock", "sold_out"
NO_CATALOG = "no catalog loaded: run `onestock catalog load PATH` first"
_LOCK = keys.LOCK_QTY.encode()[1]  # the byte after NUL of a lock's fields ('\0Lq:', ...)
_LOCK_PART = {keys.LOCK_QTY.encode()[2]: 0, keys.LOCK_UNTIL.encode()[2]: 1,
              keys.LOCK_USED.encode()[2]: 2}  # fmt: skip
_PREFIX = len(keys.LOCK_QTY)  # '\0Lq:' before the channel's id


def status(available: int, low_stock_threshold: int | None) -> str:
    """A (SKU, channel)'s status from its available units: the one definition (the change
    feed judges transitions by it too)."""
    if available <= 0:
        return SOLD_OUT
    if low_stock_threshold is not None and available <= low_stock_threshold:
        return LOW_STOCK
    return IN_STOCK


def sellable(units: int, held: int, locked: int, own: int, online: bool) -> int:
    """What one channel may sell of a SKU with ``units`` in stock, ``held`` of them safety
    stock, ``locked`` units in active locks of which ``own`` are the channel's own."""
    return max(0, min(units - held if online else units, units - locked + own))


class Stock(NamedTuple):
    """A SKU's stock as availability judges it."""

    units: int  # units over all locations (positive levels): every bucket, and in flight
    held: int  # of them, safety stock (online channels may not sell it)
    locks: list[Lock]
    levels: dict[str, int]  # units per location (filled only when asked: ``decode``)


def available(stock: Stock, channel: str, online: bool, at_ms: int) -> int:
    """What ``channel`` (``online``: of kind online) may sell of the SKU at ``at_ms``."""
    if not stock.locks:
        return sellable(stock.units, stock.held, 0, 0, online)
    left = {lk.channel: lk.left(at_ms) for lk in stock.locks}
    return sellable(stock.units, stock.held, sum(left.values()), left.get(channel, 0), online)


def channel_available(
    stock: Stock, at_ms: int, channels: Iterable[tuple[str, bool]]
) -> dict[str, int]:
    """Per (channel id, online?): what it may sell of the SKU at ``at_ms``."""
    return {c: available(stock, c, online, at_ms) for c, online in channels}


class AvailabilityError(OnestockError):
    """A request availability cannot answer; ``http``: its HTTP status."""

    def __init__(self, message: str, http: int) -> None:
        super().__init__(message)
        self.http = http


def unknown_channel(channel: str) -> AvailabilityError:
    return AvailabilityError(f"unknown channel {channel!r}", 404)


# -- the catalog's side, parsed once per catalog version --------------------------------------


class Model:
    """What availability needs of one catalog version: channels, SKUs, thresholds, safety
    stock, hot-SKU buckets, and each SKU's reads (packed once, for the raw round trip)."""

    def __init__(self, version: int, cat: Catalog, size: int = 0) -> None:
        self.version = version
        self.size = size  # the catalog's JSON, bytes: with the version, which catalog it is
        self.channels = [(c.id, c.kind == "online") for c in cat.channels]
        self.online = dict(self.channels)
        self.skus = [s.sku for s in cat.skus]
        self.low = {s.sku: s.low_stock_threshold for s in cat.skus}
        self.buckets = {s.sku: s.buckets for s in cat.skus if s.buckets > 1}
        self.safety = {
            loc.id.encode(): loc.safety_stock for loc in cat.locations if loc.safety_stock > 0
        }
        self._packed: dict[str, tuple[bytes, int]] = {}
        self._seen: dict[str, tuple[Any, Stock | None]] = {}  # SKU -> (last reply, its Stock)

    def known(self, skus: Iterable[str]) -> list[str]:
        """The catalog's SKUs among ``skus``, once each, in their order."""
        return [s for s in dict.fromkeys(skus) if s in self.low]

    def reads(self, sku: str) -> list[tuple[Any, ...]]:
        """A SKU's reads: its stock hash; a hot SKU's also its other buckets' and each
        bucket's transfers in flight (``decode`` takes them in this order)."""
        n = self.buckets.get(sku, 1)
        if n == 1:
            return [("HGETALL", keys.stock(sku))]
        names = [keys.bucket(sku, b) for b in range(n)]
        return [("HGETALL", keys.stock(b)) for b in names] + [
            ("HGETALL", keys.lent(b)) for b in names
        ]

    def packed(self, skus: Sequence[str]) -> tuple[bytes, int]:
        """The reads of ``skus`` as one RESP write, and how many replies it asks for."""
        out, n = [], 0
        for sku in skus:
            got = self._packed.get(sku)
            if got is None:
                reads = self.reads(sku)
                got = self._packed[sku] = (wire_pack(reads), len(reads))
            out.append(got[0])
            n += got[1]
        return b"".join(out), n

    def decode(
        self, skus: Sequence[str], replies: Sequence[Any], levels: bool = False
    ) -> tuple[dict[str, Stock], list[Transfer]]:
        """Each SKU's ``Stock`` from the replies to its ``reads`` (a SKU missing in Redis is
        left out), and the transfers between a hot SKU's buckets that may still be in flight
        (``settle`` counts those that are); ``levels``: also its units per location.

        A reply equal to the SKU's previous one is not decoded again: its ``Stock`` is the
        same (the stock itself is read from Redis every time; only the parsing is saved)."""
        out: dict[str, Stock] = {}
        pending: list[Transfer] = []
        seen, safety = self._seen, self.safety
        i = 0
        for sku in skus:
            n = self.buckets.get(sku, 1)
            got = replies[i]
            if n > 1:
                stock = self._pooled(sku, replies[i : i + 2 * n], levels, pending)
                i += 2 * n
            elif levels:
                stock, i = (tally(got, safety, {}) if got else None), i + 1
            else:
                last = seen.get(sku)
                if last is None or last[0] != got:
                    last = seen[sku] = (got, tally(got, safety) if got else None)
                stock, i = last[1], i + 1
            if stock is not None:
                out[sku] = stock
        return out, pending

    def _pooled(
        self, sku: str, replies: Sequence[Any], levels: bool, pending: list[Transfer]
    ) -> Stock | None:
        """A hot SKU's ``Stock`` over its buckets (the replies to its ``reads``); its
        transfers in flight are added to ``pending``."""
        n = len(replies) // 2
        if not replies[0]:
            return None
        stock = tally(replies[0], self.safety, {} if levels else None)
        units = stock.units
        for part in replies[1:n]:  # the other buckets hold no safety stock: none is held
            if part:
                units += tally(part, {}, stock.levels if levels else None).units
        pending += [t for entries in replies[n:] for t in transfers(sku, entries)]
        return stock._replace(units=units)

    def document(self, stocks: dict[str, Stock], channel: str | None, at_ms: int) -> dict[str, Any]:
        """The contract's JSON: one channel's SKUs, or every channel's."""
        if channel is not None:
            online = self.online[channel]
            return {"channel": channel, "skus": self._skus(stocks, channel, online, at_ms)}
        return {
            "channels": {
                c: {"skus": self._skus(stocks, c, online, at_ms)} for c, online in self.channels
            }
        }

    def _skus(
        self, stocks: dict[str, Stock], channel: str, online: bool, at_ms: int
    ) -> dict[str, dict[str, Any]]:
        low = self.low
        out = {}
        for sku, stock in stocks.items():
            n = available(stock, channel, online, at_ms)
            out[sku] = {"available": n, "status": status(n, low[sku])}
        return out


def tally(got: Any, safety: dict[bytes, int], levels: dict[str, int] | None = None) -> Stock:
    """A stock hash as HGETALL answered it (a flat list; a dict on a cluster): its units (as
    ``read_stock`` in lib_stock.lua counts them: positive levels), the safety stock held of
    them, its locks; ``levels``: units per location are added to it. (The hot loop of
    ``GET /availability``: one pass, nothing decoded that is not needed.)"""
    if isinstance(got, dict):
        got = [x for pair in got.items() for x in pair]
    units = held = 0
    lock_fields: list[tuple[bytes, bytes]] | None = None
    it = iter(got)
    for field, value in zip(it, it, strict=True):
        if field[0]:  # a location (internal fields start with NUL)
            q = int(value)
            if levels is not None:
                name = field.decode()
                levels[name] = levels.get(name, 0) + q
            if q > 0:
                units += q
                if field in safety:
                    held += min(q, safety[field])
        elif field[1] == _LOCK:
            lock_fields = lock_fields or []
            lock_fields.append((field, value))
    locks = _locks(lock_fields) if lock_fields else []
    return Stock(units, held, locks, levels if levels is not None else {})


def _locks(lock_fields: list[tuple[bytes, bytes]]) -> list[Lock]:
    """The locks of a stock hash's lock fields ('\\0Lq:<channel>', '\\0Lu:..', '\\0Lc:..')."""
    parts: dict[bytes, list[int]] = {}
    for field, value in lock_fields:
        parts.setdefault(field[_PREFIX:], [0, 0, 0])[_LOCK_PART[field[2]]] = int(value)
    return [Lock(c.decode(), q, until, used) for c, (q, until, used) in parts.items()]


class Transfer(NamedTuple):
    """Units lent by one bucket of ``sku`` to bucket ``into``, not known to be received."""

    sku: str
    into: int
    transfer: str
    pairs: list[tuple[str, int]]


def transfers(sku: str, entries: Any) -> list[Transfer]:
    """The transfers in one bucket's lent hash (``keys.lent``: id -> "into\\x1floc\\x1fq...")."""
    out = []
    for tid, value in fields(entries).items():
        into, *flat = value.decode().split(SEP)
        pairs = [(flat[i], int(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
        out.append(Transfer(sku, int(into), tid.decode(), pairs))
    return out


def received_reads(pending: list[Transfer]) -> list[tuple[str, ...]]:
    return [("EXISTS", keys.received(keys.bucket(t.sku, t.into), t.transfer)) for t in pending]


def settle(
    stocks: dict[str, Stock], pending: list[Transfer], received: list[Any], levels: bool = False
) -> None:
    """Count the units of the transfers not yet received: the SKU's, in flight (and, with
    ``levels``, in its units per location)."""
    for t, there in zip(pending, received, strict=True):
        st = stocks.get(t.sku)
        if there or st is None:
            continue
        stocks[t.sku] = st._replace(units=st.units + sum(q for _, q in t.pairs if q > 0))
        for loc, q in t.pairs if levels else ():
            st.levels[loc] = st.levels.get(loc, 0) + q


def wire_pack(commands: Iterable[tuple[Any, ...]]) -> bytes:
    return b"".join(hiredis.pack_command(c) for c in commands)


# -- reading, synchronously (the command line) ------------------------------------------------


def model_of(store: Store) -> Model:
    version, cat = store.catalog()
    if cat is None:
        raise AvailabilityError(NO_CATALOG, 503)
    return Model(version, cat)


def read_stocks(
    store: Store, model: Model, skus: Sequence[str], levels: bool = False
) -> dict[str, Stock]:
    """The ``Stock`` of each of ``skus`` (catalog SKUs) that Redis holds: one round trip
    (two while a hot SKU's units are moving between its buckets)."""
    replies = wire.reads(store.r, [c for sku in skus for c in model.reads(sku)])
    stocks, pending = model.decode(skus, replies, levels)
    if pending:
        settle(stocks, pending, wire.reads(store.r, received_reads(pending)), levels)
    return stocks


def read(
    store: Store, channel: str | None = None, skus: Sequence[str] | None = None,
    at_ms: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The contract's availability document, as ``GET /availability`` answers it; here an
    unknown SKU is an error too."""
    model = model_of(store)
    if channel is not None and channel not in model.online:
        raise unknown_channel(channel)
    names = model.skus if skus is None else list(dict.fromkeys(skus))
    unknown = [s for s in names if s not in model.low]
    if unknown:
        raise AvailabilityError(f"unknown SKU {unknown[0]!r}", 404)
    at = int(time.time() * 1000) if at_ms is None else at_ms
    return model.document(read_stocks(store, model, names), channel, at)


def encode(doc: dict[str, Any]) -> bytes:
    """The document's bytes, as ``GET /availability`` sends them."""
    return orjson.dumps(doc)


def rows(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(SKU, channel, {"available", "status"}) of a document, SKU by SKU."""
    per: dict[str, Any] = {doc["channel"]: doc} if "channel" in doc else doc["channels"]
    skus: dict[str, Any] = next(iter(per.values()))["skus"] if per else {}
    for sku in skus:
        for channel, part in per.items():
            yield sku, channel, part["skus"][sku]
