"""Decode one raw event into exactly one of: a valid order, an invalid order, a dead letter.

The contract: anything with a usable string ``order_id`` ends as a fulfilment record (valid
orders are decided, invalid ones rejected with reason ``invalid`` and a human ``detail``);
everything else becomes a dead letter carrying the raw text and the reason.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
import orjson
from msgspec import Meta

from onestock.domain.types import Line, NonEmpty, Order, order_decoder

MAX_TEXT = 256  # the longest id or name any event may carry (order, customer, SKU, ...)
MAX_ORDER_ID = MAX_TEXT


def text_problem(value: str) -> str | None:
    """Why ``value`` may not be an id or a name that reaches Redis, or None when it may.

    The one validation point for every text of an event (order id, customer id, channel,
    SKU, location): 1 to 256 characters, every one printable. "Printable" (``str.isprintable``)
    excludes control characters (the stored records' separators among them), lone surrogates
    (not encodable as UTF-8), line and paragraph separators and unassigned code points, so a
    text that passes is always encodable and never contains a separator."""
    if not 0 < len(value) <= MAX_TEXT:
        return f"must be 1 to {MAX_TEXT} characters"
    if not value.isprintable():
        return (
            "contains unprintable characters (control characters, unpaired surrogates, "
            "line separators)"
        )
    return None


def rfc3339_ms(text: str) -> int | None:
    """An RFC 3339 time with an offset, in epoch ms; None for anything else."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if at.tzinfo is None else int(at.timestamp() * 1000)


def _env_time_ms(name: str, default: str) -> int:
    text = os.environ.get(name) or default
    ms = rfc3339_ms(text)
    if ms is None:
        from onestock.domain.errors import OnestockError

        raise OnestockError(f"{name}={text!r} is not an RFC 3339 time with an offset")
    return ms


# The sane window of an event's paid_at: from EARLIEST_MS to FUTURE_MS after the moment it
# is decided. Outside it the order is rejected `invalid`: a pre-1970 or "unset" zero time,
# or a typo years ahead, never reaches the decisions or a first-N watermark.
EARLIEST_MS = _env_time_ms("ONESTOCK_EARLIEST_PAID_AT", "2000-01-01T00:00:00Z")
FUTURE_MS = int(os.environ.get("ONESTOCK_MAX_FUTURE_S") or 86400) * 1000


def _window_ms() -> int:
    """The idempotency window: how long, by the stream clock, every order, cancel, return,
    payment and movement stays remembered after it came (ONESTOCK_IDEMPOTENCY_DAYS, default
    7: longer than the senders' retries, Shopify's 4 hours, Stripe's 3 days)."""
    raw = os.environ.get("ONESTOCK_IDEMPOTENCY_DAYS") or "7"
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    ms = round(days * 86_400_000)
    if ms < 2 * FUTURE_MS or ms < 2000:
        from onestock.domain.errors import OnestockError

        raise OnestockError(
            f"ONESTOCK_IDEMPOTENCY_DAYS={raw!r}: the window must be a number of days, at least "
            f"twice ONESTOCK_MAX_FUTURE_S ({FUTURE_MS // 1000} s) and two seconds"
        )
    return ms


WINDOW_MS = _window_ms()
# An order paid longer than this before it came is a dead letter, never decided: a copy of
# an order decided more than WINDOW_MS ago (whose idempotency state is gone) cannot be sold
# twice, since its paid_at is at most FUTURE_MS after the moment its first copy came.
STALE_MS = WINDOW_MS - FUTURE_MS


class Valid(msgspec.Struct, gc=False):
    order: Order
    paid_ms: int = 0  # paid_at in epoch milliseconds (parsed once, here)
    # a pending payment's deadline in epoch ms; DEFAULT_DEADLINE: the catalog's; 0: paid
    deadline_ms: int = 0


DEFAULT_DEADLINE = -1  # Valid.deadline_ms of a pending order that names no deadline


class Invalid(msgspec.Struct, gc=False):
    order_id: str
    channel: str | None
    paid_at: str | None
    detail: str


class Dead(msgspec.Struct, gc=False):
    raw: str
    reason: str


class Cancel(msgspec.Struct, gc=False):
    """``{"type": "cancel", "order_id": ...}``: cancel that order (before or after it came)."""

    order_id: str


class Return(msgspec.Struct, gc=False):
    """``{"type": "return", "order_id", "lines": [{"sku", "qty"}], "location"}``: units of
    an accepted order come back, to ``location`` (a return to store)."""

    order_id: str
    lines: Annotated[list[Line], Meta(min_length=1, max_length=1000)]
    location: NonEmpty
    type: Literal["return"] = "return"
    # the marketplace's id of the refund or return, when it has one: two returns of the same
    # lines to one location are then two returns, not a copy (``aftersale._digest``)
    return_id: NonEmpty | None = None


_return_decoder = msgspec.json.Decoder(Return)


class Paid(msgspec.Struct, gc=False):
    """``{"type": "paid", "order_id", "paid_at"}``: a reserved order is paid (it becomes
    accepted, and a first-N campaign ranks it by this ``paid_at``)."""

    order_id: str
    paid_at: str
    paid_ms: int = 0  # paid_at in epoch ms (set by ``decode``)
    type: Literal["paid"] = "paid"


_paid_decoder = msgspec.json.Decoder(Paid)

FULFILMENT_STATUSES = ("claimed", "shipped", "picked_up", "rejected")


class Fulfilment(msgspec.Struct, gc=False):
    """``{"type": "fulfilment", "order_id", "location", "status", "reason"}``: the location
    shipped (or handed over) its shipment of the order, or cannot serve it (``rejected``:
    the order is re-routed, dataflows/fulfilment.py)."""

    order_id: str
    location: NonEmpty
    status: Literal["claimed", "shipped", "picked_up", "rejected"]
    reason: NonEmpty | None = None
    type: Literal["fulfilment"] = "fulfilment"


_fulfilment_decoder = msgspec.json.Decoder(Fulfilment)

MOVEMENT_KINDS = ("receipt", "sale", "adjustment", "transfer", "count")
MAX_MOVED = 10**9  # the most units one line of a movement may move


class MovementLine(msgspec.Struct, gc=False):
    sku: str
    qty: int


class Movement(msgspec.Struct, gc=False):
    """``{"type": "movement", "movement_id", "kind", "location", "lines": [{"sku", "qty"}],
    "at"[, "to"][, "reason"]}``: stock that moved outside onestock's decisions (CONTRACT.md,
    "Stock movements"; docs/movements.md)."""

    movement_id: str
    kind: Literal["receipt", "sale", "adjustment", "transfer", "count"]
    location: str
    lines: Annotated[list[MovementLine], Meta(min_length=1, max_length=1000)]
    at: str | None = None
    to: str | None = None
    reason: str | None = None
    type: Literal["movement"] = "movement"


class BadMovement(msgspec.Struct, gc=False):
    """A movement with a usable movement id that cannot be applied as written: it ends as a
    refused movement record saying why."""

    movement_id: str
    kind: str | None
    location: str | None
    detail: str


_movement_decoder = msgspec.json.Decoder(Movement)

Decoded = Valid | Invalid | Dead | Cancel | Return | Paid | Fulfilment | Movement | BadMovement


def text_of(raw: bytes | str) -> str:
    """The raw event as text for a dead letter (never fails: bad UTF-8 is replaced)."""
    return raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")


def decode(raw: bytes | str, now_ms: int | None = None) -> Decoded:
    """Classify one raw event, decided at ``now_ms`` (epoch ms; default: the wall clock);
    never raises."""
    try:
        order = order_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return _classify_bad(raw, str(exc), now_ms)
    except msgspec.DecodeError as exc:  # (an unpaired surrogate: the stdlib may still read it)
        return _classify_bad(raw, f"not JSON msgspec can read: {exc}", now_ms)
    oid = order.order_id
    if not oid.isprintable():
        return Dead(text_of(raw), f"order_id {text_problem(oid)}")
    bad = _bad_text(order)
    if bad is not None:
        return Invalid(oid, _shown(order.channel), _shown(order.paid_at), bad)
    paid_ms = paid_at_ms(order.paid_at)
    if paid_ms is None:
        return Invalid(
            oid,
            order.channel,
            order.paid_at,
            f"paid_at: {order.paid_at!r} is not an RFC 3339 time with an offset - at `$.paid_at`",
        )
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    if not EARLIEST_MS <= paid_ms <= now_ms + FUTURE_MS:
        return Invalid(oid, order.channel, order.paid_at, _window(order.paid_at))
    if order.delivery.mode == "pickup" and order.delivery.store is None:
        return Invalid(
            order.order_id,
            order.channel,
            order.paid_at,
            "delivery: pickup needs a `store` - at `$.delivery.store`",
        )
    if (order.customer.lat is None) != (order.customer.lon is None):
        return Invalid(
            order.order_id,
            order.channel,
            order.paid_at,
            "customer: give both lat and lon, or neither - at `$.customer`",
        )
    if len(order.lines) > 1:
        order.lines = merge_lines(order.lines)
    if order.payment is not None and order.payment.status == "pending":
        return _pending(order, paid_ms)
    return Valid(order, paid_ms)


def _pending(order: Order, paid_ms: int) -> Valid | Invalid:
    """A pending order: its deadline checked (an RFC 3339 time with an offset)."""
    text = order.payment.deadline  # type: ignore[union-attr]
    if text is None:
        return Valid(order, paid_ms, DEFAULT_DEADLINE)
    ms = rfc3339_ms(text) if text.isprintable() else None
    if ms is None or ms < EARLIEST_MS:
        return Invalid(
            order.order_id,
            order.channel,
            order.paid_at,
            f"payment.deadline: {_shown(text)!r} is not an RFC 3339 time with an offset - at "
            "`$.payment.deadline`",
        )
    return Valid(order, paid_ms, ms)


def _bad_text(order: Order) -> str | None:
    """The first text field of a decoded order that may not reach Redis, as a detail."""
    store = order.delivery.store
    lines = order.lines
    if store is None and len(lines) == 1:  # (the usual order: one test of one text)
        if (order.channel + order.customer.id + lines[0].sku).isprintable():
            return None
    elif (
        order.channel.isprintable()
        and order.customer.id.isprintable()
        and all(ln.sku.isprintable() for ln in order.lines)
        and (store is None or store.isprintable())
    ):
        return None  # (the usual order: no detail to build)
    checks = [("channel", order.channel), ("customer.id", order.customer.id)]
    checks += [(f"lines[{i}].sku", ln.sku) for i, ln in enumerate(order.lines)]
    if order.delivery.store is not None:
        checks.append(("delivery.store", order.delivery.store))
    for path, value in checks:
        if not value.isprintable():
            return f"{path}: {text_problem(value)} - at `$.{path}`"
    return None


def _shown(text: str) -> str:
    """A text for a record of an invalid order: printable, so it cannot break the record."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _window(paid_at: str) -> str:
    return (
        f"paid_at: {paid_at!r} is outside the accepted window (from "
        f"{iso(EARLIEST_MS)} to {FUTURE_MS // 1000} s from now) - at "
        "`$.paid_at`"
    )


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


# paid_at text -> epoch ms (None: not an RFC 3339 time with an offset). At a peak thousands
# of orders a second share one paid_at text (webhooks often give whole seconds): parsed once.
# With milliseconds the texts differ (most of a burst's do): the whole second is parsed once
# (its text without the fraction is the key) and the milliseconds added.
_paid_ms: dict[str, int | None] = {}
_UNSEEN = -(2**63)  # below any datetime's epoch ms
PAID_CACHE = 4096
# Whole seconds whose milliseconds add exactly: from 2004-11-04 (2**40 ms) to 2038-01-19
# (2**31 s), ``rfc3339_ms``'s float product is the exact floor of every time with up to 6
# fraction digits (its rounding errors stay below half a unit there), so the sum equals it.
_EXACT_MS = range(2**40, 2**31 * 1000)
_MILLIS = {f"{ms:03d}": ms for ms in range(1000)}  # a fraction of 3 ASCII digits -> its ms


# The usual paid_at of all, in UTC with milliseconds: its whole second's text (the first 19
# characters) -> the second's epoch ms where the milliseconds add exactly, else None.
_utc_s: dict[str, int | None] = {}


def paid_at_ms(text: str) -> int | None:
    """``rfc3339_ms(text)``, the same for every text, parsed once per whole second for the
    usual shape (``YYYY-MM-DDTHH:MM:SS.mmm`` and an offset; ``Z`` the quickest)."""
    if len(text) == 24 and text[23] == "Z" and text[19] == "." and text[16] == ":":
        frac = _MILLIS.get(text[20:23])
        if frac is not None:
            base = _utc_s.get(text[:19], _UNSEEN)
            if base == _UNSEEN:
                base = _utc_second(text[:19])
            if base is not None:
                return base + frac
    if len(text) > 23 and text[19] == "." and text[23] in "+-Z" and text[16] == ":":
        frac = _MILLIS.get(text[20:23])
        if frac is not None:
            key = text[:19] + text[23:]
            base = _paid_ms.get(key, _UNSEEN)
            if base == _UNSEEN:
                base = _parse_paid(key)
            if base is not None and base in _EXACT_MS:
                return base + frac
    ms = _paid_ms.get(text, _UNSEEN)
    return _parse_paid(text) if ms == _UNSEEN else ms


def _utc_second(second: str) -> int | None:
    ms = rfc3339_ms(second + "Z")
    if len(_utc_s) >= PAID_CACHE:
        _utc_s.clear()
    _utc_s[second] = exact = ms if ms is not None and ms in _EXACT_MS else None
    return exact


def _parse_paid(text: str) -> int | None:
    ms = rfc3339_ms(text)
    if len(_paid_ms) >= PAID_CACHE:
        _paid_ms.clear()
    _paid_ms[text] = ms
    return ms


def merge_lines(lines: list[Line]) -> list[Line]:
    """Two lines of one SKU reserve as one (sum of quantities), keeping first-seen order."""
    if len(lines) == 1:
        return lines
    merged: dict[str, int] = {}
    for line in lines:
        merged[line.sku] = merged.get(line.sku, 0) + line.qty
    if len(merged) == len(lines):
        return lines
    return [Line(sku, qty) for sku, qty in merged.items()]


def order_id_of(raw: bytes | str) -> str | None:
    """The usable order_id of a raw event, if it has one; for a movement, its usable
    movement_id (used to pick its shard: every copy of an event on one shard)."""
    try:
        obj = _loads_any(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        oid = obj.get("movement_id" if obj.get("type") == "movement" else "order_id")
        if isinstance(oid, str) and text_problem(oid) is None:
            return oid
    return None


def _loads_any(raw: bytes | str) -> object:
    """orjson, falling back to the stdlib for what orjson refuses (integers over 64 bits)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_constant=_no_constant)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _classify_bad(raw: bytes | str, error: str, now_ms: int | None) -> Decoded:
    try:
        obj = _loads_any(raw)
    except (ValueError, RecursionError) as exc:
        return Dead(text_of(raw), f"not JSON: {exc}")
    if not isinstance(obj, dict):
        return Dead(text_of(raw), f"not an object: a JSON {type(obj).__name__}")
    if obj.get("type") == "movement":
        return movement(raw, obj)
    oid = obj.get("order_id")
    if oid is None:
        return Dead(text_of(raw), "no order_id")
    if not isinstance(oid, str):
        return Dead(text_of(raw), f"order_id is not a string: {type(oid).__name__}")
    problem = text_problem(oid)
    if problem is not None:
        return Dead(text_of(raw), f"order_id {problem}")
    kind = obj.get("type")
    if kind == "cancel":
        return Cancel(oid)
    typed = _TYPED.get(kind) if isinstance(kind, str) else None
    if typed is not None:
        return typed(raw, int(time.time() * 1000) if now_ms is None else now_ms)
    if kind not in (None, "order"):
        return Dead(text_of(raw), f"unsupported event type {kind!r}")
    channel = obj.get("channel")
    paid_at = obj.get("paid_at")
    return Invalid(
        oid,
        _shown(channel) if isinstance(channel, str) else None,
        _shown(paid_at) if isinstance(paid_at, str) else None,
        _shown(error),  # (msgspec's message may quote the bad value)
    )


