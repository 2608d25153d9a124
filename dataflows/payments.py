"""Payments and deadlines of a shard batch (docs/payments.md).

A pending order is decided like any other, but its units are *reserved* (``Code.RESERVED``,
record ``reserved``, version 1) and it is no first-N candidate yet. Then exactly one of:

- a ``paid`` event stored before its deadline: the order is ``accepted`` (version 2), a
  candidate of its SKUs' first-N campaigns ranked by the event's ``paid_at`` (its record is
  then held for the gift like a first one);
- its deadline passes with no such event: ``expired`` (version 2), its units given back once
  (``undo_units.lua``, as a cancel does);
- a cancel: ``cancelled`` (``Aftersale.cancel``).

Which clock decides: the input stream's. An event's entry id is the Redis server's time
when onestock stored it; a ``paid`` event counts when that time is not after the deadline,
however late the dataflow reads it (down at the deadline, killed around it, behind a
backlog), and an order expires only once every entry older than its deadline has been read
(``payments.lua``'s horizon). The outcome therefore depends on the events alone: a replay
after ``kill -9`` decides the same, and no worker's clock or speed can pay an order late or
expire one early.

The shard's worker applies both, so a payment and an expiry of one order never race: a
batch is split where an order would have a payment and another event (``segments``), the
payments of a segment are applied after its orders and cancels, and its expiries last,
skipping the orders the segment names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dataflows.aftersale import Aftersale
from dataflows.batch import Entry
from onestock.domain import events
from onestock.domain.protocol import SEP, Code
from onestock.domain.records import head, held, iso_ms, pack
from state import keys
from state.conn import Waiter
from state.keys import public
from state.payments import OrderState
from state.store import Store

EXPIRE_LIMIT = 1000  # due orders expired per batch or tick of a shard (the rest: the next)
# the events an order may have no other event beside in a batch's part (``segments``)
_LATER = frozenset({events.Paid, events.Fulfilment})
# a paid event that changes nothing and has no outcome of its own (the order was paid)
_ALREADY_PAID = ""
# why a payment of an order that is not reserved is refused, by the order's outcome code
_NOT_RESERVED: dict[str, str] = {
    Code.EXPIRED: "the order expired unpaid",
    Code.CANCELLED: "the order was cancelled",
}


def segments(entries: list[Entry]) -> Iterator[list[Entry]]:
    """The batch (decoded) in parts such that an order with a ``paid`` or a ``fulfilment``
    event in a part has no other event there (it then meets the order as earlier parts left
    it, whatever the batching). Batches without either are one part."""
    if not any(e[2].__class__ in _LATER for e in entries):
        yield entries
        return
    start = 0
    named: set[str] = set()  # the order ids of the part's events
    later: set[str] = set()  # those with a payment or a fulfilment event in the part
    for i, (_, _, d) in enumerate(entries):
        oid = _order_id(d)
        if oid is None:
            continue
        is_later = d.__class__ in _LATER
        if (is_later and oid in named) or oid in later:
            yield entries[start:i]
            start, named, later = i, set(), set()
        named.add(oid)
        if is_later:
            later.add(oid)
    yield entries[start:]


def _order_id(d: events.Decoded) -> str | None:
    if d.__class__ is events.Valid:
        return d.order.order_id  # type: ignore[union-attr]
    if d.__class__ in (events.Movement, events.BadMovement, events.Dead):
        return None
    return d.order_id  # type: ignore[union-attr]


def _refusal(st: OrderState, received_ms: int) -> str | None:
    """Why a payment changes nothing (a dead letter's reason; ``_ALREADY_PAID``: no outcome
    of its own); None: it makes the reserved order accepted."""
    if st.value is None:
        return "no order of this id came before it"
    if st.cancelled:
        return "the order was cancelled"
    code = st.value[1:2] if st.value[:1] in (Code.HELD, Code.CANDIDATE) else st.value[:1]
    if code == Code.ACCEPTED:
        return _ALREADY_PAID
    if code != Code.RESERVED:
        return _NOT_RESERVED.get(code, "the order was rejected")
    if st.deadline_ms is not None and received_ms > st.deadline_ms:
        return f"it came after the payment deadline {iso_ms(st.deadline_ms)}"
    return None


def fresh(store: Store, wait: Waiter, shard: int, items: list[Any]) -> list[Any]:
    """The payment or fulfilment events (entry id first) not judged before: a replay of
    one after a crash is skipped, whatever later events of its order did since
    (keys.REG_EVENT, written with the event's outcome; keys.REG_DEAD, with its dead letter:
    one refused because no order came before it must not find the order on a replay)."""
    fields = [f for i in items for f in (keys.REG_EVENT + i[0], keys.REG_DEAD + i[0])]
    got = wait.call(store.shards.registry, shard, fields)
    return [i for n, i in enumerate(items) if got[2 * n : 2 * n + 2] == [None, None]]


class Payments:
    def __init__(self, store: Store, wait: Waiter, aftersale: Aftersale) -> None:
        self.store = store
        self.wait = wait
        self.aftersale = aftersale

    def paid(
        self,
        shard: int,
        paids: list[tuple[str, bytes, events.Paid]],
        campaign_skus: set[str],
        decided: str,
        dead: list[list[Any]],
    ) -> tuple[list[str], int]:
        """Apply a segment's payments (none of their orders has another event in it):
        registry triples of the accepted versions, and the greatest paid_at (ms) among them
        (-1: none; a refused payment moves no first-N watermark); refused ones become dead
        letters."""
        paids = fresh(self.store, self.wait, shard, paids)
        states = self.wait.call(self.store.payments.states, shard, [p.order_id for *_, p in paids])
        out: list[str] = []
        latest = -1
        candidates: dict[str, list[tuple[str, int]]] = {}
        for (eid, raw, p), st in zip(paids, states, strict=True):
            received = eid.partition("-")[0]
            why = _refusal(st, int(received))
            if why is None or why == _ALREADY_PAID:  # (a replay of this entry: skipped)
                out += [keys.REG_EVENT + eid, "1", ""]
            if why is not None:
                if why != _ALREADY_PAID:
                    dead.append(
                        [eid, events.text_of(raw), f"paid refused: {why} - at `$.order_id`"]
                    )
                continue
            assert st.value is not None
            latest = max(latest, p.paid_ms)
            allocs = st.value[1:]  # SEP + (location, SKU, units) triples
            accepted = Code.ACCEPTED + allocs
            version = str(st.version + 1)
            rec_head = head(p.order_id, st.channel, p.paid_at, st.mode, received, decided, version)
            gifted = {public(s) for s in allocs.split(SEP)[2::3]} & campaign_skus
            for sku in gifted:  # a first-N candidate from now, ranked by this paid_at
                candidates.setdefault(sku, []).append((p.order_id, p.paid_ms))
            if gifted:  # its record waits for the gift's settlement (release_held.lua)
                value, rec = Code.HELD + accepted, held(rec_head, accepted)
            else:
                value, rec = accepted, f"{rec_head}{SEP}{SEP}{SEP}{accepted}"
            out += [keys.REG_STATE + p.order_id, f"{version}{SEP}{value}", rec]
        for sku, items in candidates.items():
            self.wait.call(self.store.campaigns.add_candidates, sku, items)
        return out, latest

    def expire(
        self,
        shard: int,
        after: str,
        new: list[tuple[str, int, str, str]],
        busy: set[str],
        decided: str,
        paid: list[str] | None = None,
    ) -> list[str]:
        """Record the segment's new reserved orders (order id, deadline ms, channel, mode),
        drop its ``paid`` ones, then expire the shard's due ones the segment does not name:
        their units back once, registry triples of their ``expired`` versions."""
        due = self.wait.call(self.store.payments.due, shard, after, new, EXPIRE_LIMIT, paid)
        due = [d for d in due if d.order_id not in busy]
        if not due:
            return []
        states = self.wait.call(self.store.payments.states, shard, [d.order_id for d in due])
        out: list[str] = []
        undo: list[tuple[str, str]] = []
        for d, st in zip(due, states, strict=True):
            if st.value is None or st.value[:1] != Code.RESERVED or st.cancelling or st.ahead:
                continue
            undo.append((d.order_id, st.value))
            version = str(st.version + 1)
            expired = Code.EXPIRED + st.value[1:]
            rec = pack(d.order_id, d.channel, "", d.mode, str(d.deadline_ms), decided, expired,
                       version)  # fmt: skip
            out += [keys.REG_STATE + d.order_id, f"{version}{SEP}{expired}", rec]
        if undo:  # (before the records: a crash in between gives back nothing twice)
            self.aftersale.undo(undo)
        return out
