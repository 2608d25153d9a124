"""The audit's fold of record versions (docs/memory.md, "Trimming the records").

``ops.audit`` re-adds what the records say against the stock. Record versions are folded
per order (``Tally``: the latest version, the last accepted one before it, the gift any
version carried) and in total (records, duplicates, decision times); once no new version
of an order can come, its final version is settled into units per SKU and location
(``settle``). The folding is the same whether it runs over a whole output stream at audit
time or chunk by chunk before the stream is trimmed (state/ledger.py keeps the per-order
part in generations and the settled totals per shard).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec

from onestock.domain.movements import moved_units
from onestock.domain.protocol import GS, RS, SEP, Code, code_of
from onestock.domain.records import outcome_of
from onestock.domain.types import Gift, MovementRecord, ReturnRecord, Shipment

# A settled total's field in a shard's tally (state/ledger.py): units out of stock per SKU and
# location, accepted orders, gifts given, rejections per reason.
UNITS = "u"
ACCEPTED = "a"
GIFTS = "g"
REJECTED = "r"


class OrderFold(msgspec.Struct):
    """One order's versions as the audit needs them: the latest (``final``), the last
    accepted one a later version replaced (``was``; a re-route that ended rejected gave back
    only what its returns had not) and the gift an earlier version carried (a re-routed
    order's later versions carry none, its gift stands). Versions are kept packed without
    the fields the audit does not read."""

    final: str
    was: str = ""
    gift: str = ""

    def dump(self) -> str:
        """Stored under the order id: the versions without it."""
        was = self.was.partition(SEP)[2]
        return f"{self.final.partition(SEP)[2]}{RS}{was}{RS}{self.gift}"

    @classmethod
    def load(cls, oid: str, raw: str) -> OrderFold:
        final, was, gift = raw.split(RS)
        return cls(f"{oid}{SEP}{final}", f"{oid}{SEP}{was}" if was else "", gift)


def slim(packed: str) -> tuple[str, str, int, int, int, str]:
    """(order id, the version packed without channel/paid/received/decided/late, version
    number, received ms, decided ms, gift field) of a packed record."""
    oid, _, _, mode, received, decided, version, gift, _, outcome = packed.split(SEP, 9)
    kept = f"{oid}{SEP}{SEP}{SEP}{mode}{SEP}0{SEP}0{SEP}{version}{SEP}{gift}{SEP}{SEP}{outcome}"
    return oid, kept, int(version or 1), int(received), int(decided), gift


def _version(kept: str) -> int:
    return int(kept.split(SEP, 7)[6] or 1)


def _accepted(kept: str) -> bool:
    return code_of(kept.split(SEP, 9)[9]) is Code.ACCEPTED


class Tally:
    """Record versions folded: per order (``orders``) and in total. ``lat`` (received ->
    decided ms per first version) is kept only for the versions folded by this object."""

    def __init__(self, orders: dict[str, OrderFold] | None = None) -> None:
        self.orders: dict[str, OrderFold] = orders if orders is not None else {}
        self.n = self.dup = 0
        self.first, self.last = 2**63, 0
        self.lat: list[int] = []

    def add(self, packed: str) -> str:
        """Fold one record version in; its order id."""
        oid, kept, version, received, decided, gift = slim(packed)
        fold = self.orders.get(oid)
        if fold is not None and version > _version(fold.final):
            was = fold.final if _accepted(fold.final) else fold.was
            self.orders[oid] = OrderFold(kept, was, gift or fold.gift)
            return oid  # a later version (paid, expired, cancelled, re-routed) replaces it
        self.n += 1
        self.dup += fold is not None
        if fold is None:
            self.orders[oid] = OrderFold(kept, "", gift)
        else:  # a copy: the latest copy stands (as every version written is kept)
            self.orders[oid] = OrderFold(kept, fold.was, gift or fold.gift)
        self.lat.append(decided - received)
        self.first, self.last = min(self.first, decided), max(self.last, decided)
        return oid


class Totals(msgspec.Struct):
    """Settled orders: units out of stock per (SKU, location), accepted orders, gifts,
    rejections (and expiries, cancellations) per reason."""

    shipped: Counter[tuple[str, str]] = msgspec.field(default_factory=Counter)
    rejected: Counter[str] = msgspec.field(default_factory=Counter)
    accepted: int = 0
    gifts: int = 0

    def fields(self) -> dict[str, int]:
        """The totals as a shard's tally fields (state/ledger.py) -> increments."""
        out: dict[str, int] = {}
        for (sku, loc), n in self.shipped.items():
            if n:
                out[f"{UNITS}{SEP}{sku}{SEP}{loc}"] = n
        for reason, n in self.rejected.items():
            out[f"{REJECTED}{SEP}{reason}"] = n
        if self.accepted:
            out[ACCEPTED] = self.accepted
        if self.gifts:
            out[GIFTS] = self.gifts
        return out

    def add(self, other: Totals) -> None:
        self.shipped.update(other.shipped)
        self.rejected.update(other.rejected)
        self.accepted += other.accepted
        self.gifts += other.gifts

    def add_fields(self, fields: Mapping[str, int]) -> None:
        """Add a shard's settled tally fields (the inverse of ``fields``)."""
        for name, n in fields.items():
            kind, _, rest = name.partition(SEP)
            if kind == UNITS:
                sku, _, loc = rest.partition(SEP)
                self.shipped[(sku, loc)] += n
            elif kind == REJECTED:
                self.rejected[rest] += n
            elif name == ACCEPTED:
                self.accepted += n
            elif name == GIFTS:
                self.gifts += n


def _returned_stays_shipped(
    oid: str,
    ships: list[Shipment],
    back: Counter[tuple[str, str]],
    shipped: Counter[tuple[str, str]],
) -> None:
    """A cancelled order's units that had come back by a return before its cancel: shipped
    from its allocations, last allocation first (as undo_units.lua takes them off)."""
    left = {sku: back[(oid, sku)] for sku in {ln.sku for s in ships for ln in s.lines}}
    for ship in reversed(ships):
        for ln in reversed(ship.lines):
            take = min(left.get(ln.sku, 0), ln.qty)
            if take:
                shipped[(ln.sku, ship.location)] += take
                left[ln.sku] -= take


def aftersale(
    returned: Iterable[ReturnRecord], moved: Iterable[MovementRecord], into: Totals
) -> tuple[Counter[tuple[str, str]], set[str]]:
    """Returns and applied movements into ``into`` (returned units are back in stock where
    returned; a movement counts as if loaded with the stock); (units returned per (order id,
    SKU), the applied write-offs' ids) for ``settle``."""
    back: Counter[tuple[str, str]] = Counter()
    for ret in returned:
        for ln in ret.lines:
            into.shipped[(ln.sku, ret.location)] -= ln.qty
            back[(ret.order_id, ln.sku)] += ln.qty
    offs: set[str] = set()  # "<order id>@<location>" for a re-route's rejecting shipment
    for mv in moved:
        for sku, loc, units in moved_units(mv):
            into.shipped[(sku, loc)] -= units
        if mv.kind == "write_off" and mv.status == "applied":
            offs.add(mv.movement_id)
    return back, offs


def _gift(field: str) -> Gift | None:
    if not field:
        return None
    camp, sku, rank, loc = field.split(GS)
    return Gift(campaign=camp, sku=sku, rank=int(rank), location=loc)


def settle(
    orders: Iterable[OrderFold],
    back: Counter[tuple[str, str]],
    offs: set[str],
    into: Totals,
) -> None:
    """Add each order's final version to ``into``: units out of stock per (SKU, location)
    and its outcome. ``back``: units returned per (order id, SKU) (returned units are back
    in stock: the caller subtracts every return where it was taken); ``offs``: the applied
    write-offs' ids ("<order id>@<location>": a re-route's rejecting shipment, written off)."""
    shipped, rejected = into.shipped, into.rejected
    for fold in orders:
        rec = outcome_of(fold.final)
        if rec.status == "cancelled":  # its cancel gave back only what was not returned:
            _returned_stays_shipped(rec.order_id, rec.shipments, back, shipped)  # (shipped)
        elif rec.status == "rejected" and fold.was:  # likewise, a re-route's end gave back
            was = outcome_of(fold.was).shipments  # only the other shipments (the write-off
            kept = [s for s in was if f"{rec.order_id}@{s.location}" not in offs]  # counts
            _returned_stays_shipped(rec.order_id, kept, back, shipped)  # the rejecting one's)
        if rec.status in ("reserved", "accepted"):  # reserved: its units are held for it
            for ship in rec.shipments:
                for ln in ship.lines:
                    shipped[(ln.sku, ship.location)] += ln.qty
        if rec.status == "accepted":
            into.accepted += 1
            gift = _gift(rec.gift or fold.gift)
            if gift is not None:
                shipped[(gift.sku, gift.location)] += 1
                into.gifts += 1
        elif rec.status != "reserved":
            rejected[rec.reason or rec.status] += 1