def _return(raw: bytes | str, _now_ms: int) -> Return | Dead:
    """A return event checked whole; one that cannot be read is a dead letter naming the
    field."""
    try:
        ret = _return_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Dead(text_of(raw), f"not a return: {exc}")
    texts = [("location", ret.location)]
    texts += [(f"lines[{i}].sku", ln.sku) for i, ln in enumerate(ret.lines)]
    if ret.return_id is not None:
        texts.append(("return_id", ret.return_id))
    for path, value in texts:
        problem = text_problem(value)
        if problem is not None:
            return Dead(text_of(raw), f"not a return: {path}: {problem} - at `$.{path}`")
    ret.lines = merge_lines(ret.lines)
    return ret


def _paid(raw: bytes | str, now_ms: int) -> Paid | Dead:
    """A payment event checked whole, decided at ``now_ms``; one that cannot be read, or
    paid outside the window an order's paid_at must be in, is a dead letter naming the
    field (it changes nothing: the order's deadline still stands)."""
    try:
        p = _paid_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Dead(text_of(raw), f"not a payment: {exc}")
    ms = rfc3339_ms(p.paid_at) if p.paid_at.isprintable() else None
    if ms is None or ms < EARLIEST_MS:
        return Dead(
            text_of(raw),
            f"not a payment: paid_at: {_shown(p.paid_at)!r} is not an RFC 3339 time with an "
            "offset from 2000 on - at `$.paid_at`",
        )
    if ms > now_ms + FUTURE_MS:
        return Dead(text_of(raw), f"not a payment: {_window(p.paid_at)}")
    p.paid_ms = ms
    return p


