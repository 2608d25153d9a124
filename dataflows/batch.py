"""A shard batch as the decider reads and writes it: its events decoded and classified
(``decode``), and each order's registry triple and metric tag for ``emit.lua``
(``triples``)."""

from __future__ import annotations

from typing import Any, NamedTuple

from dataflows.movements import Item as MovementItem
from onestock.domain import events, meter
from onestock.domain.protocol import Code
from onestock.domain.records import head, held, pack
from state import gens

# an input entry with its event decoded: (entry id, raw event, decoded)
Entry = tuple[str, bytes, events.Decoded]


class Batch(NamedTuple):
    """A batch decoded (``decode``)."""

    # order id -> (entry id, its first event in the batch); the judge drops the replays
    firsts: dict[str, tuple[str, events.Decoded]]
    cancels: dict[str, str]  # order id -> entry id of the (first) cancel in the batch
    returns: list[tuple[str, bytes, events.Return]]  # (entry id, raw event, return)
    dead: list[list[Any]]  # [entry id, raw text, reason]; refused returns join them
    seen: int  # the greatest paid_at (ms) of the batch's valid orders, -1 if none
    movements: list[MovementItem]  # (entry id, movement) in arrival order
    paids: list[tuple[str, bytes, events.Paid]]  # (entry id, raw, payment) in arrival order
    fulfilments: list[tuple[str, bytes, events.Fulfilment]]  # likewise


def decoded(entries: list[tuple[str, bytes]], now_ms: int) -> list[Entry]:
    """Each entry with its event decoded, once per batch (``events.decode``, never raises).

    A paid_at is judged against the moment its entry came (its id's time: the same on every
    replay, and what the idempotency window's dead letters rely on, docs/memory.md), or
    ``now_ms`` for an entry id before events.EARLIEST_MS (only hand-made test streams)."""
    classify, earliest = events.decode, events.EARLIEST_MS
    out: list[Entry] = []
    for eid, raw in entries:
        came = int(eid[: eid.index("-")])
        out.append((eid, raw, classify(raw, came if came >= earliest else now_ms)))
    return out


def decode(entries: list[Entry]) -> Batch:
    """Each decoded entry classified: an order's first event in the batch (a later copy
    changes nothing), cancels, returns, movements, payments, fulfilment events, dead
    letters."""
    firsts: dict[str, tuple[str, events.Decoded]] = {}
    dead: list[list[Any]] = []
    cancels: dict[str, str] = {}
    returns: list[tuple[str, bytes, events.Return]] = []
    movements: list[MovementItem] = []
    paids: list[tuple[str, bytes, events.Paid]] = []
    fulfilments: list[tuple[str, bytes, events.Fulfilment]] = []
    seen = -1
    Dead, Valid, Cancel = events.Dead, events.Valid, events.Cancel
    # an order paid before this came longer ago than the window allows (only then is its
    # own entry's time looked at): a dead letter, never decided (events.STALE_MS)
    stale = int(entries[-1][0].partition("-")[0]) - events.STALE_MS if entries else 0
    for eid, raw, d in entries:
        cls = d.__class__
        if cls is Valid:
            why = _stale(eid, d) if d.paid_ms < stale else ""  # type: ignore[union-attr,arg-type]
            if why:
                dead.append([eid, events.text_of(raw), why])
                continue
            oid = d.order.order_id  # type: ignore[union-attr]
            if oid not in firsts:
                firsts[oid] = (eid, d)
                if d.paid_ms > seen:  # type: ignore[union-attr]
                    seen = d.paid_ms  # type: ignore[union-attr]
        elif cls is Dead:
            dead.append([eid, d.raw, d.reason])  # type: ignore[union-attr]
        elif cls is Cancel:
            cancels.setdefault(d.order_id, eid)  # type: ignore[union-attr]
        elif cls is events.Return:
            returns.append((eid, raw, d))  # type: ignore[arg-type]
        elif cls is events.Movement or cls is events.BadMovement:
            movements.append((eid, d))  # type: ignore[arg-type]
        elif cls is events.Paid:
            paids.append((eid, raw, d))  # type: ignore[arg-type]
        elif cls is events.Fulfilment:
            fulfilments.append((eid, raw, d))  # type: ignore[arg-type]
        elif d.order_id not in firsts:  # type: ignore[union-attr]
            firsts[d.order_id] = (eid, d)  # type: ignore[union-attr]
    return Batch(firsts, cancels, returns, dead, seen, movements, paids, fulfilments)


