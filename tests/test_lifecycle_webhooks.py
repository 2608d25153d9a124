"""Marketplace lifecycle webhooks (issue 20, item 2): Shopify ``orders/paid``,
``orders/cancelled``, ``refunds/create`` and WooCommerce ``order.updated`` mapped to
onestock's ``paid``, ``cancel`` and ``return`` events; pending payments; deduplication on
``X-Shopify-Event-Id``; ``POST /orders`` signed per Standard Webhooks. Over real HTTP to a
real ``onestock serve``, and through the real dataflow (``onestock run``) for the restocks.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from intake import mapping
from intake.signing import sign_onestock
from onestock.ops import services as ops
from state import keys
from state.store import Store
from tests.conftest import onestock
from tests.helpers import Server
from tests.test_intake import SECRETS, b64mac, deliver_at_once, stored

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


CREATE = fixture("shopify-orders-create.json")
CANCELLED = fixture("shopify-orders-cancelled.json")
REFUND_CANCEL = fixture("shopify-refunds-create-cancel.json")
REFUND_RETURN = fixture("shopify-refunds-create-return.json")
REFUND_NONE = fixture("shopify-refunds-create-no-restock.json")
PENDING = fixture("shopify-orders-create-pending.json")
PAID = fixture("shopify-orders-paid.json")
LEGACY = fixture("shopify-orders-create-legacy.json")
WOO = fixture("woocommerce-order-created.json")
WOO_CANCELLED = fixture("woocommerce-order-updated-cancelled.json")
WOO_REFUNDED = fixture("woocommerce-order-updated-refunded.json")
WOO_ON_HOLD = fixture("woocommerce-order-created-on-hold.json")
WOO_PROCESSING = fixture("woocommerce-order-updated-processing.json")
# Shopify location ids of the fixtures -> catalog locations (the warehouse, a store)
LOCATIONS = {"71234567890": "wh-beijing", "71234567891": "st-shanghai-1"}
SW_SECRET = "whsec_" + base64.b64encode(b"onestock-standard-webhooks-test!").decode()
ENV = {
    **SECRETS,
    "ONESTOCK_SHOPIFY_LOCATIONS": orjson.dumps(LOCATIONS).decode(),
    "ONESTOCK_ORDERS_WEBHOOK_SECRET": SW_SECRET,
}
SHOPIFY_ORDER = "shopify-5840012345678"


def shopify(
    body: bytes, topic: str, webhook_id: str, event_id: str | None = None
) -> dict[str, str]:
    """Headers as Shopify sends them: base64 HMAC-SHA256 of the raw body, the topic, the
    delivery's id and (current API versions) the event's id."""
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-SHA256": b64mac(SECRETS["ONESTOCK_SHOPIFY_SECRET"], body),
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Shop-Domain": "onestock-demo.myshopify.com",
        "X-Shopify-API-Version": "2025-10",
        "X-Shopify-Triggered-At": "2026-11-11T00:20:01.000Z",
    }
    if event_id is not None:
        headers["X-Shopify-Event-Id"] = event_id
    return headers


def to_shopify(
    server: Server, body: bytes, topic: str, webhook_id: str, event_id: str | None = None
) -> tuple[int, dict[str, str], Any]:
    return server.post("/webhooks/shopify", body, shopify(body, topic, webhook_id, event_id))


def woo(body: bytes, topic: str, delivery: str) -> dict[str, str]:
    """Headers as WooCommerce sends them (base64 HMAC-SHA256 of the raw body)."""
    resource, event = topic.split(".")
    return {
        "Content-Type": "application/json",
        "X-WC-Webhook-Source": "https://shop.example.com/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": b64mac(SECRETS["ONESTOCK_WOO_SECRET"], body),
        "X-WC-Webhook-ID": "15",
        "X-WC-Webhook-Delivery-ID": delivery,
    }


def standard(body: bytes, msg_id: str, at: datetime | None = None) -> dict[str, str]:
    """Headers signed per Standard Webhooks by the reference package."""
    at = at or datetime.now(UTC)
    sig = Webhook(SW_SECRET).sign(msg_id, at, body)
    return {"Content-Type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": sig}  # fmt: skip


@pytest.fixture
def server(cli_env: dict[str, str]) -> Iterator[Server]:
    s = Server({**cli_env, **ENV})
    yield s
    s.stop()


def counts(store: Store, field: str, want: int = 1) -> int:
    """An intake count once the server added it to Redis (each process adds every second)."""
    deadline = time.time() + 5
    while True:
        n = int(store.r.hget(keys.INTAKE_COUNTS, field) or 0)
        if n >= want or time.time() > deadline:
            return n
        time.sleep(0.1)


# -- mapping -----------------------------------------------------------------------------------


def test_shopify_paid_and_cancelled_map_to_paid_and_cancel() -> None:
    assert mapping.shopify("orders/cancelled", CANCELLED, "shopify", "VIP", {}).events == [
        {"type": "cancel", "order_id": SHOPIFY_ORDER}
    ]
    # updated_at: the moment the order became paid (processed_at is when it was placed)
    assert mapping.shopify("orders/paid", PAID, "shopify", "VIP", {}).events == [
        {"type": "paid", "order_id": "shopify-5840012345690",
         "paid_at": "2026-11-12T09:30:00+08:00"}
    ]  # fmt: skip


def test_a_pending_shopify_order_holds_its_units_until_its_payment_terms_are_due() -> None:
    event = mapping.shopify_order(PENDING, "shopify", "VIP")
    assert event["payment"] == {"status": "pending", "deadline": "2026-11-18T00:00:07+08:00"}
    assert event["paid_at"] == "2026-11-11T00:00:07+08:00"
    no_terms = PENDING.replace(b'"payment_terms"', b'"payment_terms_was"', 1)
    assert mapping.shopify_order(no_terms, "shopify", "VIP")["payment"] == {"status": "pending"}
    # authorized: the payment is secured (only its capture waits); paid: as before
    assert "payment" not in mapping.shopify_order(LEGACY, "shopify", "VIP")
    assert "payment" not in mapping.shopify_order(CREATE, "shopify", "VIP")


def test_a_shopify_refund_is_one_return_per_restock_location() -> None:
    got = mapping.shopify("refunds/create", REFUND_RETURN, "shopify", "VIP", LOCATIONS)
    assert got.events == [
        {"type": "return", "order_id": SHOPIFY_ORDER, "return_id": "shopify-refund-920012345679",
         "lines": [{"sku": "SNEAKER-42", "qty": 1}], "location": "st-shanghai-1"},
        {"type": "return", "order_id": SHOPIFY_ORDER, "return_id": "shopify-refund-920012345679",
         "lines": [{"sku": "SNEAKER-43", "qty": 1}], "location": "wh-beijing"},
    ]  # fmt: skip
    # restock_type "cancel" (a cancelled order's units) restocks too; an unmapped location
    # id is taken as the catalog's location id
    unmapped = mapping.shopify("refunds/create", REFUND_CANCEL, "shopify", "VIP", {}).events
    assert [(e["location"], e["lines"]) for e in unmapped] == [
        ("71234567890", [{"sku": "SNEAKER-42", "qty": 1}, {"sku": "SNEAKER-43", "qty": 1}])
    ]


def test_a_refund_that_restocks_nothing_maps_to_no_event() -> None:
    got = mapping.shopify("refunds/create", REFUND_NONE, "shopify", "VIP", LOCATIONS)
    assert (got.order_id, got.events, got.outcome) == (
        "shopify-450789469",
        [],
        "nothing_to_restock",
    )
    # a restocking line without a location is not guessed: the dataflow names $.location
    raw = orjson.loads(REFUND_NONE)
    raw["refund_line_items"][0]["restock_type"] = "legacy_restock"
    events = mapping.shopify("refunds/create", orjson.dumps(raw), "shopify", "VIP", {}).events
    assert events[0]["location"] is None and events[0]["lines"] == [
        {"sku": "IPOD2008RED", "qty": 1}
    ]


def test_woocommerce_status_updates() -> None:
    assert mapping.woocommerce("order.updated", WOO_CANCELLED, "woocommerce").events == [
        {"type": "cancel", "order_id": "woocommerce-727"}
    ]
    # refunded = the whole order refunded (a partial refund keeps the status): the sale is void
    assert mapping.woocommerce("order.updated", WOO_REFUNDED, "woocommerce").events == [
        {"type": "cancel", "order_id": "woocommerce-727"}
    ]
    assert mapping.woocommerce("order.updated", WOO_PROCESSING, "woocommerce").events == [
        {"type": "paid", "order_id": "woocommerce-728", "paid_at": "2026-11-12T02:15:00Z"}
    ]
    held = mapping.woocommerce("order.updated", WOO_ON_HOLD, "woocommerce")
    assert (held.events, held.outcome) == ([], "ignored") and "on-hold" in held.reason
    created = mapping.woocommerce("order.created", WOO_ON_HOLD, "woocommerce").events[0]
    assert created["payment"] == {"status": "pending"}  # awaiting the bank transfer
    assert "payment" not in mapping.woo_order(WOO, "woocommerce")  # processing: paid


UNKNOWN_RESTOCK = REFUND_RETURN.replace(b'"restock_type": "return"', b'"restock_type": "x"', 1)


@pytest.mark.parametrize(
    ("topic", "body", "expected"),
    [
        ("products/update", CREATE, "unsupported topic 'products/update'"),
        ("refunds/create", UNKNOWN_RESTOCK, "$.refund_line_items[0].restock_type"),
        ("refunds/create", b'{"id": 1}', "not a Shopify refund"),
        ("orders/paid", b'{"name": "#1"}', "not a Shopify order"),
    ],
)  # fmt: skip
def test_shopify_bodies_that_are_not_what_their_topic_says(
    topic: str, body: bytes, expected: str
) -> None:
    with pytest.raises(mapping.MappingError) as err:
        mapping.shopify(topic, body, "shopify", "VIP", {})
    assert expected in str(err.value)


# -- HTTP: what the intake stores --------------------------------------------------------------


def test_lifecycle_webhooks_are_stored_as_their_canonical_events(
    server: Server, store: Store
) -> None:
    sent = [
        ("/webhooks/shopify", PENDING, shopify(PENDING, "orders/create", "w1", "e1")),
        ("/webhooks/shopify", PAID, shopify(PAID, "orders/paid", "w2", "e2")),
        ("/webhooks/shopify", CANCELLED, shopify(CANCELLED, "orders/cancelled", "w3", "e3")),
        ("/webhooks/woocommerce", WOO_ON_HOLD, woo(WOO_ON_HOLD, "order.created", "wd1")),
        ("/webhooks/woocommerce", WOO_PROCESSING, woo(WOO_PROCESSING, "order.updated", "wd2")),
    ]
    for path, body, headers in sent:
        status, _, reply = server.post(path, body, headers)
        assert (status, reply["status"]) == (202, "stored"), reply
    events = {(e["order_id"], e.get("type")): e for e in stored(store)}
    assert events[("shopify-5840012345690", None)]["payment"] == {
        "status": "pending", "deadline": "2026-11-18T00:00:07+08:00"
    }  # fmt: skip
    assert events[("shopify-5840012345690", "paid")]["paid_at"] == "2026-11-12T09:30:00+08:00"
    assert events[(SHOPIFY_ORDER, "cancel")] == {"type": "cancel", "order_id": SHOPIFY_ORDER}
    assert events[("woocommerce-728", None)]["payment"] == {"status": "pending"}
    assert events[("woocommerce-728", "paid")]["paid_at"] == "2026-11-12T02:15:00Z"
    assert len(events) == 5
    # a pending order and its paid event share the order's shard (decided in sequence)
    k = store.shards.shard_count()
    rows = [(s, orjson.loads(raw)) for s in range(k) for _, raw in store.shards.read(s, "0-0", 9)]
    where = {(e["order_id"], e.get("type")): s for s, e in rows}
    assert where[("shopify-5840012345690", None)] == where[("shopify-5840012345690", "paid")]


def test_deliveries_that_map_to_no_event_are_acknowledged_and_counted(
    server: Server, store: Store
) -> None:
    status, _, reply = to_shopify(server, REFUND_NONE, "refunds/create", "w9", "e9")
    assert (status, reply["status"], reply["order_id"]) == (
        200, "nothing_to_restock", "shopify-450789469"
    )  # fmt: skip
    status, _, reply = server.post(
        "/webhooks/woocommerce", WOO_ON_HOLD, woo(WOO_ON_HOLD, "order.updated", "wd9")
    )
    assert (status, reply["status"]) == (200, "ignored") and "on-hold" in reply["reason"]
    assert stored(store) == []
    assert counts(store, "r:shopify:nothing_to_restock") == 1
    assert counts(store, "r:woocommerce:ignored") == 1


def test_shopify_deduplicates_on_the_event_id_then_on_the_delivery_id(
    server: Server, store: Store
) -> None:
    assert to_shopify(server, CANCELLED, "orders/cancelled", "w1", "ev")[0] == 202
    # the same event to a second subscription (another delivery id): a duplicate
    dup = to_shopify(server, CANCELLED, "orders/cancelled", "w2", "ev")
    assert (dup[0], dup[2]["status"]) == (200, "duplicate")
    # the same event id under another topic is another event
    assert to_shopify(server, PAID, "orders/paid", "w3", "ev")[0] == 202
    # without X-Shopify-Event-Id: the delivery id, as before (a retry keeps it)
    assert to_shopify(server, CREATE, "orders/create", "w4")[0] == 202
    assert to_shopify(server, CREATE, "orders/create", "w4")[0] == 200
    assert len(stored(store)) == 3
    assert to_shopify(server, CREATE, "orders/create", "w5", "x" * 300)[0] == 400


def test_a_refund_restocking_at_two_locations_is_stored_whole_once(
    server: Server, store: Store
) -> None:
    """16 copies of one refund delivery at the same moment: its two returns stored once."""
    headers = shopify(REFUND_RETURN, "refunds/create", "w-r", "e-r")
    results = deliver_at_once(server, "/webhooks/shopify", REFUND_RETURN, headers)
    assert results == [200] * 15 + [202]
    got = stored(store)
    assert [(e["type"], e["location"]) for e in got] == [
        ("return", "st-shanghai-1"), ("return", "wh-beijing")
    ]  # fmt: skip
    assert counts(store, "e:shopify", 2) == 2 and counts(store, "r:shopify:duplicate", 15) == 15


# -- HTTP: POST /orders signed per Standard Webhooks -------------------------------------------


def canonical(oid: str) -> dict[str, Any]:
    line = {"sku": "SNEAKER-42", "qty": 1}
    return {"order_id": oid, "channel": "shopify", "customer": {"id": "c"}, "lines": [line],
            "paid_at": "2026-11-11T00:00:00Z"}  # fmt: skip


def test_orders_signed_per_standard_webhooks_are_stored_once_per_webhook_id(
    server: Server, store: Store
) -> None:
    one = orjson.dumps(canonical("sw-1"))
    assert server.post("/orders", one, standard(one, "msg_1"))[0] == 202
    status, _, reply = server.post("/orders", one, standard(one, "msg_1"))  # the sender's retry
    assert (status, reply) == (200, {"status": "duplicate", "events": 0})
    # an array over many shards, one webhook-id: every event once, its retry stores nothing
    many = orjson.dumps([canonical(f"sw-{i}") for i in range(2, 12)])
    assert server.post("/orders", many, standard(many, "msg_2"))[2] == {
        "status": "stored",
        "events": 10,
    }
    assert server.post("/orders", many, standard(many, "msg_2"))[0] == 200
    assert sorted(e["order_id"] for e in stored(store)) == sorted(f"sw-{i}" for i in range(1, 12))
    # the existing scheme still works beside it
    other = orjson.dumps(canonical("hmac-1"))
    t = int(time.time())
    sig = sign_onestock(SECRETS["ONESTOCK_ORDERS_SECRET"].encode(), other, t)
    assert server.post("/orders", other, {"X-Onestock-Signature": sig})[0] == 202


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda h: h | {"webhook-signature": "v1,AAAA"}, "no matching signature found"),
        (lambda h: {k: v for k, v in h.items() if k != "webhook-timestamp"},
         "missing webhook-timestamp header"),
        (lambda h: h | {"webhook-id": "msg_other"}, "no matching signature found"),
    ],
    ids=["wrong-signature", "no-timestamp", "id-not-signed"],
)  # fmt: skip
def test_bad_standard_webhooks_signatures_are_401(
    server: Server, store: Store, change: Any, expected: str
) -> None:
    body = orjson.dumps(canonical("sw-bad"))
    status, _, reply = server.post("/orders", body, change(standard(body, "msg_b")))
    assert status == 401 and expected in reply["error"] and "\n" not in reply["error"]
    stale = standard(body, "msg_s", datetime.fromtimestamp(time.time() - 301, UTC))
    status, _, reply = server.post("/orders", body, stale)
    assert status == 401 and "too old" in reply["error"]
    assert stored(store) == []


def test_each_scheme_answers_only_once_its_secret_is_set(cli_env: dict[str, str]) -> None:
    body = orjson.dumps(canonical("o"))
    only_hmac = Server({**cli_env, "ONESTOCK_ORDERS_SECRET": "x"})
    try:
        status, _, reply = only_hmac.post("/orders", body, standard(body, "m"))
        assert status == 401 and "ONESTOCK_ORDERS_WEBHOOK_SECRET is not set" in reply["error"]
    finally:
        only_hmac.stop()
    only_sw = Server({**cli_env, "ONESTOCK_ORDERS_WEBHOOK_SECRET": SW_SECRET})
    try:
        assert only_sw.post("/orders", body, standard(body, "m"))[0] == 202
        status, _, reply = only_sw.post("/orders", body, {"X-Onestock-Signature": "t=1,v1=00"})
        assert status == 401 and "webhook-id" in reply["error"]
    finally:
        only_sw.stop()


# -- through the dataflow: the cancellations and refunds restock exactly once -----------------

CATALOG: dict[str, Any] = {
    "channels": [{"id": "shopify", "kind": "online"}, {"id": "woocommerce", "kind": "online"}],
    "locations": [
        {"id": "wh-shanghai", "kind": "warehouse", "lat": 31.23, "lon": 121.47},
        {"id": "wh-beijing", "kind": "warehouse", "lat": 39.9, "lon": 116.4},
        {"id": "st-shanghai-1", "kind": "store", "lat": 31.24, "lon": 121.49},
    ],
    "skus": [
        {"sku": "SNEAKER-42", "stock": {"wh-shanghai": 1, "wh-beijing": 5}},
        {"sku": "SNEAKER-43", "stock": {"wh-beijing": 5}},
        {"sku": "TEE-M", "stock": {"wh-beijing": 10}},
        {"sku": "JACKET-L", "stock": {"wh-shanghai": 3}},
    ],
}
LOADED = {s["sku"]: s["stock"] for s in CATALOG["skus"]}


def load_and_sell(
    server: Server, cli_env: dict[str, str], tmp_path: Path, sells: list[Any]
) -> None:
    path = tmp_path / "catalog.json"
    path.write_bytes(orjson.dumps(CATALOG))
    onestock("catalog", "load", str(path), env=cli_env)
    for path_, body, headers in sells:
        assert server.post(path_, body, headers)[0] == 202
    drain(cli_env)


def drain(cli_env: dict[str, str]) -> None:
    onestock("run", "--until-drained", "--workers", "1", env=cli_env, timeout=120)


def on_hand(cli_env: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per SKU, the units on hand per location (``onestock stock --json``), zeros left out."""
    view = orjson.loads(onestock("stock", "--json", env=cli_env).stdout)
    return {sku: {loc: n for loc, n in v["locations"].items() if n} for sku, v in view.items()}