def _fulfilment(raw: bytes | str, _now_ms: int) -> Fulfilment | Dead:
    """A fulfilment event checked whole; one that cannot be read is a dead letter naming
    the field (it changes nothing)."""
    try:
        f = _fulfilment_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Dead(text_of(raw), f"not a fulfilment: {exc}")
    texts = [("location", f.location)] + ([("reason", f.reason)] if f.reason else [])
    for path, value in texts:
        problem = text_problem(value)
        if problem is not None:
            return Dead(text_of(raw), f"not a fulfilment: {path}: {problem} - at `$.{path}`")
    return f


# the events of a type other than an order or a cancel, read by type (each says what is wrong)
_TYPED: dict[str, Callable[[bytes | str, int], Decoded]] = {
    "return": _return,
    "paid": _paid,
    "fulfilment": _fulfilment,
}


def movement(raw: bytes | str, obj: dict[str, object]) -> Movement | BadMovement | Dead:
    """A movement event checked whole: a ``Movement`` to apply, a ``BadMovement`` (refused,
    with a detail naming the field) or, without a usable movement_id, a dead letter."""
    mid = obj.get("movement_id")
    if not isinstance(mid, str) or text_problem(mid) is not None:
        why = "missing" if mid is None else text_problem(mid) if isinstance(mid, str) else None
        return Dead(text_of(raw), f"movement_id {why or 'is not a string'}")
    kind, location = obj.get("kind"), obj.get("location")

    def bad(detail: str) -> BadMovement:
        return BadMovement(
            mid,
            _shown(kind) if isinstance(kind, str) else None,
            _shown(location) if isinstance(location, str) else None,
            _shown(detail),
        )

    try:
        m = _movement_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return bad(str(exc))
    problem = _movement_problem(m)
    return bad(problem) if problem is not None else m


