"""The shared vocabulary: catalog, order events, fulfilment records, dead letters.

Everything here is a msgspec Struct so that decoding *is* validation: a bad field fails with
a message that names its JSON path (``$.lines[0].qty``). Nothing here talks to Redis.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

NonEmpty = Annotated[str, Meta(min_length=1, max_length=256)]
Qty = Annotated[int, Meta(ge=1, le=1_000_000)]
Count = Annotated[int, Meta(ge=0, le=10**12)]
Lat = Annotated[float, Meta(ge=-90, le=90)]
Lon = Annotated[float, Meta(ge=-180, le=180)]
Time = Annotated[datetime, Meta(tz=True)]


# -- catalog -------------------------------------------------------------------------------


class Channel(Struct, forbid_unknown_fields=True):
    id: NonEmpty
    kind: Literal["online", "store"] = "online"


class Location(Struct, forbid_unknown_fields=True):
    id: NonEmpty
    kind: Literal["warehouse", "store"] = "warehouse"
    lat: Lat | None = None
    lon: Lon | None = None
    priority: int = 0
    pickup: bool = False  # in-store pickup happens only where this is true
    safety_stock: Count = 0  # units of each SKU here that online channels cannot take
    # a shipment routed here must be claimed (or shipped) within this many seconds, else it
    # is re-routed as if rejected (docs/fulfilment.md); None: no limit
    claim_timeout_s: Annotated[int, Meta(ge=1, le=30 * 86400)] | None = None
    # the most orders routed here per day (UTC, by the routing event's time); None: no limit
    daily_capacity: Annotated[int, Meta(ge=0, le=10**9)] | None = None

    @property
    def allows_pickup(self) -> bool:
        return self.pickup


class ChannelLock(Struct, forbid_unknown_fields=True):
    channel: NonEmpty
    qty: Count
    until: Time


class Sku(Struct, forbid_unknown_fields=True):
    sku: NonEmpty
    stock: dict[NonEmpty, Count]
    per_customer_limit: Annotated[int, Meta(ge=1)] | None = None
    low_stock_threshold: Count | None = None
    channel_locks: list[ChannelLock] = []
    vip_presale_until: Time | None = None
    # Hot-SKU buckets: the SKU's stock split over this many stock hashes on different hash
    # slots (docs/buckets.md); 1 = one hash, as every other SKU.
    buckets: Annotated[int, Meta(ge=1, le=64)] = 1


class Campaign(Struct, forbid_unknown_fields=True):
    id: NonEmpty
    sku: NonEmpty
    gift_sku: NonEmpty
    first_n: Annotated[int, Meta(ge=1)]
    lateness_ms: Annotated[int, Meta(ge=0)] = 2000


class Subscriber(Struct, forbid_unknown_fields=True):
    """Where the availability change feed is delivered (``onestock/ops/deliver.py``): each
    transition of ``channels`` POSTed to ``url``, signed per Standard Webhooks with
    ``secret`` ("whsec_" + base64)."""

    id: NonEmpty
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    secret: Annotated[str, Meta(min_length=1, max_length=1024)]
    channels: Annotated[list[NonEmpty], Meta(min_length=1)]


class RecordSubscriber(Struct, forbid_unknown_fields=True):
    """Where fulfilment records are delivered (``onestock/ops/deliver.py``, docs/downstream.md):
    each record (every version) with a shipment at one of ``locations`` (none given: every
    record) POSTed to ``url``, signed like a ``Subscriber``'s."""

    id: NonEmpty
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    secret: Annotated[str, Meta(min_length=1, max_length=1024)]
    locations: list[NonEmpty] = []


class Catalog(Struct, forbid_unknown_fields=True):
    channels: list[Channel]
    locations: list[Location]
    skus: list[Sku]
    campaigns: list[Campaign] = []
    subscribers: list[Subscriber] = []  # the change feed's webhook subscribers
    record_subscribers: list[RecordSubscriber] = []  # the fulfilment records' webhooks
    # A pending order's payment deadline when it names none: this many seconds after it
    # came (docs/payments.md)
    payment_deadline_s: Annotated[int, Meta(ge=1, le=90 * 86400)] = 1800
    # nearest: the contract's default; priority: lower priority first, then nearest;
    # fewest_shipments: a single location if any, else as few locations as possible.
    routing: Literal["nearest", "priority", "fewest_shipments"] = "nearest"


