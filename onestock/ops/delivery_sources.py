"""What the webhook deliverer (``onestock/ops/deliver.py``) delivers: two sources of one
machinery. A source names its subscribers in the catalog, the streams each reads, how a
stream entry becomes items (each with its place in its stream, the key whose items arrive
in order, a webhook-id stable across retries and restarts, and the body), and how a place
is written as progress.

- ``FeedSource``: the availability change feed (``keys.FEED``, one stream): each transition
  of a subscriber's channels; in order per (SKU, channel); webhook-id ``msg_<instance>_<seq>``.
- ``RecordSource``: the fulfilment records (``keys.outbox``, one stream per shard): each
  record (every version) a record subscriber's locations see (``downstream.at``); in order
  per order id (an order id's records are all on its shard's stream, in order); webhook-id
  ``msg_<instance>_r<shard>_<entry id>_<index>`` (a record version is written once, at one
  place, so the id is stable per (order id, version)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from onestock.domain.protocol import SEP
from onestock.domain.records import encode_record, packed_records, record_from_packed
from onestock.domain.types import Catalog
from onestock.ops import deliveries, downstream
from onestock.ops.feed import transition_json
from state import keys
from state.conn import parse_id
from state.feed import transition

MAX_SEQ = 2**64 - 1  # the greatest sequence part of a stream entry id


class Item(NamedTuple):
    """One thing to deliver."""

    pos: Any  # its place in its stream (ordered): a seq, or (ms, seq, index)
    key: bytes  # the items of one key arrive in order (they share a lane)
    msg_id: str  # webhook-id: the same on every try, and after a restart
    body: bytes  # the JSON POSTed
    where: dict[str, Any]  # what names it in a given-up entry and in the last error


class Source:
    """The base: what differs between sources (the machinery is ``deliver.py``'s)."""

    name = ""  # in messages and in ``Deliverer.runs``
    body_name = ""  # the body's field in a given-up entry
    ks: deliveries.DeliveryKeys
    per_entry = 1  # about how many items an entry holds (reads are sized by it)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # "msg_<instance>_": ids stay unique if the dataset starts again

    def subscribers(self, cat: Catalog) -> Sequence[Any]:
        raise NotImplementedError

    def wanted(self, sub: Any) -> frozenset[str]:
        """What of the source a subscriber takes (its channels, its locations)."""
        raise NotImplementedError

    async def streams(self, r: Any) -> list[str]:
        """The stream keys to read (none yet: no subscription starts)."""
        raise NotImplementedError

    def field(self, sub_id: str, i: int) -> str:
        """The progress hash field of a subscriber's ``i``-th stream."""
        raise NotImplementedError

    def start(self, stored: bytes | None) -> Any:
        """The place stored as progress (None: before the first item)."""
        raise NotImplementedError

    def dump(self, pos: Any) -> str:
        raise NotImplementedError

    def resume(self, pos: Any) -> str:
        """The entry id to read after, to go on after ``pos``."""
        raise NotImplementedError

    def before(self, pos: Any) -> Any:
        """The place just before ``pos``: the progress while ``pos`` is not done."""
        raise NotImplementedError

    def items(self, wanted: frozenset[str], i: int, eid: bytes, f: Any) -> tuple[Any, list[Item]]:
        """An entry of the ``i``-th stream: its last place, and the items ``wanted`` takes."""
        raise NotImplementedError

    async def last(self, r: Any, key: str) -> Any | None:
        """The place of a stream's last item (None: empty)."""
        raise NotImplementedError

    async def trim(self, r: Any, keep: int, subs: list[str]) -> None:
        """Trim what every subscriber of ``subs`` is past, if the source does."""


class FeedSource(Source):
    name, body_name = "feed", "transition"
    ks = deliveries.FEED

    def subscribers(self, cat: Catalog) -> Sequence[Any]:
        return cat.subscribers

    def wanted(self, sub: Any) -> frozenset[str]:
        return frozenset(sub.channels)

    async def streams(self, r: Any) -> list[str]:
        return [keys.FEED]

    def field(self, sub_id: str, i: int) -> str:
        return sub_id

    def start(self, stored: bytes | None) -> int:
        return int(stored or 0)

    def dump(self, pos: int) -> str:
        return str(pos)

    def resume(self, pos: int) -> str:
        return f"{pos}-0"

    def before(self, pos: int) -> int:
        return pos - 1

    def items(self, wanted: frozenset[str], i: int, eid: bytes, f: Any) -> tuple[int, list[Item]]:
        t = transition(eid, f)
        if t.channel not in wanted:
            return t.seq, []
        key = f"{t.sku}{SEP}{t.channel}".encode()
        return t.seq, [
            Item(t.seq, key, f"{self.prefix}{t.seq}", transition_json(t), {"seq": t.seq})
        ]

    async def last(self, r: Any, key: str) -> int:
        return int(await r.get(keys.FEED_SEQ) or 0)

    async def trim(self, r: Any, keep: int, subs: list[str]) -> None:
        """Up to the least progress, keeping the last ``keep`` transitions."""
        done = await r.hmget(self.ks.progress, subs) if subs else []
        cut = min([int(await r.get(keys.FEED_SEQ) or 0) - keep, *(int(v or 0) for v in done)])
        if cut > 0:
            await r.xtrim(keys.FEED, minid=f"{cut + 1}-0", approximate=False)


Place = tuple[int, int, int]  # a record's: its entry id (ms, seq), its index in the entry


class RecordSource(Source):
    name, body_name = "records", "record"
    ks = deliveries.RECORDS
    per_entry = 50  # (a decided batch's records: up to state.shards.EMIT_RECORDS, 250)

    def subscribers(self, cat: Catalog) -> Sequence[Any]:
        return cat.record_subscribers

    def wanted(self, sub: Any) -> frozenset[str]:
        return frozenset(sub.locations)

    async def streams(self, r: Any) -> list[str]:
        return [keys.outbox(s) for s in range(int(await r.get(keys.SHARDS) or 0))]

    def field(self, sub_id: str, i: int) -> str:
        return f"{sub_id}{SEP}{i}"

    def start(self, stored: bytes | None) -> Place:
        if not stored:
            return (0, 0, -1)
        eid, _, index = stored.decode().rpartition(":")
        return (*parse_id(eid), int(index))

    def dump(self, pos: Place) -> str:
        return f"{pos[0]}-{pos[1]}:{pos[2]}"

    def resume(self, pos: Place) -> str:
        """The id before ``pos``'s entry: the entry is read again (its items up to ``pos``
        are skipped), as an entry may be done only in part."""
        ms, seq, _ = pos
        if seq > 0:
            return f"{ms}-{seq - 1}"
        return f"{ms - 1}-{MAX_SEQ}" if ms > 0 else "0-0"

    def before(self, pos: Place) -> Place:
        return (pos[0], pos[1], pos[2] - 1)

    def items(self, wanted: frozenset[str], i: int, eid: bytes, f: Any) -> tuple[Place, list[Item]]:
        e = eid.decode()
        ms, seq = parse_id(e)
        packed = packed_records(f) if f else []
        out = []
        for n, p in enumerate(packed):
            rec = record_from_packed(p) if p else None
            if rec is not None and downstream.at(rec, wanted):
                msg_id = f"{self.prefix}r{i}_{e}_{n}"
                where = {"shard": i, "entry": e, "index": n}
                out.append(
                    Item((ms, seq, n), rec.order_id.encode(), msg_id, encode_record(rec), where)
                )
        return (ms, seq, len(packed) - 1), out

    async def last(self, r: Any, key: str) -> Place | None:
        rows = await r.xrevrange(key, "+", "-", count=1)
        if not rows:
            return None
        return (*parse_id(rows[0][0].decode()), len(packed_records(rows[0][1])) - 1)