def _movement_problem(m: Movement) -> str | None:
    """Why a decoded movement cannot be applied as written (the detail of its refusal)."""
    texts = [("location", m.location)]
    texts += [(f"lines[{i}].sku", ln.sku) for i, ln in enumerate(m.lines)]
    texts += [(name, v) for name, v in (("to", m.to), ("reason", m.reason)) if v is not None]
    for path, value in texts:
        problem = text_problem(value)
        if problem is not None:
            return f"{path}: {problem} - at `$.{path}`"
    if m.at is not None and rfc3339_ms(m.at) is None:
        return f"at: {m.at!r} is not an RFC 3339 time with an offset - at `$.at`"
    if m.kind == "transfer" and m.to is None:
        return "a transfer needs `to` (the location the units go to) - at `$.to`"
    if m.kind != "transfer" and m.to is not None:
        return f"only a transfer has `to`, not a {m.kind} - at `$.to`"
    if m.to == m.location:
        return "a transfer needs `to` other than `location` - at `$.to`"
    least = {"adjustment": -MAX_MOVED, "count": 0}.get(m.kind, 1)
    seen: set[str] = set()
    for i, ln in enumerate(m.lines):
        if not least <= ln.qty <= MAX_MOVED or (m.kind == "adjustment" and ln.qty == 0):
            return f"lines[{i}].qty: {ln.qty} is not {_QTY_RULE[m.kind]} - at `$.lines[{i}].qty`"
        if m.kind == "count" and ln.sku in seen:
            return f"lines[{i}].sku: {ln.sku!r} is counted twice - at `$.lines[{i}].sku`"
        seen.add(ln.sku)
    return None


_QTY_RULE = {
    "receipt": f"a whole number of units from 1 to {MAX_MOVED}",
    "sale": f"a whole number of units from 1 to {MAX_MOVED}",
    "transfer": f"a whole number of units from 1 to {MAX_MOVED}",
    "adjustment": f"a whole number of units other than 0, from -{MAX_MOVED} to {MAX_MOVED}",
    "count": f"a whole number of units from 0 to {MAX_MOVED}",
}
