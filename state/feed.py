"""The availability change feed in Redis (``keys.FEED_*``, one slot): the SKUs whose stock
changed (marked by the deciders), the transitions of each (SKU, channel)'s status
(``feed_publish.lua``), the publisher's lease, and reading the feed.

What the statuses are and when they change is the ops layer's (``onestock/ops/feed.py``);
here is only how they are stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from onestock.domain.protocol import SEP
from state import keys
from state.conn import Redis, lua

LEASE_MS = 5000  # a publisher that stops renewing loses its lease after this


class Transition(NamedTuple):
    """One entry of the feed: the contract's ``{"seq", "sku", "channel", "status",
    "available", "at"}`` (``at``: epoch ms)."""

    seq: int
    sku: str
    channel: str
    status: str
    available: int
    at_ms: int


class Feed:
    """The change feed's keys (a part of ``state.store.Store``)."""

    def __init__(self, client: Redis) -> None:
        self.r = client
        self._publish = client.register_script(lua("feed_publish"))
        self._lease = client.register_script(lua("lease"))
        # the webhook deliverer's commit (it runs it on its own asyncio client), and the
        # output streams' consumer clean-up (state/outbox.py, made per reader): registered
        # here too, so the scripts are loaded and checked with every other
        self.delivery_commit = client.register_script(lua("delivery_commit"))
        self.outbox_forget = client.register_script(lua("outbox_forget"))

    # -- the deciders' side ----------------------------------------------------------------

    def mark(self, skus: Iterable[str]) -> None:
        """Say these SKUs' stock changed: the publisher judges them again."""
        names = list(skus)
        if names:
            self.r.sadd(keys.FEED_DIRTY, *names)

    # -- the publisher's side --------------------------------------------------------------

    def take(self, most: int = 100_000) -> set[str]:
        """The SKUs marked since the last take (each taken once)."""
        got: Any = self.r.spop(keys.FEED_DIRTY, most)
        return {s.decode() for s in got or []}

    def lease(self, token: str | None) -> str | None:
        """Take the publisher's lease (``token`` None: a new token) or renew it (the token
        held); the token while held, else None."""
        got = self._lease(keys=[keys.FEED_LEASE], args=[token or "", uuid.uuid4().hex, LEASE_MS])
        return got.decode() if got else None

    def release(self, token: str) -> None:
        self._lease(keys=[keys.FEED_LEASE], args=[token, "", 0])

    def published(self) -> dict[tuple[str, str], str]:
        """The status last published per (SKU, channel)."""
        out = {}
        got: dict[bytes, bytes] = self.r.hgetall(keys.FEED_STATUS)  # type: ignore[assignment]
        for field, value in got.items():
            sku, _, channel = field.decode().partition(SEP)
            out[(sku, channel)] = value.decode().partition(SEP)[0]
        return out

    def publish(self, token: str, at_ms: int, judged: list[tuple[str, str, str, int]]) -> int:
        """Publish (SKU, channel, status, available) as judged at ``at_ms``: a transition for
        each status that differs from the last published. The number published; -1 when the
        lease is not ``token``'s (nothing is written)."""
        args: list[Any] = [token, at_ms, len(judged)]
        for row in judged:
            args += row
        ks = [keys.FEED_STATUS, keys.FEED_SEQ, keys.FEED, keys.FEED_LEASE, keys.FEED_COUNTS]
        return int(self._publish(keys=ks, args=args))

    # -- reading ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        return int(self.r.get(keys.FEED_SEQ) or 0)

    def after(self, seq: int, count: int = 1000, block_ms: int | None = None) -> list[Transition]:
        """Up to ``count`` transitions after ``seq``, in order; ``block_ms``: wait up to that
        long for one when there is none yet."""
        if block_ms is None:
            rows: Any = self.r.xrange(keys.FEED, min=f"({seq}-0", max="+", count=count)
        else:
            got: Any = self.r.xread({keys.FEED: f"{seq}-0"}, count=count, block=block_ms)
            rows = got[0][1] if got else []
        return [transition(eid, f) for eid, f in rows]


def transition(eid: bytes, f: dict[bytes, bytes]) -> Transition:
    return Transition(
        int(eid.split(b"-")[0]), f[b"sku"].decode(), f[b"channel"].decode(),
        f[b"status"].decode(), int(f[b"available"]), int(f[b"at"]),
    )  # fmt: skip
