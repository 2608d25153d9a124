"""The webhook intake over real HTTP: a real ``onestock serve`` process, a real Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from intake import mapping
from intake.signing import sign_onestock
from onestock.domain import sharding
from state import keys
from state.server import RedisServer
from state.store import Store
from tests.conftest import onestock
from tests.helpers import Server

FIXTURES = Path(__file__).parent / "fixtures"
SHOPIFY = (FIXTURES / "shopify-orders-create.json").read_bytes()
LEGACY = (FIXTURES / "shopify-orders-create-legacy.json").read_bytes()
WOO = (FIXTURES / "woocommerce-order-created.json").read_bytes()
SECRETS = {
    "ONESTOCK_SHOPIFY_SECRET": "shpss_test_secret",
    "ONESTOCK_WOO_SECRET": "wc-test-secret",
    "ONESTOCK_ORDERS_SECRET": "orders-test-secret",
}


def b64mac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_headers(
    body: bytes, delivery: str = "d-1", secret: str | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-SHA256": b64mac(secret or SECRETS["ONESTOCK_SHOPIFY_SECRET"], body),
        "X-Shopify-Webhook-Id": delivery,
        "X-Shopify-Shop-Domain": "onestock-demo.myshopify.com",
    }


def orders_headers(body: bytes, t: int | None = None) -> dict[str, str]:
    t = int(time.time()) if t is None else t
    sig = sign_onestock(SECRETS["ONESTOCK_ORDERS_SECRET"].encode(), body, t)
    return {"Content-Type": "application/json", "X-Onestock-Signature": sig}


@pytest.fixture
def server(cli_env: dict[str, str]) -> Iterator[Server]:
    s = Server({**cli_env, **SECRETS})
    yield s
    s.stop()


def stored(store: Store) -> list[dict[str, Any]]:
    k = store.shards.shard_count()
    return [orjson.loads(raw) for s in range(k) for _, raw in store.shards.read(s, "0-0", 100_000)]


# -- mapping -----------------------------------------------------------------------------------


def test_shopify_mapping_of_a_current_order() -> None:
    event = mapping.shopify_order(SHOPIFY, "shopify", "VIP")
    assert event == {
        "order_id": "shopify-5840012345678",
        "channel": "shopify",
        "customer": {"id": "7012345678901", "vip": True, "lat": 31.2381, "lon": 121.4853},
        "lines": [{"sku": "SNEAKER-42", "qty": 1}, {"sku": "SNEAKER-43", "qty": 1}],
        "delivery": {"mode": "ship"},
        "paid_at": "2026-11-11T00:00:02+08:00",
    }
    assert mapping.shopify_order(SHOPIFY, "shopify", "gold")["customer"]["vip"] is False


def test_shopify_mapping_of_a_legacy_guest_order() -> None:
    event = mapping.shopify_order(LEGACY, "shopify", "VIP")
    assert event["customer"] == {"id": "bob.norman@example.com", "vip": False}  # no coordinates
    assert event["paid_at"] == "2008-01-10T11:00:00-05:00"  # processed_at is null
    # "2" is a quantity; an empty SKU is not guessed: the dataflow rejects the order, naming it
    assert event["lines"] == [{"sku": "PLAYER-GREEN", "qty": 1}, {"sku": None, "qty": 2}]


def test_woocommerce_mapping() -> None:
    event = mapping.woo_order(WOO, "woocommerce")
    assert event == {
        "order_id": "woocommerce-727",
        "channel": "woocommerce",
        "customer": {"id": "26", "vip": False},
        "lines": [{"sku": "TEE-M", "qty": 2}, {"sku": "JACKET-L", "qty": 1}],
        "delivery": {"mode": "ship"},
        "paid_at": "2026-11-11T00:00:05Z",
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"{not json", "not JSON"), (b'{"line_items": []}', "not a Shopify order"), (b"[]", "not a")],
)
def test_shopify_bodies_that_are_not_orders(body: bytes, expected: str) -> None:
    with pytest.raises(mapping.MappingError, match=expected):
        mapping.shopify_order(body, "shopify", "VIP")


# -- HTTP --------------------------------------------------------------------------------------


def test_a_signed_shopify_webhook_is_stored_before_the_202(server: Server, store: Store) -> None:
    status, _, body = server.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY))
    assert (status, body) == (202, {"status": "stored", "order_id": "shopify-5840012345678"})
    assert stored(store) == [mapping.shopify_order(SHOPIFY, "shopify", "VIP")]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda h, b: h | shopify_headers(b, secret="wrong"), "does not match"),
        (lambda h, b: (h, b.replace(b'"quantity": 1', b'"quantity": 9', 1)), "does not match"),
        (lambda h, b: {k: v for k, v in h.items() if k != "X-Shopify-Hmac-SHA256"}, "missing"),
        (lambda h, b: h | {"X-Shopify-Hmac-SHA256": "!!not base64!!"}, "does not match"),
    ],
    ids=["wrong-secret", "tampered-body", "missing-header", "garbage-header"],
)
def test_bad_signatures_are_401_and_store_nothing(
    server: Server, store: Store, change: Any, expected: str
) -> None:
    headers, body = shopify_headers(SHOPIFY), SHOPIFY
    out = change(headers, body)
    headers, body = out if isinstance(out, tuple) else (out, body)
    status, _, reply = server.post("/webhooks/shopify", body, headers)
    assert status == 401 and expected in reply["error"]
    assert stored(store) == []


def deliver_at_once(
    server: Server, path: str, body: bytes, headers: dict[str, str], n: int = 16
) -> list[int]:
    """The statuses of ``n`` copies of one delivery, sent at the same moment, sorted."""
    results: list[int] = []
    barrier = threading.Barrier(n)

    def deliver() -> None:
        barrier.wait()
        results.append(server.post(path, body, headers)[0])

    threads = [threading.Thread(target=deliver) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def test_the_same_delivery_at_the_same_moment_is_stored_once(server: Server, store: Store) -> None:
    results = deliver_at_once(server, "/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY))
    assert results == [200] * 15 + [202]
    assert len(stored(store)) == 1
    # another delivery id of the same body is another delivery (Shopify dedups by id)
    assert server.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY, "d-2"))[0] == 202


def test_oversize_and_malformed_bodies(server: Server, store: Store) -> None:
    big = b'{"id": 1, "line_items": [], "note": "' + b"x" * (1 << 20) + b'"}'
    status, _, reply = server.post("/webhooks/shopify", big, shopify_headers(big))
    assert status == 413 and "over" in reply["error"]
    bad = b'{"id": 1, "line_items": "none"}'
    status, _, reply = server.post("/webhooks/shopify", bad, shopify_headers(bad))
    assert status == 400 and "$.line_items" in reply["error"]
    status, _, reply = server.post("/webhooks/shopify", b"nope", shopify_headers(b"nope"))
    assert status == 400 and reply["error"].startswith("not JSON")
    topic = shopify_headers(SHOPIFY) | {"X-Shopify-Topic": "products/update"}
    assert server.post("/webhooks/shopify", SHOPIFY, topic)[0] == 400
    assert stored(store) == []


def test_canonical_orders_one_or_many_signed_with_a_timestamp(server: Server, store: Store) -> None:
    one = orjson.dumps(
        {"order_id": "o-1", "channel": "tmall", "customer": {"id": "c"},
         "lines": [{"sku": "A", "qty": 1}], "paid_at": "2026-11-11T00:00:00Z"}
    )  # fmt: skip
    assert server.post("/orders", one, orders_headers(one))[0] == 202
    many = b"[" + one.replace(b"o-1", b"o-2") + b"," + one.replace(b"o-1", b"o-3") + b"]"
    status, _, reply = server.post("/orders", many, orders_headers(many))
    assert (status, reply) == (202, {"status": "stored", "events": 2})
    assert sorted(e["order_id"] for e in stored(store)) == ["o-1", "o-2", "o-3"]
    # the same event lands on the shard `onestock orders push` would put it on
    k = store.shards.shard_count()
    assert store.shards.read(sharding.shard_of(one, k), "0-0", 10)[0][1] == one
    stale = server.post("/orders", one, orders_headers(one, t=int(time.time()) - 301))
    assert stale[0] == 401 and "stale" in stale[2]["error"]
    for body, expected in [(b"[]", "empty"), (b"[1]", "JSON object at [0]"), (b"{", "not JSON")]:
        status, _, reply = server.post("/orders", body, orders_headers(body))
        assert status == 400 and expected in reply["error"], reply
    assert len(stored(store)) == 3


def test_woocommerce_ping_and_order(server: Server, store: Store) -> None:
    ping = server.post("/webhooks/woocommerce", b"webhook_id=15",
                       {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert ping[0] == 200 and stored(store) == []
    headers = {
        "Content-Type": "application/json",
        "X-WC-Webhook-Topic": "order.created",
        "X-WC-Webhook-Resource": "order",
        "X-WC-Webhook-Event": "created",
        "X-WC-Webhook-Signature": b64mac(SECRETS["ONESTOCK_WOO_SECRET"], WOO),
        "X-WC-Webhook-ID": "15",
        "X-WC-Webhook-Delivery-ID": "a1b2c3d4e5f6",
    }
    assert server.post("/webhooks/woocommerce", WOO, headers)[0] == 202
    assert server.post("/webhooks/woocommerce", WOO, headers)[0] == 200  # the same delivery
    assert stored(store) == [mapping.woo_order(WOO, "woocommerce")]
    unsigned = {k: v for k, v in headers.items() if k != "X-WC-Webhook-Signature"}
    assert server.post("/webhooks/woocommerce", WOO, unsigned)[0] == 401


def test_unknown_paths_and_unconfigured_sources(cli_env: dict[str, str]) -> None:
    s = Server({**cli_env, "ONESTOCK_ORDERS_SECRET": "x"})
    try:
        status, _, reply = s.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY))
        assert status == 404 and "ONESTOCK_SHOPIFY_SECRET" in reply["error"]
        assert s.get("/nope")[0] == 404 and s.get("/orders")[0] == 405
    finally:
        assert s.stop() == 0


def test_backlog_past_its_bound_is_503_with_retry_after(cli_env: dict[str, str]) -> None:
    s = Server({**cli_env, **SECRETS, "ONESTOCK_INTAKE_MAX_BACKLOG": "2"})
    try:
        codes = []
        for i in range(4):
            codes.append(s.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY, f"b{i}")))
        assert [c[0] for c in codes] == [202, 202, 202, 503]
        assert codes[3][1].get("retry-after") == "1" and "backlog" in codes[3][2]["error"]
        assert s.get("/readyz")[0] == 503
    finally:
        s.stop()


def test_redis_down_is_503_and_nothing_is_half_written(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", persistent=True).start()
    home = tmp_path / "home"
    s = Server({"ONESTOCK_REDIS_URL": redis.url, "ONESTOCK_HOME": str(home), **SECRETS})
    try:
        assert s.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY, "r1"))[0] == 202
        redis.stop()
        status, headers, reply = s.post("/webhooks/shopify", LEGACY, shopify_headers(LEGACY, "r2"))
        assert status == 503 and headers.get("retry-after") == "1", reply
        assert s.get("/readyz")[0] == 503 and s.get("/healthz")[0] == 200
        redis.start()
        store = Store.connect(redis.url)
        assert [e["order_id"] for e in stored(store)] == ["shopify-5840012345678"]
        # the retry of the refused delivery is stored (its id was not remembered)
        assert s.post("/webhooks/shopify", LEGACY, shopify_headers(LEGACY, "r2"))[0] == 202
        assert len(stored(store)) == 2
    finally:
        s.stop()
        redis.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_shutdown_under_load_loses_no_acknowledged_event(
    cli_env: dict[str, str], store: Store, workers: int
) -> None:
    s = Server({**cli_env, **SECRETS}, workers=workers)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            body = SHOPIFY.replace(b"5840012345678", f"{n}{i:07d}".encode(), 1)
            try:
                status, _, reply = s.post(
                    "/webhooks/shopify", body, shopify_headers(body, f"{n}-{i}")
                )
            except OSError:
                return  # the server closed: no answer, so nothing was acknowledged
            if status == 202:
                with lock:
                    acked.append(reply["order_id"])
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert s.stop() == 0  # SIGTERM while requests are in flight
    stop.set()
    for t in threads:
        t.join()
    ids = [e["order_id"] for e in stored(store)]
    assert len(acked) > 50
    assert set(acked) <= set(ids)  # every 202 has its event
    assert len(ids) == len(set(ids))


def test_end_to_end_from_a_signed_shopify_webhook_to_its_fulfilment_record(
    server: Server, cli_env: dict[str, str], tmp_path: Path
) -> None:
    catalog = {
        "channels": [{"id": "shopify", "kind": "online"}],
        "locations": [{"id": "wh-shanghai", "kind": "warehouse", "lat": 31.23, "lon": 121.47},
                      {"id": "wh-beijing", "kind": "warehouse", "lat": 39.9, "lon": 116.4}],
        "skus": [{"sku": "SNEAKER-42", "stock": {"wh-shanghai": 1, "wh-beijing": 5}},
                 {"sku": "SNEAKER-43", "stock": {"wh-beijing": 5}}],
    }  # fmt: skip
    path = tmp_path / "catalog.json"
    path.write_bytes(orjson.dumps(catalog))
    onestock("catalog", "load", str(path), env=cli_env)
    assert server.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY))[0] == 202
    assert server.post("/webhooks/shopify", LEGACY, shopify_headers(LEGACY, "d-9"))[0] == 202
    onestock("run", "--until-drained", "--workers", "1", env=cli_env)
    out = onestock("fulfilments", env=cli_env).stdout.splitlines()
    recs = {r["order_id"]: r for r in map(orjson.loads, out)}
    rec = recs["shopify-5840012345678"]
    assert (rec["status"], rec["channel"], rec["paid_at"]) == (
        "accepted", "shopify", "2026-11-11T00:00:02+08:00"
    )  # fmt: skip
    # Shanghai is nearest but holds only SNEAKER-42: Beijing holds both lines
    assert [(s["location"], [ln["sku"] for ln in s["lines"]]) for s in rec["shipments"]] == [
        ("wh-beijing", ["SNEAKER-42", "SNEAKER-43"])
    ]
    legacy = recs["shopify-450789469"]
    assert legacy["status"] == "rejected" and legacy["reason"] == "invalid"
    assert "$.lines[1].sku" in legacy["detail"]
    got = Store.connect(cli_env["ONESTOCK_REDIS_URL"])
    k = got.shards.shard_count()
    assert got.r.exists(
        keys.delivery(
            sharding.shard_of(orjson.dumps(mapping.shopify_order(SHOPIFY, "shopify", "VIP")), k),
            "shopify",
            "d-1",
        )
    )


def test_intake_lua_stores_each_delivery_whole_or_not_at_all(store: Store) -> None:
    """One call: a delivery of two events under a key, the same delivery again (a duplicate
    in the same call: nothing of it), one without a key; malformed calls change nothing."""
    script = (Path(__file__).parent.parent / "state/lua/intake.lua").read_text()
    inbox, dedup = keys.inbox(0), keys.delivery(0, "shopify", "d-1")
    out = store.r.eval(script, 3, inbox, dedup, dedup, 60, 3,
                       2, 2, b"r1", b"r2", 3, 2, b"r1", b"r2", 0, 1, b"o1")  # fmt: skip
    assert out == [3, 1, 0, 1]
    rows: Any = store.r.xrange(inbox)
    assert [f[b"e"] for _, f in rows] == [b"r1", b"r2", b"o1"]
    assert 0 < store.r.ttl(dedup) <= 60
    for bad in (
        [60, 1, 0, 2, b"only one"],
        [60, 1, 0, 0],
        [60, 1, 1, 1, b"x"],
        [60, 2, 0, 1, b"x"],
    ):
        with pytest.raises(Exception, match="intake.lua: bad"):
            store.r.eval(script, 1, inbox, *bad)
    assert store.r.xlen(inbox) == 3
