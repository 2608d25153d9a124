"""What ops read of the webhook deliveries (``onestock deliveries``, the metrics): each
subscriber's progress, lag and counts, and the transitions given up (kept)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from state import keys
from state.store import Store

OUTCOMES = ("delivered", "retried", "given_up")  # the counts kept per subscriber


class SubscriberState(msgspec.Struct):
    """One subscriber's deliveries (``onestock deliveries``)."""

    id: str
    url: str
    channels: list[str]
    progress: int  # every transition up to this seq is delivered or given up
    lag: int  # the feed's last seq - progress
    delivered: int
    retried: int  # tries after a failed one
    retrying: int  # transitions being retried now
    given_up: int  # kept in keys.FEED_UNDELIVERED
    last_error: str | None


class DeliveriesView(msgspec.Struct):
    delivering: bool  # a deliverer holds the lease
    last_seq: int
    subscribers: list[SubscriberState]


def view(store: Store) -> DeliveriesView:
    """Every subscriber of the loaded catalog, with its progress, lag and counts."""
    _, cat = store.catalog()
    pipe = store.r.pipeline(transaction=False)
    pipe.exists(keys.FEED_DELIVERY_LEASE)
    pipe.get(keys.FEED_SEQ)
    for key in (keys.FEED_DELIVERED, keys.FEED_DELIVERY_COUNTS, keys.FEED_RETRYING):
        pipe.hgetall(key)
    pipe.hgetall(keys.FEED_DELIVERY_ERROR)
    leased, last, done, counts, retrying, errors = pipe.execute()
    last = int(last or 0)
    out = []
    for sub in cat.subscribers if cat else []:
        sid = sub.id.encode()
        n = {o: int(counts.get(sid + b":" + o.encode(), 0)) for o in OUTCOMES}
        progress = int(done.get(sid, 0))
        error = errors.get(sid)
        state = SubscriberState(
            id=sub.id, url=sub.url, channels=list(sub.channels), progress=progress,
            lag=max(0, last - progress), retrying=int(retrying.get(sid, 0)),
            last_error=error.decode() if error else None, **n,
        )  # fmt: skip
        out.append(state)
    return DeliveriesView(bool(leased), last, out)


def undelivered(store: Store, chunk: int = 1000) -> Iterator[bytes]:
    """The transitions given up, oldest first, each the JSON ``{"subscriber", "seq",
    "transition", "attempts", "error", "given_up_at"}``."""
    after = "-"
    while True:
        rows: Any = store.r.xrange(keys.FEED_UNDELIVERED, min=after, max="+", count=chunk)
        for _, f in rows:
            yield f[b"entry"]
        if len(rows) < chunk:
            return
        after = "(" + rows[-1][0].decode()