# -- order events --------------------------------------------------------------------------


class Customer(Struct, gc=False):
    id: NonEmpty
    vip: bool = False
    lat: Lat | None = None
    lon: Lon | None = None


class Line(Struct, gc=False):
    sku: NonEmpty
    qty: Qty


class Delivery(Struct, frozen=True, gc=False):
    mode: Literal["ship", "pickup"] = "ship"
    store: NonEmpty | None = None


class Payment(Struct, gc=False):
    """``"payment": {"status": "pending", "deadline": "<RFC 3339>"}``: the order's units are
    reserved until a ``paid`` event or the deadline (the catalog's default when absent);
    ``"paid"``: paid at ``paid_at``, as an order without ``payment``."""

    status: Literal["pending", "paid"]
    deadline: NonEmpty | None = None


class Order(Struct, gc=False):
    """The canonical order event. Unknown fields are ignored (forward compatible).

    ``gc=False`` on the event types: they hold no cycles, and not tracking millions of them
    spares the collector (decoding is on the hot path).
    """

    order_id: NonEmpty
    channel: NonEmpty
    customer: Customer
    lines: Annotated[list[Line], Meta(min_length=1, max_length=1000)]
    paid_at: NonEmpty
    delivery: Delivery = Delivery()
    type: Literal["order"] | None = None
    payment: Payment | None = None


# -- outcomes ------------------------------------------------------------------------------


class ShipLine(Struct):
    sku: str
    qty: int


class Shipment(Struct):
    location: str
    mode: str
    lines: list[ShipLine]


class Gift(Struct):
    campaign: str
    sku: str
    rank: int
    location: str  # where the gift unit ships from (an extension of the contract)


class FulfilmentRecord(Struct, omit_defaults=False):
    order_id: str
    status: Literal["accepted", "rejected", "cancelled", "reserved", "expired"]
    reason: str | None
    channel: str | None
    shipments: list[Shipment]
    gift: Gift | None
    paid_at: str | None
    received_at: str
    decided_at: str
    detail: str | None = None
    late: bool | None = None  # true: the order came later than its campaign's lateness bound
    version: int = 1  # 1, 2, ...: each change of the order's outcome is a new record


class MovedLine(Struct):
    """One line of a movement record: ``on_hand`` = units at the movement's location after
    it (None when refused); a transfer's also at ``to``; a count's ``discrepancy`` = counted
    - expected (the units onestock had there when the count took effect)."""

    sku: str
    qty: int
    on_hand: int | None = None
    to_on_hand: int | None = None
    discrepancy: int | None = None


class MovementRecord(Struct):
    """The one outcome of a stock movement (``onestock movements``)."""

    movement_id: str
    status: Literal["applied", "refused"]
    reason: str | None = None  # invalid, unknown_sku, unknown_location or below_zero
    detail: str | None = None  # the refusal in words, naming the field or the line
    kind: str | None = None
    location: str | None = None
    to: str | None = None
    lines: list[MovedLine] = msgspec.field(default_factory=list)
    discrepancy: int | None = None  # a count: the sum of its lines' discrepancies
    at: str | None = None
    decided_at: str = ""


class DeadLetter(Struct):
    raw: str
    reason: str


REJECT_REASONS = (
    "sold_out",
    "unknown_sku",
    "unknown_channel",
    "invalid",
    "pickup_unavailable",
    "limit_exceeded",
    "vip_only",
)

catalog_decoder = msgspec.json.Decoder(Catalog)
order_decoder = msgspec.json.Decoder(Order)
json_encoder = msgspec.json.Encoder()


class ReturnRecord(msgspec.Struct):
    """An accepted return, as ``onestock returns`` prints it."""

    order_id: str
    location: str  # where the units went back
    lines: list[ShipLine]
    received_at: str
    decided_at: str
