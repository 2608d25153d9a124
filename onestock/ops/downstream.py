"""Fulfilment records delivered downstream (docs/downstream.md): ``onestock fulfilments
--follow``, every record (every version) as JSON Lines as it is written, and which records a
location's reader sees (shared with the records' webhooks, ``onestock/ops/deliver.py``).

- Plain (no ``--group``): each shard's output stream read from now on (or after ``--from``),
  nothing acknowledged: a reader that stops and starts again misses what came meanwhile
  unless it says where to go on from.
- ``--group G``: a Redis consumer group on every shard's stream (``state.outbox``). Each
  entry (one decided batch) goes to one consumer of the group; its records are written and
  flushed before the entry is acknowledged, so a consumer killed at any point leaves the
  entries it had not acknowledged pending: at least once. Started again under the same
  ``--consumer`` name it first writes its own pending entries again; any consumer of the
  group claims the entries pending with another for longer than ``claim_idle_ms`` (a
  crashed consumer under another name, e.g. the default hostname-pid).
- ``--location L``: only the records with a shipment (or a gift unit) at one of the given
  locations; the others are acknowledged unwritten. A cancelled or expired record lists the
  shipments it gave back, so the location that was to ship them sees it; a rejected record
  ships from nowhere and is seen by no location.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from onestock.domain.errors import OnestockError
from onestock.domain.records import encode_record, packed_records, record_from_packed
from onestock.domain.types import FulfilmentRecord
from state.outbox import START, Entry, Outbox
from state.outbox import trim_points as outbox_trim_points
from state.store import Store

ENTRY_ID = re.compile(r"\d+(-\d+)?")
FROM_START, FROM_NOW = "start", "now"


@dataclass(frozen=True)
class Follow:
    """How ``onestock fulfilments --follow`` reads (the CLI's options)."""

    group: str | None = None  # a consumer group: acknowledged, resumable; None: plain reads
    consumer: str | None = None  # this consumer's name in the group (default hostname-pid)
    locations: frozenset[str] = frozenset()  # only records at these locations (none: all)
    start: str | None = None  # "start", "now" or an entry id (default: now; a new group: start)
    claim_idle_ms: int = 30_000  # another consumer's entries pending this long are taken over
    count: int = 100  # entries read per stream and round
    poll_s: float = 0.05  # a round that found nothing waits this long

    def __post_init__(self) -> None:
        if self.start is not None and self.start not in (FROM_START, FROM_NOW):
            if not ENTRY_ID.fullmatch(self.start):
                raise OnestockError(f"--from: want start, now or an entry id, not {self.start!r}")
        if self.consumer is not None and self.group is None:
            raise OnestockError("--consumer goes with --group")
        for name, value in (("--group", self.group), ("--consumer", self.consumer)):
            if value is not None and (not value or not value.isprintable() or " " in value):
                raise OnestockError(f"{name}: want a name without spaces, not {value!r}")


def locations_of(rec: FulfilmentRecord) -> set[str]:
    """Where a record ships from: its shipments' locations and its gift unit's."""
    out = {s.location for s in rec.shipments}
    if rec.gift is not None:
        out.add(rec.gift.location)
    return out


def at(rec: FulfilmentRecord, locations: frozenset[str]) -> bool:
    """Whether a reader of ``locations`` (none: every record) sees ``rec``."""
    return not locations or not locations.isdisjoint(locations_of(rec))


def records_of(entry: dict[bytes, bytes]) -> list[FulfilmentRecord]:
    """The records of one output stream entry, in order (none for a deleted entry)."""
    return [record_from_packed(p) for p in packed_records(entry) if p] if entry else []


def write_entries(entries: Iterable[Entry], out: IO[bytes], locations: frozenset[str]) -> int:
    """Each entry's records kept by ``locations`` as JSON Lines, then flushed; how many."""
    n = 0
    for e in entries:
        for rec in records_of(e.fields):
            if at(rec, locations):
                out.write(encode_record(rec) + b"\n")
                n += 1
    out.flush()
    return n


def wait_for_shards(store: Store, stop: Callable[[], bool], poll_s: float = 0.5) -> int:
    """K, once the first push fixed it (0 when stopped before)."""
    while not stop():
        try:
            return store.shards.shard_count()
        except OnestockError:
            time.sleep(poll_s)
    return 0


def follow(
    store: Store,
    out: IO[bytes],
    opts: Follow,
    stop: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] = lambda _m: None,
) -> int:
    """Write records as JSON Lines as they are written, until ``stop()``; how many."""
    k = wait_for_shards(store, stop)
    if k == 0:
        return 0
    box = Outbox(store.r, k)
    if opts.group is None:
        return _plain(box, out, opts, stop)
    return _grouped(box, out, opts, stop, say)