def by_generation(entries: list[Entry]) -> list[list[Entry]]:
    """The entries (in id order) split where their generation changes (state/gens.py): each
    part's scripts write in one generation's idempotency state (and read the ones beside it)."""
    first = gens.of_id(entries[0][0])
    if gens.of_id(entries[-1][0]) == first:
        return [entries]
    parts: list[list[Entry]] = [[]]
    for e in entries:
        g = gens.of_id(e[0])
        if g != first:
            first = g
            parts.append([])
        parts[-1].append(e)
    return parts


def _stale(eid: str, d: events.Valid) -> str:
    """Why an order paid too long before its entry came is a dead letter ("": it is not)."""
    came = int(eid.partition("-")[0])
    if d.paid_ms >= came - events.STALE_MS:
        return ""
    return (
        f"paid_at: {d.order.paid_at!r} is more than {events.STALE_MS / 86_400_000:g} days "
        f"before the order came ({events.iso(came)}): past the idempotency window "
        "(ONESTOCK_IDEMPOTENCY_DAYS), a copy of an order decided then is not decided again "
        "- at `$.paid_at`"
    )


def triples(
    firsts: dict[str, tuple[str, events.Decoded]],
    outcome: dict[str, str],
    held_ids: set[str],
    decided: str,
    records: list[str],
    tags: list[str],
    gifts: set[str],
) -> tuple[int, int, int, int, list[str]]:
    """Each order's registry triple (order id, registry value, packed record) onto
    ``records`` and its metric tag onto ``tags``; returns ``Decided.meter``. A first-N
    candidate's record is held until its gift is settled (``Code.HELD``); a rejected
    order of a campaign SKU goes to the decisions stream too (``CAMPAIGN_REJECTED``)."""
    add, tag = records.extend, tags.append
    now = int(decided)
    tag_of = meter.Tagger(now)
    sum_r = sum_p = n_p = 0
    Valid = events.Valid
    ACCEPTED, REJECTED, CANCELLED = Code.ACCEPTED, Code.REJECTED, Code.CANCELLED
    CAMPAIGN_REJECTED, RESERVED = Code.CAMPAIGN_REJECTED, Code.RESERVED
    for oid, (eid, d) in firsts.items():
        res = outcome[oid]
        kind = res[0]
        received = eid.partition("-")[0]
        received_ms = int(received)
        sum_r += now - received_ms
        if d.__class__ is Valid:
            o = d.order  # type: ignore[union-attr]
            channel, paid, mode = o.channel, o.paid_at, o.delivery.mode
            paid_ms = d.paid_ms  # type: ignore[union-attr]
            sum_p += now - paid_ms
            n_p += 1
            tag(tag_of(received_ms, paid_ms, res))
            campaign = bool(gifts) and kind == REJECTED and any(ln.sku in gifts for ln in o.lines)
        else:
            channel, paid, mode = d.channel or "", d.paid_at or "", "ship"  # type: ignore[union-attr]
            tag(tag_of(received_ms, None, res))
            campaign = False
        if oid in held_ids:  # held until its gift is settled; decided at once
            rec = held(head(oid, channel, paid, mode, received, decided), res)
            add((oid, Code.HELD + res, rec))
            continue
        rec = pack(oid, channel, paid, mode, received, decided, res)
        if kind == ACCEPTED or kind == RESERVED:
            add((oid, res, rec))
        elif kind == CANCELLED:  # cancelled in this batch (or before it came)
            add((oid, CANCELLED, rec))
        elif campaign:  # a rejected campaign order: its decision goes to the decisions stream
            add((oid, CAMPAIGN_REJECTED, rec))
        else:
            add((oid, REJECTED, rec))
    return sum_r, len(firsts), sum_p, n_p, tags
