"""Signature checks, done on the raw bytes before anything is parsed (constant-time compares).

- Shopify: ``X-Shopify-Hmac-SHA256`` = base64(HMAC-SHA256(secret, body)).
- WooCommerce: ``X-WC-Webhook-Signature`` = base64(HMAC-SHA256(secret, body)).
- onestock's own ``POST /orders``: ``X-Onestock-Signature: t=<unix seconds>,v1=<hex
  HMAC-SHA256(secret, "<t>.<body>")>``; a ``t`` more than the tolerance away from now is
  stale (the timestamp is signed, so a captured request cannot be replayed later).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

TOLERANCE_S = 300


class SignatureError(Exception):
    """Why a request's signature is refused (said in the 401 body)."""


def _b64_hmac(secret: bytes, body: bytes) -> bytes:
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest())


def verify_base64(secret: bytes, body: bytes, header: bytes | None, name: str) -> None:
    """Shopify's and WooCommerce's scheme."""
    if not header:
        raise SignatureError(f"missing {name} header")
    if not hmac.compare_digest(_b64_hmac(secret, body), header.strip()):
        raise SignatureError(f"{name} does not match the body")


def sign_onestock(secret: bytes, body: bytes, t: int) -> str:
    mac = hmac.new(secret, b"%d.%s" % (t, body), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_onestock(secret: bytes, body: bytes, header: bytes | None, now: float) -> None:
    name = "X-Onestock-Signature"
    if not header:
        raise SignatureError(f"missing {name} header")
    parts = dict(p.split(b"=", 1) for p in header.split(b",") if b"=" in p)
    try:
        t = int(parts[b"t"])
        given = parts[b"v1"].strip()
    except (KeyError, ValueError):
        raise SignatureError(f"{name} must be t=<unix seconds>,v1=<hex>") from None
    want = hmac.new(secret, b"%d.%s" % (t, body), hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(want, given):
        raise SignatureError(f"{name} does not match the body")
    if abs(now - t) > TOLERANCE_S:
        raise SignatureError(f"{name} timestamp is stale ({int(now - t)} s off, max {TOLERANCE_S})")
