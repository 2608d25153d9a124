"""Marketplace webhook bodies -> onestock's canonical events (``../shared/CONTRACT.md``).

Orders (Shopify ``orders/create``, WooCommerce ``order.created``), and the order lifecycle:
``paid`` (Shopify ``orders/paid``, WooCommerce ``order.updated`` to processing/completed),
``cancel`` (Shopify ``orders/cancelled``, WooCommerce ``order.updated`` to cancelled or
refunded) and ``return`` (Shopify ``refunds/create``, one per restock location).

Only the fields the mapping needs are decoded (msgspec, lax: real payloads send numbers as
strings, ``"latitude": "45.41634"``); everything else is ignored. What cannot be mapped is
not guessed: a line without a SKU keeps ``"sku": null`` and the dataflow rejects the order
as ``invalid`` naming the line (or a return as a dead letter naming it), so the event is
still stored and still gets its outcome. A body that is not what its topic says at all (no
id) is refused with 400 and the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import msgspec


class MappingError(Exception):
    """Why a body cannot become an order event (said in the 400 body)."""


# -- Shopify (orders/create) ----------------------------------------------------------------


class _ShopifyCustomer(msgspec.Struct):
    id: int | str | None = None
    email: str | None = None
    tags: str | None = None  # comma-separated


class _ShopifyAddress(msgspec.Struct):
    latitude: float | None = None
    longitude: float | None = None


class _ShopifyLine(msgspec.Struct):
    quantity: int
    sku: str | None = None


class _ShopifySchedule(msgspec.Struct):
    due_at: str | None = None
    completed_at: str | None = None


class _ShopifyTerms(msgspec.Struct):
    payment_schedules: list[_ShopifySchedule] = []


class _ShopifyOrder(msgspec.Struct):
    id: int | str
    line_items: list[_ShopifyLine]
    created_at: str | None = None
    processed_at: str | None = None
    email: str | None = None
    customer: _ShopifyCustomer | None = None
    shipping_address: _ShopifyAddress | None = None
    financial_status: str | None = None
    payment_terms: _ShopifyTerms | None = None


class _ShopifyOrderRef(msgspec.Struct):
    """What ``orders/paid`` and ``orders/cancelled`` need of their order body."""

    id: int | str
    updated_at: str | None = None
    processed_at: str | None = None
    created_at: str | None = None


_shopify = msgspec.json.Decoder(_ShopifyOrder, strict=False)
_shopify_ref = msgspec.json.Decoder(_ShopifyOrderRef, strict=False)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, what: str) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise MappingError(f"not a {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MappingError(f"not JSON: {exc}") from None


def _tags(raw: str | None) -> set[str]:
    return {t.strip().lower() for t in (raw or "").split(",") if t.strip()}


def shopify_order(body: bytes, channel: str, vip_tag: str) -> dict[str, Any]:
    """A Shopify ``orders/create`` body -> canonical event.

    order_id ``shopify-<id>``; customer id = Shopify customer id, else the e-mail, else
    ``guest-<order id>``; vip = the customer's tags hold ``vip_tag`` (case-insensitive);
    coordinates from the shipping address when it has them; lines by SKU and quantity;
    paid_at = ``processed_at``, else ``created_at`` (older orders have no processed_at).
    ``financial_status`` "pending" (no payment yet: bank deposit, cash on delivery, payment
    terms) adds ``"payment": {"status": "pending"}``, with the first open payment
    schedule's ``due_at`` as its deadline when the order has payment terms; every other
    status ("authorized" included: the payment is secured, only its capture waits) is paid.
    """
    o: _ShopifyOrder = _decode(_shopify, body, "Shopify order")
    cust = o.customer or _ShopifyCustomer()
    customer: dict[str, Any] = {
        "id": str(cust.id) if cust.id is not None else (cust.email or o.email or f"guest-{o.id}"),
        "vip": vip_tag.lower() in _tags(cust.tags),
    }
    addr = o.shipping_address
    if addr is not None and addr.latitude is not None and addr.longitude is not None:
        customer.update(lat=addr.latitude, lon=addr.longitude)
    event = {
        "order_id": f"shopify-{o.id}",
        "channel": channel,
        "customer": customer,
        "lines": [{"sku": ln.sku or None, "qty": ln.quantity} for ln in o.line_items],
        "delivery": {"mode": "ship"},
        "paid_at": o.processed_at or o.created_at,
    }
    if o.financial_status == "pending":
        event["payment"] = _pending(_deadline(o.payment_terms))
    return event


def _pending(deadline: str | None) -> dict[str, str]:
    return {"status": "pending", **({"deadline": deadline} if deadline else {})}


def _deadline(terms: _ShopifyTerms | None) -> str | None:
    """The earliest ``due_at`` of the payment schedules not completed yet (as sent), or None
    (no terms, or terms due on fulfilment or receipt: no date to hold the units to)."""
    due: list[tuple[datetime, str]] = []
    for sched in terms.payment_schedules if terms else []:
        if sched.completed_at or not sched.due_at:
            continue
        try:
            at = datetime.fromisoformat(sched.due_at)
        except ValueError:
            continue
        if at.tzinfo is not None:
            due.append((at, sched.due_at))
    return min(due)[1] if due else None


def shopify_paid(body: bytes) -> dict[str, Any]:
    """A Shopify ``orders/paid`` body -> ``{"type": "paid", "order_id", "paid_at"}``.

    paid_at = ``updated_at``: the body is the order as it was when it became paid (a retry
    carries the same body), and ``processed_at`` is when the order was placed, before a
    pending payment came; else ``processed_at``, else ``created_at``.
    """
    o: _ShopifyOrderRef = _decode(_shopify_ref, body, "Shopify order")
    paid_at = o.updated_at or o.processed_at or o.created_at
    return {"type": "paid", "order_id": f"shopify-{o.id}", "paid_at": paid_at}


def shopify_cancelled(body: bytes) -> dict[str, Any]:
    """A Shopify ``orders/cancelled`` body -> ``{"type": "cancel", "order_id"}``. The units
    still out go back to where they came from, whatever the merchant chose to restock in
    Shopify (its refund, if any, comes as ``refunds/create``: at most once over both)."""
    o: _ShopifyOrderRef = _decode(_shopify_ref, body, "Shopify order")
    return {"type": "cancel", "order_id": f"shopify-{o.id}"}


# -- Shopify (refunds/create, REST Admin API refund resource) -------------------------------

RESTOCKS = ("return", "cancel", "legacy_restock")  # restock types that bring units back


class _ShopifyRefundItem(msgspec.Struct):
    sku: str | None = None


class _ShopifyRefundLine(msgspec.Struct):
    quantity: int
    restock_type: Literal["no_restock", "cancel", "return", "legacy_restock"]
    location_id: int | str | None = None
    line_item: _ShopifyRefundItem | None = None


class _ShopifyRefund(msgspec.Struct):
    id: int | str
    order_id: int | str
    refund_line_items: list[_ShopifyRefundLine] = []


_shopify_refund = msgspec.json.Decoder(_ShopifyRefund, strict=False)


def shopify_refund(body: bytes, locations: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """A Shopify ``refunds/create`` body -> (order id, its return events): one return per
    restock location, of the lines whose ``restock_type`` brings units back ("return",
    "cancel", "legacy_restock"; "no_restock" lines restock nothing). No return at all (a
    refund of money only) is an empty list.

    location = ``locations[str(location_id)]`` (``ONESTOCK_SHOPIFY_LOCATIONS``), else the
    Shopify location id as a string; a restocking line without a ``location_id`` keeps
    ``"location": null`` (not guessed: the dataflow makes that return a dead letter naming
    ``$.location``). Each return carries ``return_id`` ``shopify-refund-<refund id>``.
    """
    r: _ShopifyRefund = _decode(_shopify_refund, body, "Shopify refund")
    order_id = f"shopify-{r.order_id}"
    by_location: dict[str | None, list[dict[str, Any]]] = {}
    for ln in r.refund_line_items:
        if ln.restock_type not in RESTOCKS or ln.quantity <= 0:
            continue
        where = None if ln.location_id is None else str(ln.location_id)
        location = None if where is None else locations.get(where, where)
        sku = (ln.line_item.sku if ln.line_item else None) or None
        by_location.setdefault(location, []).append({"sku": sku, "qty": ln.quantity})
    return order_id, [
        {"type": "return", "order_id": order_id, "return_id": f"shopify-refund-{r.id}",
         "lines": lines, "location": location}
        for location, lines in by_location.items()
    ]  # fmt: skip


# -- WooCommerce (order.created, REST API v3 order object) ----------------------------------


class _WooBilling(msgspec.Struct):
    email: str | None = None


class _WooLine(msgspec.Struct):
    quantity: int
    sku: str | None = None


class _WooOrder(msgspec.Struct):
    id: int | str
    line_items: list[_WooLine]
    customer_id: int | str | None = None
    billing: _WooBilling | None = None
    status: str | None = None
    date_paid_gmt: str | None = None
    date_created_gmt: str | None = None


class _WooOrderRef(msgspec.Struct):
    """What ``order.updated`` needs of its order body."""

    id: int | str
    status: str | None = None
    date_paid_gmt: str | None = None
    date_modified_gmt: str | None = None
    date_created_gmt: str | None = None


_woo = msgspec.json.Decoder(_WooOrder, strict=False)
_woo_ref = msgspec.json.Decoder(_WooOrderRef, strict=False)
WOO_UNPAID = ("pending", "on-hold")  # created, awaiting payment (on-hold: BACS, cheque)
WOO_PAID = ("processing", "completed")
# cancelled: the order is off; refunded: WooCommerce's status once the whole order is
# refunded (a partial refund keeps the status), so the sale is void: both give the units back
WOO_CANCELLED = ("cancelled", "refunded")


def _gmt(value: str | None) -> str | None:
    """WooCommerce's ``*_gmt`` times carry no offset: they are UTC."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    except ValueError:
        return value  # passed on as it is: the dataflow names the bad paid_at


