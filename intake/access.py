"""Who may read what on ``onestock serve`` (docs/ops.md "Exposing onestock safely").

The webhook endpoints face the internet; the ops endpoints — the dashboard, ``/metrics``,
``/availability`` and ``/movements`` — do not. Two independent guards:

- **The ops listener** (``--ops-host/--ops-port``): the ops endpoints answer only on it; on
  the main listener they do not exist (404, as any unknown path), so exposing the main port
  for webhooks reveals no stock.
- **Bearer tokens** (``ONESTOCK_OPS_TOKENS``): each consumer gets a token for the scopes it
  needs (a channel reading availability, Prometheus scraping metrics, people at the
  dashboard). A request to an ops endpoint without a token for its scope is 401 with an
  empty body. ``Authorization: Bearer <token>``, or HTTP Basic with the token as password
  (browsers ask for it: the dashboard's page, its event stream and its script).
"""

from __future__ import annotations

import base64
import hmac
from typing import Any, NamedTuple

import orjson

SCOPES = ("dashboard", "metrics", "availability", "movements")
# the ops endpoints and the scope each needs
OPS_PATHS = {
    "/": "dashboard",
    "/events": "dashboard",
    "/api/live": "dashboard",
    "/static/plotly.min.js": "dashboard",
    "/metrics": "metrics",
    "/availability": "availability",
    "/movements": "movements",
}
CHALLENGE = [(b"www-authenticate", b'Bearer realm="onestock", Basic realm="onestock"')]


class Token(NamedTuple):
    consumer: str
    secret: bytes
    scopes: frozenset[str]


class AccessError(ValueError):
    """ONESTOCK_OPS_TOKENS is not what it must be (one line, naming what)."""


def parse_tokens(text: str | None) -> list[Token]:
    """``ONESTOCK_OPS_TOKENS``: a JSON object, consumer -> {"token": "<at least 16
    characters>", "scopes": [<dashboard|metrics|availability|movements>, ...]}."""
    if not text:
        return []
    try:
        raw: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise AccessError(f"ONESTOCK_OPS_TOKENS is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise AccessError("ONESTOCK_OPS_TOKENS must be an object: consumer -> {token, scopes}")
    out = []
    for name, spec in raw.items():
        where = f"ONESTOCK_OPS_TOKENS[{name!r}]"
        if not isinstance(spec, dict) or set(spec) != {"token", "scopes"}:
            raise AccessError(f'{where} must be {{"token": ..., "scopes": [...]}}')
        token, scopes = spec["token"], spec["scopes"]
        if not isinstance(token, str) or len(token) < 16 or not token.isprintable():
            raise AccessError(f"{where}.token must be at least 16 printable characters")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(SCOPES):
            raise AccessError(f"{where}.scopes must be a list of {', '.join(SCOPES)}")
        out.append(Token(name, token.encode(), frozenset(scopes)))
    if len({t.secret for t in out}) != len(out):
        raise AccessError("ONESTOCK_OPS_TOKENS gives two consumers the same token")
    return out


def presented(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of a request's Authorization header (Bearer, or Basic's password)."""
    for k, v in headers:
        if k != b"authorization":
            continue
        kind, _, cred = v.strip().partition(b" ")
        if kind.lower() == b"bearer":
            return cred.strip()
        if kind.lower() == b"basic":
            try:
                return base64.b64decode(cred.strip(), validate=True).partition(b":")[2]
            except ValueError:
                return None
    return None


def allowed(tokens: list[Token], headers: list[tuple[bytes, bytes]], scope: str) -> bool:
    """Whether the request carries a token for ``scope`` (constant-time comparisons)."""
    got = presented(headers)
    if got is None:
        return False
    ok = False
    for t in tokens:  # every token compared: the time says nothing about which matched
        ok |= hmac.compare_digest(got, t.secret) and scope in t.scopes
    return ok
