"""Signature checks, done on the raw bytes before anything is parsed (constant-time compares).

- Shopify: ``X-Shopify-Hmac-SHA256`` = base64(HMAC-SHA256(secret, body)).
- WooCommerce: ``X-WC-Webhook-Signature`` = base64(HMAC-SHA256(secret, body)).
- onestock's own ``POST /orders``: ``X-Onestock-Signature: t=<unix seconds>,v1=<hex
  HMAC-SHA256(secret, "<t>.<body>")>``; a ``t`` more than the tolerance away from now is
  stale (the timestamp is signed, so a captured request cannot be replayed later).
- ``POST /orders`` signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``; secret ``whsec_<base64>``): verified by the ``standardwebhooks``
  package, not re-implemented (the same 300 s tolerance).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

TOLERANCE_S = 300
STANDARD_HEADERS = (b"webhook-id", b"webhook-timestamp", b"webhook-signature")


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


def standard_webhook(secret: str, name: str) -> Webhook:
    """The Standard Webhooks verifier of ``secret`` (``whsec_<base64>``, as the senders hand
    it out); ValueError naming ``name`` when it is not one."""
    try:
        return Webhook(secret)
    except Exception as exc:  # noqa: BLE001 - bad base64, an empty key: said in one line
        raise ValueError(
            f"{name} is not a Standard Webhooks secret (whsec_<base64>): {exc}"
        ) from None


def is_standard(headers: dict[bytes, bytes]) -> bool:
    """Whether a request says it is signed per Standard Webhooks (any of its headers)."""
    return any(h in headers for h in STANDARD_HEADERS)


def verify_standard(webhook: Webhook, body: bytes, headers: dict[bytes, bytes]) -> str:
    """Verify a Standard Webhooks signature on the raw body; its ``webhook-id`` on success."""
    given = {h.decode(): headers[h].decode("latin-1") for h in STANDARD_HEADERS if h in headers}
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not given.get(h)
    ]
    if missing:
        raise SignatureError(f"missing {', '.join(missing)} header (Standard Webhooks)")
    try:
        webhook.verify(body, given, json_parse=False)
    except WebhookVerificationError as exc:
        raise SignatureError(f"webhook-signature refused: {str(exc).lower()}") from None
    return given["webhook-id"]
