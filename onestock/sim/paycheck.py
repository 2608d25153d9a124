"""The checker's payment invariants (part of ``model``; docs/payments.md, CONTRACT.md "Order
lifecycle"), judged from the events pushed, the entry ids they got (the stream's clock,
``Observed.entry_ms``) and every record version:

- every order's records are versions 1, 2, ... in stream order, without a gap or a copy,
  and `onestock fulfilments` prints the last one (``versions``);
- a pending order is decided ``reserved`` (its units held, received_at its entry's time, no
  first-N candidate) or rejected, then ends exactly as the stream clock says: ``accepted``
  by the first ``paid`` event that finds it reserved if that one was stored at or before
  its deadline (received_at and paid_at the payment's); ``expired`` (received_at its
  deadline, its units back) only once every entry up to its deadline was read, and surely
  when the deadline passed before the drain ended; ``cancelled`` by a cancel that finds it
  reserved or paid. When the expiry came among the events stored after the deadline is the
  one thing the events leave open: each place is a world (``_worlds``), and the records and
  the payments' dead letters must be those of one of them;
- every ``paid`` event ends as that world says: no outcome of its own (it paid the order,
  or the order was paid already), or a dead letter with the reason (a late one names the
  deadline); for orders that needed no payment, and ids no order has, the same rules
  without deadlines.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, NamedTuple

from onestock.domain.events import FUTURE_MS
from onestock.domain.records import iso_ms
from onestock.sim.model import ms, units

if TYPE_CHECKING:
    from onestock.sim.model import Checker, Ev

EARLIEST_MS = 946_684_800_000  # 2000-01-01: a paid_at or deadline before it is refused
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
SLACK_MS = 5  # Redis's clock and this process's, read a moment apart
REFUSED = re.compile(r"paid refused: (.*) - at `\$\.order_id`")
LATE = "it came after the payment deadline "
REASONS = {"no order of this id came before it": "no_order", "the order was cancelled":
           "cancelled", "the order expired unpaid": "expired",
           "the order was rejected": "rejected"}  # fmt: skip


class Pending(NamedTuple):
    first: Ev  # the order's first event: a pending order
    deadline: int | None  # epoch ms (None: not a valid time, or its entry's time unknown)


class World(NamedTuple):
    """What one place of the expiry makes of an order's events."""

    records: list[tuple[str, Ev | None]]  # status, the event that wrote it (paid, cancel)
    letters: Counter[tuple[str, str]]  # (raw, reason class) of its payments' dead letters
    merged: bool  # the decision and a cancel could share one batch (one record)


def valid_time(text: Any) -> int | None:
    """A deadline the product takes: RFC 3339 with an offset, from 2000 on."""
    if not isinstance(text, str) or not RFC3339.fullmatch(text):
        return None
    t = ms(text)
    return t if t is not None and t >= EARLIEST_MS else None


def paid_time(text: Any) -> int | None:
    """A payment's paid_at the product takes: a valid time, no more than FUTURE_MS after
    the payment was decided (before now; the histories' are hours inside or years out)."""
    t = valid_time(text)
    return t if t is not None and t <= time.time() * 1000 + FUTURE_MS else None


def _entry(c: Checker, e: Ev) -> int:
    em = c.ob.entry_ms
    return em[e.i] if e.i < len(em) else 0


def _raw(e: Ev) -> str:
    return e.raw.decode("utf-8", "replace")


def events_of(c: Checker) -> dict[str, list[Ev]]:
    """Order id -> its orders, cancels, returns and payments in push order (one shard's)."""
    out: dict[str, list[Ev]] = defaultdict(list)
    for e in c.evs:
        if e.kind in ("order", "cancel", "return", "paid") and e.oid is not None:
            out[e.oid].append(e)
    return out


def pending(c: Checker) -> dict[str, Pending]:
    """The orders whose first event is a pending order, and their deadlines (their own, or
    the catalog's ``payment_deadline_s`` after their entry's time)."""
    out: dict[str, Pending] = {}
    default_s = c.ob.catalogs[0].get("payment_deadline_s", 1800)
    for oid, e in c.first.items():
        pay = (e.obj or {}).get("payment")
        if not isinstance(pay, dict) or pay.get("status") != "pending":
            continue
        text = pay.get("deadline")
        if text is None:
            at = _entry(c, e)
            out[oid] = Pending(e, at + default_s * 1000 if at else None)
        else:
            out[oid] = Pending(e, valid_time(text))
    return out