def records(cli_env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {r["order_id"]: r for r in map(orjson.loads,
            onestock("fulfilments", env=cli_env).stdout.splitlines())}  # fmt: skip


def audited(cli_env: dict[str, str]) -> ops.Audit:
    store = Store.connect(cli_env["ONESTOCK_REDIS_URL"])
    audit = ops.audit(store, store.shards.shard_count(), LOADED)
    assert audit.oversold == 0 and audit.duplicates == 0
    return audit


@pytest.mark.parametrize("first", ["cancel", "refund"])
def test_a_shopify_cancel_with_restock_gives_the_units_back_once(
    server: Server, cli_env: dict[str, str], tmp_path: Path, first: str
) -> None:
    """Cancelling with "restock items" sends orders/cancelled and refunds/create (restock_type
    cancel), each retried and sent to a second subscription: whichever is decided first, the
    units come back once, to the loaded stock exactly."""
    sell = ("/webhooks/shopify", CREATE, shopify(CREATE, "orders/create", "w0", "e0"))
    load_and_sell(server, cli_env, tmp_path, [sell])
    assert on_hand(cli_env)["SNEAKER-42"] == {"wh-shanghai": 1, "wh-beijing": 4}  # one shipment
    cancel = [(CANCELLED, "orders/cancelled", "e-c", w) for w in ("w-c1", "w-c1", "w-c2")]
    refund = [(REFUND_CANCEL, "refunds/create", "e-r", w) for w in ("w-r1", "w-r1", "w-r2")]
    for deliveries in (cancel, refund) if first == "cancel" else (refund, cancel):
        codes = [to_shopify(server, body, topic, w, e)[0] for body, topic, e, w in deliveries]
        assert codes == [202, 200, 200]  # stored; its retry and its copy are duplicates
        drain(cli_env)
    assert on_hand(cli_env) == LOADED
    assert records(cli_env)[SHOPIFY_ORDER]["status"] == "cancelled"
    dead = [orjson.loads(d) for d in onestock("deadletters", env=cli_env).stdout.splitlines()]
    returns = onestock("returns", env=cli_env).stdout.splitlines()
    if first == "cancel":  # the refund's return finds the units back: refused, saying why
        assert [d["reason"] for d in dead] == ["return refused: the order was cancelled"]
        assert returns == []
    else:  # the return restocks; the cancel gives back the rest, which is nothing
        assert dead == [] and len(returns) == 1
    audited(cli_env)


def test_a_shopify_return_to_two_locations_restocks_each_once(
    server: Server, cli_env: dict[str, str], tmp_path: Path
) -> None:
    sell = ("/webhooks/shopify", CREATE, shopify(CREATE, "orders/create", "w0"))
    load_and_sell(server, cli_env, tmp_path, [sell])
    retries = ("w-r1", "w-r1", "w-r2")  # a retry, and a second subscription
    codes = [to_shopify(server, REFUND_RETURN, "refunds/create", w, "e-r")[0] for w in retries]
    assert codes == [202, 200, 200]
    none = to_shopify(server, REFUND_NONE, "refunds/create", "w-n", "e-n")
    assert none[2]["status"] == "nothing_to_restock"
    drain(cli_env)
    # SNEAKER-42 came back to the store, SNEAKER-43 to the warehouse: each unit once
    assert on_hand(cli_env) == {
        "SNEAKER-42": {"wh-shanghai": 1, "wh-beijing": 4, "st-shanghai-1": 1},
        "SNEAKER-43": {"wh-beijing": 5}, "TEE-M": {"wh-beijing": 10},
        "JACKET-L": {"wh-shanghai": 3},
    }  # fmt: skip
    returns = [orjson.loads(x) for x in onestock("returns", env=cli_env).stdout.splitlines()]
    assert sorted(r["location"] for r in returns) == ["st-shanghai-1", "wh-beijing"]
    # cancelled afterwards: nothing is still out, nothing more comes back
    assert to_shopify(server, CANCELLED, "orders/cancelled", "w-c", "e-c")[0] == 202
    drain(cli_env)
    assert sum(on_hand(cli_env)["SNEAKER-42"].values()) == 6
    assert sum(on_hand(cli_env)["SNEAKER-43"].values()) == 5
    assert records(cli_env)[SHOPIFY_ORDER]["status"] == "cancelled"
    assert audited(cli_env).dead == 0


def test_a_woocommerce_refund_and_cancel_give_the_units_back_once(
    server: Server, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Refunded in full (order.updated to refunded, delivered twice), then cancelled too (a
    later status change): the units come back once."""
    sell = ("/webhooks/woocommerce", WOO, woo(WOO, "order.created", "d0"))
    load_and_sell(server, cli_env, tmp_path, [sell])
    assert on_hand(cli_env)["TEE-M"] == {"wh-beijing": 8}
    sent = [(WOO_REFUNDED, "d1"), (WOO_REFUNDED, "d1"), (WOO_CANCELLED, "d2")]
    codes = [
        server.post("/webhooks/woocommerce", b, woo(b, "order.updated", d))[0] for b, d in sent
    ]
    assert codes == [202, 200, 202]
    drain(cli_env)
    assert on_hand(cli_env) == LOADED
    assert records(cli_env)["woocommerce-727"]["status"] == "cancelled"
    audited(cli_env)


def test_the_fixtures_say_where_they_came_from() -> None:
    readme = (FIXTURES / "README.md").read_text()
    names = sorted(p.name for p in FIXTURES.glob("*.json"))
    assert [n for n in names if f"`{n}`" not in readme] == []
