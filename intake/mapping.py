"""Marketplace webhook bodies -> onestock's canonical order event (``../shared/CONTRACT.md``).

Only the fields the mapping needs are decoded (msgspec, lax: real payloads send numbers as
strings, ``"latitude": "45.41634"``); everything else is ignored. What cannot be mapped is
not guessed: a line without a SKU keeps ``"sku": null`` and the dataflow rejects the order
as ``invalid`` naming the line, so the event is still stored and still gets its record.
A body that is not an order at all (no id) is refused with 400 and the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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


class _ShopifyOrder(msgspec.Struct):
    id: int | str
    line_items: list[_ShopifyLine]
    created_at: str | None = None
    processed_at: str | None = None
    email: str | None = None
    customer: _ShopifyCustomer | None = None
    shipping_address: _ShopifyAddress | None = None


_shopify = msgspec.json.Decoder(_ShopifyOrder, strict=False)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, what: str) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise MappingError(f"not a {what} order: {exc}") from None
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
    """
    o: _ShopifyOrder = _decode(_shopify, body, "Shopify")
    cust = o.customer or _ShopifyCustomer()
    customer: dict[str, Any] = {
        "id": str(cust.id) if cust.id is not None else (cust.email or o.email or f"guest-{o.id}"),
        "vip": vip_tag.lower() in _tags(cust.tags),
    }
    addr = o.shipping_address
    if addr is not None and addr.latitude is not None and addr.longitude is not None:
        customer.update(lat=addr.latitude, lon=addr.longitude)
    return {
        "order_id": f"shopify-{o.id}",
        "channel": channel,
        "customer": customer,
        "lines": [{"sku": ln.sku or None, "qty": ln.quantity} for ln in o.line_items],
        "delivery": {"mode": "ship"},
        "paid_at": o.processed_at or o.created_at,
    }


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
    date_paid_gmt: str | None = None
    date_created_gmt: str | None = None


_woo = msgspec.json.Decoder(_WooOrder, strict=False)


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
    ``date_paid_gmt``, else ``date_created_gmt`` (both UTC without an offset).
    """
    o: _WooOrder = _decode(_woo, body, "WooCommerce")
    cid = o.customer_id
    email = o.billing.email if o.billing else None
    customer_id = str(cid) if cid not in (None, 0, "0", "") else (email or f"guest-{o.id}")
    return {
        "order_id": f"woocommerce-{o.id}",
        "channel": channel,
        "customer": {"id": customer_id, "vip": False},
        "lines": [{"sku": ln.sku or None, "qty": ln.quantity} for ln in o.line_items],
        "delivery": {"mode": "ship"},
        "paid_at": _gmt(o.date_paid_gmt) or _gmt(o.date_created_gmt),
    }