def woo_order(body: bytes, channel: str) -> dict[str, Any]:
    """A WooCommerce ``order.created`` body -> canonical event.

    order_id ``woocommerce-<id>``; customer id = ``customer_id`` (0 is a guest: the billing
    e-mail, else ``guest-<order id>``); vip false (an order body carries no customer tags);
    no coordinates (WooCommerce addresses have none); lines by SKU and quantity; paid_at =
    ``date_paid_gmt``, else ``date_created_gmt`` (both UTC without an offset). Status
    "pending" or "on-hold" (awaiting payment) adds ``"payment": {"status": "pending"}``
    (WooCommerce sends no payment deadline).
    """
    o: _WooOrder = _decode(_woo, body, "WooCommerce order")
    cid = o.customer_id
    email = o.billing.email if o.billing else None
    customer_id = str(cid) if cid not in (None, 0, "0", "") else (email or f"guest-{o.id}")
    event = {
        "order_id": f"woocommerce-{o.id}",
        "channel": channel,
        "customer": {"id": customer_id, "vip": False},
        "lines": [{"sku": ln.sku or None, "qty": ln.quantity} for ln in o.line_items],
        "delivery": {"mode": "ship"},
        "paid_at": _gmt(o.date_paid_gmt) or _gmt(o.date_created_gmt),
    }
    if o.status in WOO_UNPAID:
        event["payment"] = _pending(None)
    return event