def paid_by(c: Checker) -> dict[str, Ev]:
    """Pending order -> the payment that pays it: the first valid ``paid`` event after a
    reserved order, with no cancel before it, stored at or before the deadline (a later
    one is stored later still)."""
    out: dict[str, Ev] = {}
    evs = events_of(c)
    for oid, p in c.pending.items():
        recs = c.versions.get(oid)
        if p.deadline is None or not recs or recs[0]["status"] != "reserved":
            continue
        for e in evs[oid]:
            if e.i <= p.first.i or e.kind not in ("cancel", "paid"):
                continue
            if e.kind == "cancel":
                break
            if paid_time((e.obj or {}).get("paid_at")) is not None:
                if 0 < _entry(c, e) <= p.deadline:
                    out[oid] = e
                break
    return out


def check(c: Checker) -> None:
    versions(c)
    ranked_by(c)
    evs = events_of(c)
    for oid, p in c.pending.items():
        _pending(c, oid, p, evs[oid])
    for oid, mine in evs.items():
        if oid not in c.pending and any(e.kind == "paid" for e in mine):
            _payments(c, oid, mine)


def versions(c: Checker) -> None:
    """Versions 1..n per order in stream order; the printed record is the last. (A gap of
    one version just before a campaign order's cancellation, the record held for its gift
    that the cancel dropped without taking its version, is a class of its own.)"""
    gifted = _campaign_skus(c)
    for oid, recs in c.versions.items():
        got = [r.get("version") for r in recs]
        if got == list(range(1, len(recs) + 1)):
            pass
        elif _held_gap(recs, gifted):
            c.fail("version.held_gap", f"{oid!r}: versions {got} of "
                   f"{[r['status'] for r in recs]}: its accepted record, held for the gift, "
                   "never came")  # fmt: skip
        else:
            c.fail("version.sequence", f"{oid!r}: versions {got} of "
                   f"{[r['status'] for r in recs]}")  # fmt: skip
        fin = c.final.get(oid)
        if fin is not None and fin.get("version") != recs[-1].get("version"):
            c.fail("version.final", f"{oid!r}: `onestock fulfilments` prints version "
                   f"{fin.get('version')}, the last is {recs[-1].get('version')}")  # fmt: skip


def ranked_by(c: Checker) -> None:
    """A campaign order's rank was given by its paid_at; a pending one's by its payment's."""
    for oid, at in c.ob.rank_paid.items():
        e = c.paid_by.get(oid) or c.first.get(oid)
        want = ms((e.obj or {}).get("paid_at")) if e is not None else None
        if want is not None and at != want:
            what = "its payment's" if oid in c.paid_by else "its"
            c.fail("firstn.paid_at", f"{oid!r} ranked by paid_at {iso_ms(at)}, {what} is "
                   f"{iso_ms(want)}")  # fmt: skip


def _held_gap(recs: list[dict[str, Any]], gifted: set[str]) -> bool:
    """The versions are 1..n but for one missing just before a cancellation of an order
    with a campaign SKU."""
    last = recs[-1]
    skus = {ln["sku"] for s in last["shipments"] for ln in s["lines"]}
    if last["status"] != "cancelled" or not skus & gifted:
        return False
    got = [r.get("version") for r in recs]
    return got == [*range(1, len(recs)), len(recs) + 1]


def _letters(c: Checker, mine: list[Ev]) -> Counter[tuple[str, str]]:
    """(raw, reason class) of the dead letters of these payments."""
    raws = {_raw(e) for e in mine if e.kind == "paid"}
    out: Counter[tuple[str, str]] = Counter()
    for d in c.ob.deadletters:
        if d["raw"] in raws:
            out[(d["raw"], reason_class(d["reason"]))] += 1
    return out


def reason_class(reason: str) -> str:
    """A payment's dead letter reason as the model names it."""
    if reason.startswith("not a payment: "):
        return "invalid"
    hit = REFUSED.fullmatch(reason)
    why = hit[1] if hit else ""
    if why.startswith(LATE):
        return "late@" + why[len(LATE) :]
    return REASONS.get(why, "other: " + reason)


