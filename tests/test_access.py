"""Who may read what: the ops endpoints on their own listener, bearer tokens per consumer, and
a webhook-only exposure that reveals no stock."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator

import orjson
import pytest

from state.store import Store
from tests.conftest import load, onestock
from tests.helpers import Server, free_port
from tests.test_intake import SECRETS, orders_headers

OPS = ["/", "/events", "/api/live", "/metrics", "/static/plotly.min.js",
       "/availability?channel=tmall&skus=SECRET-SKU"]  # fmt: skip
CATALOG = {
    "channels": [{"id": "tmall"}],
    "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
    "skus": [{"sku": "SECRET-SKU", "stock": {"wh-a": 4242}}],
}
LINES = [{"sku": "SECRET-SKU", "qty": 1}]
MOVEMENT = orjson.dumps(
    {"type": "movement", "movement_id": "g", "kind": "receipt", "location": "wh-a", "lines": LINES}
)
ORDER = orjson.dumps(
    {"order_id": "o-1", "channel": "tmall", "customer": {"id": "c"}, "lines": LINES,
     "paid_at": "2026-11-11T00:00:00Z"}
)  # fmt: skip
TOKENS = {
    "tmall-sync": {"token": "t" * 20, "scopes": ["availability"]},
    "prometheus": {"token": "p" * 20, "scopes": ["metrics"]},
    "ops": {"token": "o" * 20, "scopes": ["dashboard", "metrics", "availability", "movements"]},
}


def call(
    port: int,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        first = resp.read(4096) if path == "/events" else resp.read()  # (a stream never ends)
        return resp.status, dict(resp.getheaders()), first
    finally:
        conn.close()


@pytest.fixture
def split(cli_env: dict[str, str], store: Store) -> Iterator[tuple[Server, int]]:
    load(store, CATALOG)
    ops_port = free_port()
    s = Server({**cli_env, **SECRETS}, extra=("--ops-port", str(ops_port)))
    yield s, ops_port
    s.stop()


def test_a_webhook_only_exposure_reveals_no_stock(split: tuple[Server, int]) -> None:
    server, ops_port = split
    event = MOVEMENT
    for path in [*OPS, "/availability", "/movements", "/nope"]:
        method = "POST" if path == "/movements" else "GET"
        status, _, body = call(server.port, path, method, event, orders_headers(event))
        assert status == 404, path
        assert b"4242" not in body and b"SECRET" not in body and b"available" not in body
    # the webhooks and the health checks are there
    one = ORDER
    assert call(server.port, "/orders", "POST", one, orders_headers(one))[0] == 202
    assert call(server.port, "/healthz")[0] == 200
    # ... and the ops endpoints on the ops listener
    status, _, body = call(ops_port, "/availability?channel=tmall&skus=SECRET-SKU")
    assert status == 200 and orjson.loads(body)["skus"]["SECRET-SKU"]["available"] == 4242
    assert call(ops_port, "/metrics")[0] == 200
    assert call(ops_port, "/movements", "POST", event, orders_headers(event))[0] == 202


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]['token']}"}


def test_each_consumer_reads_only_its_scopes_and_no_token_is_401_with_nothing(
    cli_env: dict[str, str], store: Store
) -> None:
    load(store, CATALOG)
    s = Server({**cli_env, **SECRETS, "ONESTOCK_OPS_TOKENS": orjson.dumps(TOKENS).decode()})
    try:
        for path in OPS:
            for headers in [
                {},
                {"Authorization": "Bearer " + "x" * 20},
                {"Authorization": "Basic !!"},
            ]:
                status, h, body = call(s.port, path, headers=headers)
                assert (status, body) == (401, b""), path
                assert "Bearer" in h["www-authenticate"]
        avail = "/availability?channel=tmall&skus=SECRET-SKU"
        assert call(s.port, avail, headers=bearer("tmall-sync"))[0] == 200
        assert call(s.port, avail, headers=bearer("prometheus"))[0] == 401
        assert call(s.port, "/metrics", headers=bearer("prometheus"))[0] == 200
        assert call(s.port, "/metrics", headers=bearer("tmall-sync"))[0] == 401
        basic = base64.b64encode(b"ops:" + TOKENS["ops"]["token"].encode()).decode()  # type: ignore[attr-defined]
        assert call(s.port, "/", headers={"Authorization": f"Basic {basic}"})[0] == 200
        # webhooks and health checks need no token (they are signed)
        one = ORDER
        assert call(s.port, "/orders", "POST", one, orders_headers(one))[0] == 202
        assert call(s.port, "/healthz")[0] == 200
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ("{", "not JSON"),
        ('{"a": {"token": "short", "scopes": ["metrics"]}}', "at least 16"),
        ('{"a": {"token": "' + "k" * 16 + '", "scopes": ["everything"]}}', "scopes must be"),
        (
            '{"a": {"token": "'
            + "k" * 16
            + '", "scopes": ["metrics"]}, "b": {"token": "'
            + "k" * 16
            + '", "scopes": ["metrics"]}}',
            "same token",
        ),
    ],
)
def test_bad_tokens_are_one_line_errors(
    cli_env: dict[str, str], tokens: str, expected: str
) -> None:
    proc = onestock(
        "serve",
        "--port",
        str(free_port()),
        env={**cli_env, "ONESTOCK_OPS_TOKENS": tokens},
        check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert err.startswith("onestock: error:") and expected in err and "\n" not in err