def woo_updated(body: bytes) -> tuple[str, dict[str, Any] | None, str]:
    """A WooCommerce ``order.updated`` body -> (order id, its event or None, its status).

    processing/completed: ``{"type": "paid", "order_id", "paid_at"}`` (paid_at =
    ``date_paid_gmt``, else ``date_modified_gmt``, else ``date_created_gmt``); cancelled or
    refunded (the whole order): ``{"type": "cancel", "order_id"}``; any other status
    (pending, on-hold, failed, a draft, ...) changes no stock: None. WooCommerce sends
    ``order.updated`` on every change of an order (a note, a meta field), so the same
    ``paid`` or ``cancel`` may come many times: both take effect once per order.
    """
    o: _WooOrderRef = _decode(_woo_ref, body, "WooCommerce order")
    order_id = f"woocommerce-{o.id}"
    status = o.status or ""
    if status in WOO_PAID:
        paid_at = _gmt(o.date_paid_gmt) or _gmt(o.date_modified_gmt) or _gmt(o.date_created_gmt)
        return order_id, {"type": "paid", "order_id": order_id, "paid_at": paid_at}, status
    if status in WOO_CANCELLED:
        return order_id, {"type": "cancel", "order_id": order_id}, status
    return order_id, None, status


# -- per topic ------------------------------------------------------------------------------


class Mapped(NamedTuple):
    """What one webhook delivery maps to: its events (all of one order, so of one shard:
    stored together or not at all), or none, with the status that says why (answered 200
    and counted as the request's outcome)."""

    order_id: str
    events: list[dict[str, Any]]
    outcome: str = ""  # when no event: "nothing_to_restock" or "ignored"
    reason: str = ""


SHOPIFY_TOPICS = ("orders/create", "orders/paid", "orders/cancelled", "refunds/create")
WOO_TOPICS = ("order.created", "order.updated")


def shopify(
    topic: str, body: bytes, channel: str, vip_tag: str, locations: dict[str, str]
) -> Mapped:
    """A Shopify delivery of ``topic`` -> its canonical events (MappingError: not one)."""
    if topic == "refunds/create":
        order_id, returns = shopify_refund(body, locations)
        if not returns:
            why = "no line of the refund restocks (no_restock, or a refund of money only)"
            return Mapped(order_id, [], "nothing_to_restock", why)
        return Mapped(order_id, returns)
    if topic == "orders/create":
        event = shopify_order(body, channel, vip_tag)
    elif topic == "orders/paid":
        event = shopify_paid(body)
    elif topic == "orders/cancelled":
        event = shopify_cancelled(body)
    else:
        raise MappingError(f"unsupported topic {topic!r} (taken: {', '.join(SHOPIFY_TOPICS)})")
    return Mapped(event["order_id"], [event])


def woocommerce(topic: str, body: bytes, channel: str) -> Mapped:
    """A WooCommerce delivery of ``topic`` -> its canonical event (MappingError: not one)."""
    if topic == "order.created":
        event = woo_order(body, channel)
        return Mapped(event["order_id"], [event])
    if topic == "order.updated":
        order_id, update, status = woo_updated(body)
        if update is None:
            return Mapped(order_id, [], "ignored", f"status {status!r} changes no stock")
        return Mapped(order_id, [update])
    raise MappingError(f"unsupported topic {topic!r} (taken: {', '.join(WOO_TOPICS)})")