def play(
    c: Checker, mine: list[Ev], first: Ev | None, v1: str, deadline: int | None, at: int | None
) -> World:
    """The order's events played from its decision ``v1`` (reserved, accepted, rejected),
    the expiry before the ``at``-th event after the order (None: none)."""
    letters: Counter[tuple[str, str]] = Counter()
    after = [e for e in mine if first is not None and e.i > first.i]
    early = False
    for e in mine:
        if first is not None and e.i > first.i:
            break
        if e.kind == "cancel" and first is not None and e.i < first.i:
            early = True
        elif e.kind == "paid":  # (before its order came)
            ok = paid_time((e.obj or {}).get("paid_at")) is not None
            letters[(_raw(e), "no_order" if ok else "invalid")] += 1
    state = "cancelled" if early else v1
    records: list[tuple[str, Ev | None]] = [(state, None)]
    merged = split = False  # (a payment between the order and a cancel: two batches)
    steps: list[Ev | None] = [*after, None]
    for j, step in enumerate(steps):
        if j == at and state == "reserved":
            state = "expired"
            records.append((state, None))
        if step is None:
            break
        if step.kind == "cancel" and state in ("reserved", "accepted"):
            merged = state == "reserved" and len(records) == 1 and not split
            state = "cancelled"
            records.append((state, step))
        elif step.kind == "paid":
            split = split or paid_time((step.obj or {}).get("paid_at")) is not None
            state = _pay(c, step, state, deadline, records, letters)
    return World(records, letters, merged)


def _pay(
    c: Checker,
    e: Ev,
    state: str,
    deadline: int | None,
    records: list[tuple[str, Ev | None]],
    letters: Counter[tuple[str, str]],
) -> str:
    """A payment meets the order in ``state``: the state after it; its record or its dead
    letter (none: the order was paid already)."""
    if paid_time((e.obj or {}).get("paid_at")) is None:
        letters[(_raw(e), "invalid")] += 1
    elif state == "reserved" and deadline is not None and _entry(c, e) > deadline:
        letters[(_raw(e), f"late@{iso_ms(deadline)}")] += 1
    elif state == "reserved":
        records.append(("accepted", e))
        return "accepted"
    elif state != "accepted":
        letters[(_raw(e), state)] += 1
    return state


def _places(c: Checker, p: Pending, mine: list[Ev]) -> list[int | None]:
    """Where the expiry may come among the events after the order (index; None: not
    before the drain ended): after every event stored at or before the deadline; surely
    if the deadline passed before the drain's last look, never if it had not by its end."""
    d = p.deadline
    if d is None:
        return [None]
    after = [e for e in mine if e.i > p.first.i]
    lo, hi = c.ob.drained or (None, None)
    if hi is not None and d >= hi + SLACK_MS:
        return [None]
    known = all(_entry(c, e) for e in after)
    q = sum(1 for e in after if _entry(c, e) <= d) if known else 0
    out: list[int | None] = list(range(q, len(after) + 1))
    if lo is None or d >= lo - SLACK_MS:
        out.append(None)
    return out


def _shapes(w: World, campaign: bool) -> list[list[str]]:
    """The record statuses a world may show: as played; with the decision and a cancel
    in one batch, one cancelled record; a paid campaign order cancelled while its record
    waited for the gift, without that record (the cancellation replaces it)."""
    base = [s for s, _ in w.records]
    out = [base]
    if w.merged:
        out.append(base[1:])
    if campaign:
        for shape in list(out):
            gone = [s for k, s in enumerate(shape)
                    if not (s == "accepted" and shape[k + 1 : k + 2] == ["cancelled"])]  # fmt: skip
            if gone != shape:
                out.append(gone)
    return out