def _start_ids(box: Outbox, start: str, now: str) -> list[str]:
    if start == FROM_START:
        return [START] * box.k
    if start == FROM_NOW:
        return box.last_ids() if now == "" else [now] * box.k
    return [start] * box.k


def _plain(box: Outbox, out: IO[bytes], opts: Follow, stop: Callable[[], bool]) -> int:
    """Without a group: every stream read after its start, nothing acknowledged."""
    after = _start_ids(box, opts.start or FROM_NOW, "")
    n = 0
    while not stop():
        got = box.read(after, opts.count)
        n += write_entries(got, out, opts.locations)
        for e in got:
            after[e.shard] = e.id
        if not got:
            time.sleep(opts.poll_s)
    return n


def _grouped(
    box: Outbox, out: IO[bytes], opts: Follow, stop: Callable[[], bool], say: Callable[[str], None]
) -> int:
    """In a consumer group: this consumer's own pending entries first, then, round after
    round, the entries idle with another consumer and the new ones; each round's records
    written and flushed before its entries are acknowledged."""
    assert opts.group is not None
    group = opts.group
    consumer = opts.consumer or f"{socket.gethostname()}-{os.getpid()}"
    made = box.create_group(group, _start_ids(box, opts.start or FROM_START, "$"))
    if any(made):
        say(f"consumer group {group!r} created on {sum(made)} of {box.k} shards")
    elif opts.start is not None:
        say(f"consumer group {group!r} exists: --from {opts.start} is not used")
    n = 0

    def handle(got: list[Entry]) -> None:
        nonlocal n
        n += write_entries(got, out, opts.locations)
        box.ack(group, ((e.shard, e.id) for e in got))  # (only once written: at least once)

    ids = dict.fromkeys(range(box.k), START)  # this consumer's own pending entries first
    while ids and not stop():
        got = box.read_group(group, consumer, ids, opts.count)
        handle(got)
        ids = {e.shard: e.id for e in got}  # (a shard with none left is done)
    next_claim = 0.0
    while not stop():
        got = []
        if time.monotonic() >= next_claim:  # a crashed consumer's entries, once idle
            got = box.claim(group, consumer, opts.claim_idle_ms, opts.count)
            handle(got)
            box.forget_idle(group, max(opts.claim_idle_ms, 60_000))
            next_claim = time.monotonic() + min(1.0, opts.claim_idle_ms / 4000)
        fresh = box.read_group(group, consumer, dict.fromkeys(range(box.k), ">"), opts.count)
        handle(fresh)
        if not got and not fresh:
            time.sleep(opts.poll_s)
    return n


def trim_points(store: Store) -> list[str | None]:
    """Per shard, the entry id below which every consumer group has acknowledged every
    entry and every record subscriber of the catalog is done (None: nothing reads the
    stream): ``state.outbox.trim_points``; the dataflow trims there (state/ledger.py)."""
    try:
        k = store.shards.shard_count()
    except OnestockError:
        return []
    _, cat = store.catalog()
    return outbox_trim_points(store.r, k, [s.id for s in cat.record_subscribers] if cat else [])
