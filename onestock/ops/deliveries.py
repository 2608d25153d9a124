"""What ops read of the webhook deliveries (``onestock deliveries``, the metrics): each
subscriber's progress, lag and counts, and what was given up (kept); the keys of each
source's deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from onestock.domain.protocol import SEP
from onestock.domain.types import RecordSubscriber
from state import keys
from state.conn import parse_id
from state.store import Store

OUTCOMES = ("delivered", "retried", "given_up")  # the counts kept per subscriber


class DeliveryKeys(NamedTuple):
    """The keys of one source's deliveries (``delivery_commit.lua``'s KEYS, in order)."""

    lease: str  # the deliverer's (one for every source)
    progress: str  # HASH progress field -> delivered or given up up to there
    counts: str  # HASH "<subscriber>:<outcome>" -> count
    retrying: str  # HASH subscriber -> items being retried now
    error: str  # HASH subscriber -> its last failed attempt
    undelivered: str  # STREAM of the items given up (kept)


FEED = DeliveryKeys(
    keys.FEED_DELIVERY_LEASE, keys.FEED_DELIVERED, keys.FEED_DELIVERY_COUNTS,
    keys.FEED_RETRYING, keys.FEED_DELIVERY_ERROR, keys.FEED_UNDELIVERED,
)  # fmt: skip
RECORDS = DeliveryKeys(
    keys.FEED_DELIVERY_LEASE, keys.RECORD_DELIVERED, keys.RECORD_DELIVERY_COUNTS,
    keys.RECORD_RETRYING, keys.RECORD_DELIVERY_ERROR, keys.RECORD_UNDELIVERED,
)  # fmt: skip


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


class RecordSubscriberState(msgspec.Struct):
    """One record subscriber's deliveries (``onestock deliveries``)."""

    id: str
    url: str
    locations: list[str]  # none: every record
    progress: dict[str, str]  # shard -> "<entry id>:<index>" every record is done up to
    lag_ms: int  # how long ago the oldest record not yet done was written (0: caught up)
    delivered: int
    retried: int  # tries after a failed one
    retrying: int  # records being retried now
    given_up: int  # kept in keys.RECORD_UNDELIVERED
    last_error: str | None


class DeliveriesView(msgspec.Struct):
    delivering: bool  # a deliverer holds the lease
    last_seq: int
    subscribers: list[SubscriberState]
    record_subscribers: list[RecordSubscriberState] = []


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
    rsubs = cat.record_subscribers if cat else []
    return DeliveriesView(bool(leased), last, out, [_record_state(store, s) for s in rsubs])


def _record_state(store: Store, sub: RecordSubscriber) -> RecordSubscriberState:
    """A record subscriber's progress per shard, lag and counts."""
    k = int(store.r.get(keys.SHARDS) or 0)
    pipe = store.r.pipeline(transaction=False)
    pipe.hmget(RECORDS.counts, [f"{sub.id}:{o}" for o in OUTCOMES])
    pipe.hget(RECORDS.retrying, sub.id)
    pipe.hget(RECORDS.error, sub.id)
    for s in range(k):
        pipe.hget(RECORDS.progress, f"{sub.id}{SEP}{s}")
    counts, retrying, error, *stored = pipe.execute()
    progress = {str(s): v.decode() for s, v in enumerate(stored) if v}
    pipe = store.r.pipeline(transaction=False)
    pipe.time()
    for s in range(k):  # the entry of the progress, and the one after it
        eid = progress.get(str(s), "").rpartition(":")[0]
        pipe.xrange(keys.outbox(s), min=eid or "-", max="+", count=2)
    now, *heads = pipe.execute()
    oldest = [_first_undone(progress.get(str(s)), rows) for s, rows in enumerate(heads)]
    now_ms = now[0] * 1000 + now[1] // 1000
    lag = max((now_ms - ms for ms in oldest if ms is not None), default=0)
    return RecordSubscriberState(
        id=sub.id, url=sub.url, locations=list(sub.locations), progress=progress,
        lag_ms=max(0, lag), retrying=int(retrying or 0),
        last_error=error.decode() if error else None,
        **{o: int(n or 0) for o, n in zip(OUTCOMES, counts, strict=True)},
    )  # fmt: skip


def _first_undone(progress: str | None, rows: list[Any]) -> int | None:
    """The time (ms) of the entry of a shard's first record not yet done (None: all are),
    from the entry of the progress and the one after it."""
    if not rows:
        return None
    eid, _, index = (progress or "").rpartition(":")
    first_id, f = rows[0]
    if progress is None or first_id.decode() != eid:
        return parse_id(first_id.decode())[0]
    if int(index) < int(f.get(b"n", 0)) - 1:  # the entry is done in part
        return parse_id(eid)[0]
    return parse_id(rows[1][0].decode())[0] if len(rows) > 1 else None


def undelivered(store: Store, chunk: int = 1000) -> Iterator[bytes]:
    """What was given up, oldest first per source: the transitions, each the JSON
    ``{"subscriber", "seq", "transition", "attempts", "error", "given_up_at"}``, then the
    records, each ``{"subscriber", "shard", "entry", "index", "record", "attempts", "error",
    "given_up_at"}``."""
    for key in (FEED.undelivered, RECORDS.undelivered):
        after = "-"
        while True:
            rows: Any = store.r.xrange(key, min=after, max="+", count=chunk)
            for _, f in rows:
                yield f[b"entry"]
            if len(rows) < chunk:
                break
            after = "(" + rows[-1][0].decode()