def _pending(c: Checker, oid: str, p: Pending, mine: list[Ev]) -> None:
    """A pending order's records and its payments' dead letters: those of one world."""
    recs = c.versions.get(oid, [])
    if not recs:
        return  # (a missing record is reported as such)
    v1 = recs[0]
    text = (p.first.obj or {})["payment"].get("deadline")
    if p.deadline is None and text is None:
        return  # (the catalog's, after an entry whose time is not known)
    if p.deadline is None and v1["status"] != "cancelled":  # (unless a cancel came first)
        if (v1["status"], v1.get("reason")) != ("rejected", "invalid"):
            c.fail("payment.deadline", f"{oid!r}: deadline {text!r} is no valid time, yet "
                   f"{v1['status']} {v1.get('reason') or ''}")  # fmt: skip
    start = "reserved" if v1["status"] == "cancelled" else v1["status"]
    if p.deadline is None:
        start = "rejected"
    if start not in ("reserved", "rejected"):
        c.fail("payment.reserved", f"{oid!r}: a pending order decided {v1['status']}")
        return
    got = [r["status"] for r in recs]
    letters = _letters(c, mine)
    gifted = _campaign_skus(c)
    campaign = any(ln["sku"] in gifted for s in v1["shipments"] for ln in s["lines"])
    worlds = [play(c, mine, p.first, start, p.deadline, at) for at in _places(c, p, mine)]
    for w in worlds:
        if got in _shapes(w, campaign) and letters == w.letters:
            _details(c, oid, p, recs, w)
            return
    shown = [([s for s, _ in w.records], dict(w.letters)) for w in worlds[:4]]
    c.fail("payment.outcome", f"{oid!r} (deadline {_shown(p.deadline)}, entries "
           f"{[(e.kind, _entry(c, e)) for e in mine]}): records {got}, letters "
           f"{dict(letters)}; the stream clock allows {shown}")  # fmt: skip


def _campaign_skus(c: Checker) -> set[str]:
    return {camp["sku"] for camp in c.ob.catalogs[-1].get("campaigns") or []}


def _shown(t: int | None) -> str:
    return "invalid" if t is None else f"{iso_ms(t)} = {t}"


def _details(c: Checker, oid: str, p: Pending, recs: list[dict[str, Any]], w: World) -> None:
    """The records of the world that matched: what each says."""
    v1 = recs[0]
    held = units(v1["shipments"])
    entry = _entry(c, p.first)
    if v1["status"] == "reserved" and entry and ms(v1["received_at"]) != entry:
        c.fail("payment.received", f"{oid!r} reserved with received_at {v1['received_at']}, "
               f"its entry's time is {iso_ms(entry)}")  # fmt: skip
    if v1["status"] == "reserved" and v1.get("gift"):
        c.fail("payment.gift", f"{oid!r}: reserved with a gift {v1['gift']}")
    events = {s: e for s, e in w.records if e is not None}
    for r in recs[1:]:
        status = r["status"]
        if units(r["shipments"]) != held:
            c.fail("payment.units", f"{oid!r} {status} (version {r.get('version')}) lists "
                   f"{r['shipments']}, it held {v1['shipments']}")  # fmt: skip
        if status == "expired" and ms(r["received_at"]) != p.deadline:
            c.fail("payment.expired", f"{oid!r} expired with received_at {r['received_at']}, "
                   f"its deadline is {_shown(p.deadline)}")  # fmt: skip
        pay = events.get("accepted")
        if status == "accepted" and pay is not None:
            want = (iso_ms(_entry(c, pay)), (pay.obj or {}).get("paid_at"))
            if (r["received_at"], r["paid_at"]) != want:
                c.fail("payment.accepted", f"{oid!r} paid: received_at, paid_at "
                       f"{(r['received_at'], r['paid_at'])}, its payment's {want}")  # fmt: skip


def _payments(c: Checker, oid: str, mine: list[Ev]) -> None:
    """The payments of an order that needed none, or of an id no order has."""
    first = c.first.get(oid)
    v1 = "accepted" if first is not None and c.accepted(oid) else "rejected"
    got = _letters(c, mine)
    if c.sold_out(oid):
        # A re-route rejected it (sold_out) while it was still accepted: no cancel came
        # before that (it would have cancelled the order and the rejection been refused).
        # A payment after it is refused "rejected"; a cancel after it changes nothing.
        got = Counter({k: n for k, n in got.items() if k[1] != "rejected"})
        mine = [e for e in mine if e.kind != "cancel" or first is None or e.i < first.i]
    w = play(c, mine, first, v1, None, None)
    if got != w.letters:
        c.fail("payment.letters", f"{oid!r} ({'no order' if first is None else v1}): dead "
               f"letters {dict(got)}, expected {dict(w.letters)}")  # fmt: skip
