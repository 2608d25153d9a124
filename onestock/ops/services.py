"""The work behind the commands, callable from tests and the benchmark without the CLI."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import msgspec

from onestock.domain import catalog as catalogs
from onestock.domain.errors import OnestockError
from onestock.domain.movements import movement_from_packed
from onestock.domain.protocol import INTERNAL
from onestock.domain.records import (
    RS,
    SEP,
    dead_from_entry,
    encode_record,
    iso_ms,
    packed_records,
    record_from_packed,
    return_from_packed,
)
from onestock.domain.settings import DEFAULT_SHARDS, Settings
from onestock.domain.sharding import shard_of
from onestock.domain.tally import Tally, Totals, aftersale, settle
from onestock.domain.types import (
    Catalog,
    FulfilmentRecord,
    MovementRecord,
    ReturnRecord,
    json_encoder,
)
from onestock.ops import availability
from state import keys
from state.outbox import Outbox
from state.server import embedded_url
from state.store import Store


def resolve_url(settings: Settings) -> str:
    """--redis-url / ONESTOCK_REDIS_URL, else the embedded server (started if needed)."""
    return settings.redis_url or embedded_url(settings.home)


def open_store(settings: Settings) -> Store:
    return Store.connect(resolve_url(settings))


def instance_id(store: Store) -> str:
    """A random id fixed by the first run against this Redis dataset (keys recovery state)."""
    store.r.set(keys.INSTANCE, uuid.uuid4().hex, nx=True)
    return store.r.get(keys.INSTANCE).decode()  # type: ignore[union-attr]


def load_catalog(store: Store, path: Path) -> Catalog:
    """Validate the whole file (and its merge with what is loaded) before the first write."""
    new = catalogs.read(path)
    _, old = store.catalog()
    merged = catalogs.validate(catalogs.merge(old, new), str(path))
    store.load_catalog(merged, [s.sku for s in new.skus])
    return merged


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    for line in stream:
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line


def fix_shards(store: Store, wanted: int | None, default: int = DEFAULT_SHARDS) -> int:
    """K: the count already stored, else ``wanted`` (or ``default``) becomes it. An explicit
    ``wanted`` that differs from the stored count is an error."""
    if wanted is not None:
        return store.shards.shard_count(wanted)
    try:
        return store.shards.shard_count()
    except OnestockError:
        return store.shards.shard_count(default)


def push(
    store: Store, lines: Iterable[bytes], shards: int | None = None, default: int = DEFAULT_SHARDS
) -> int:
    k = fix_shards(store, shards, default)
    return store.shards.push((shard_of(raw, k), raw) for raw in lines)


def records(store: Store, shards: int) -> Iterator[FulfilmentRecord]:
    """Every order's latest record (its greatest version: a payment, an expiry or a
    cancellation replaces the ones before), one per order id, in decision order."""
    final: dict[str, FulfilmentRecord] = {}
    for fields in store.shards.entries(keys.outbox, shards):
        for packed in packed_records(fields):
            rec = record_from_packed(packed)
            was = final.get(rec.order_id)
            if was is None or rec.version >= was.version:
                final[rec.order_id] = rec
    yield from final.values()


def write_records(store: Store, shards: int, out: IO[bytes]) -> int:
    n = 0
    for rec in records(store, shards):
        out.write(encode_record(rec) + b"\n")
        n += 1
    return n


def last_record_ids(store: Store, shards: int) -> list[str]:
    """Each output stream's newest entry id ("0-0" for an empty one)."""
    return Outbox(store.r, shards).last_ids()


def mark_exported(store: Store, last: list[str]) -> None:
    """The records up to ``last[shard]`` are in a file: where no consumer group or record
    subscriber reads them, the dataflow may trim them (docs/memory.md)."""
    store.ledger.mark_exported(last)


def write_deadletters(store: Store, shards: int, out: IO[bytes]) -> int:
    n = 0
    for fields in store.shards.entries(keys.deadbox, shards):
        out.write(json_encoder.encode(dead_from_entry(fields)) + b"\n")
        n += 1
    return n


def returns(store: Store, shards: int) -> Iterator[ReturnRecord]:
    """Every accepted return, once each, in decision order."""
    for fields in store.shards.entries(keys.returns, shards):
        for packed in packed_records(fields):
            yield return_from_packed(packed)


def write_jsonl(records: Iterable[msgspec.Struct], out: IO[bytes]) -> int:
    """Each record as one line of JSON; how many."""
    n = 0
    for rec in records:
        out.write(json_encoder.encode(rec) + b"\n")
        n += 1
    return n


def write_returns(store: Store, shards: int, out: IO[bytes]) -> int:
    return write_jsonl(returns(store, shards), out)


def movements(store: Store, shards: int) -> Iterator[MovementRecord]:
    """Every movement record, one per movement id, in decision order."""
    for fields in store.shards.entries(keys.movements, shards):
        for packed in packed_records(fields):
            yield movement_from_packed(packed)


def write_movements(store: Store, shards: int, out: IO[bytes]) -> int:
    return write_jsonl(movements(store, shards), out)


class Alert(msgspec.Struct):
    sku: str
    remaining: int
    reason: str  # low_stock, sold_out or back_in_stock: the SKU's new alert level
    time: str


def write_alerts(store: Store, out: IO[bytes]) -> int:
    """Every stock alert of the catalog's SKUs (one per change of a SKU's alert level: see
    settle_alert in state/lua/lib_stock.lua), oldest first, as JSON Lines."""
    _, cat = store.catalog()
    n = 0
    skus = [s.sku for s in cat.skus] if cat else []
    for f in store.shards.merged([keys.alerts(sku) for sku in skus]):
        alert = Alert(
            f[b"sku"].decode(), int(f[b"remaining"]), f[b"reason"].decode(), iso_ms(int(f[b"at"]))
        )
        out.write(json_encoder.encode(alert) + b"\n")
        n += 1
    return n


class LockView(msgspec.Struct):
    qty: int  # units the lock holds for its channel
    used: int  # units the channel drew from it so far
    left: int  # units it still holds at the time of the view (0 once dissolved)
    until: str


class StockView(msgspec.Struct):
    total: int
    locations: dict[str, int]
    available: dict[str, int]
    locks: dict[str, LockView] = {}


def stock_view(
    store: Store, sku: str | None = None, at_ms: int | None = None, cat: Catalog | None = None
) -> dict[str, StockView]:
    """Per SKU: units per location, total, what each channel can still sell at ``at_ms``
    (default now), and its channel locks (``cat``: the loaded catalog, if already read)."""
    if cat is None:
        _, cat = store.catalog()
    if cat is None:
        raise OnestockError("no catalog loaded: run `onestock catalog load PATH` first")
    names = [s.sku for s in cat.skus]
    if sku is not None:
        if sku not in names:
            raise OnestockError(f"unknown SKU {sku!r}")
        names = [sku]
    at = int(time.time() * 1000) if at_ms is None else at_ms
    # what each channel can sell: the read side's own arithmetic (onestock/ops/availability.py)
    model = availability.Model(0, cat)
    stocks = availability.read_stocks(store, model, names, levels=True)
    view = {}
    for name in names:
        st = stocks.get(name) or availability.Stock(0, 0, [], {})
        lock_view = {
            lk.channel: LockView(lk.qty, lk.used, lk.left(at), iso_ms(lk.until_ms))
            for lk in st.locks
        }
        available = availability.channel_available(st, at, model.channels)
        view[name] = StockView(sum(st.levels.values()), st.levels, available, lock_view)
    return view


class Winner(msgspec.Struct):
    order_id: str
    rank: int
    paid_at: str
    location: str  # where the gift unit ships from
    late: bool


class CampaignView(msgspec.Struct):
    campaign: str
    sku: str
    gift_sku: str
    first_n: int
    settled: int  # ranks given so far (winners and the rest)
    pending: int  # accepted orders waiting for their rank
    ended_early_at: int | None  # the rank at which the gift stock ran out
    late: int  # settled ranks of orders later than the lateness bound
    winners: list[Winner]


def gifts(store: Store, campaign: str) -> CampaignView:
    """A campaign's winners in rank order: what the seller publishes."""
    _, cat = store.catalog()
    camp = next((c for c in (cat.campaigns if cat else []) if c.id == campaign), None)
    if camp is None:
        raise OnestockError(f"unknown campaign {campaign!r}")
    winners: list[Winner] = []
    late_ranks = 0
    for fields in store.shards.merged([keys.ranks(camp.sku)]):
        for entry in fields[b"v"].decode().split(RS):
            camp_id, oid, rank, loc, late, paid = entry.split(SEP)
            if camp_id != campaign:
                continue
            late_ranks += late == "1"
            if loc and not loc.startswith(INTERNAL):  # a location, not a marker (keys.GIFT_*)
                winners.append(Winner(oid, int(rank), iso_ms(int(paid)), loc, late == "1"))
    winners.sort(key=lambda w: w.rank)
    progress = store.r.hgetall(keys.campaigns(camp.sku))
    ended = progress.get(f"{campaign}:ended".encode())
    prefix = f"{campaign}{SEP}".encode()
    members: list[bytes] = store.r.zrange(keys.candidates(camp.sku), 0, -1)  # type: ignore[assignment]
    pending = sum(1 for m in members if m.startswith(prefix))
    return CampaignView(
        campaign, camp.sku, camp.gift_sku, camp.first_n,
        int(progress.get(f"{campaign}:ranks".encode(), 0)), pending,
        int(ended) if ended is not None else None, late_ranks, winners,
    )  # fmt: skip


class Audit(msgspec.Struct):
    """What a finished run adds up to; ``oversold`` must be 0."""

    records: int
    accepted: int
    rejected: Counter[str]
    dead: int
    duplicates: int
    oversold: int  # units below zero, or missing between loaded - shipped and current stock
    latencies_ms: list[int]
    first_decided_ms: int
    last_decided_ms: int
    gifts: int = 0


def _oversold(
    loaded: dict[str, dict[str, int]],
    shipped: Counter[tuple[str, str]],
    now: dict[str, dict[str, int]],
) -> int:
    """Units below zero, or missing between loaded - shipped and the stock ``now``."""
    oversold = 0
    for sku, locs in loaded.items():
        for loc in set(locs) | set(now.get(sku, {})):
            expect = locs.get(loc, 0) - shipped[(sku, loc)]
            have = now.get(sku, {}).get(loc, 0)
            oversold += max(0, -have) + abs(expect - have)
    return oversold


def audit(store: Store, shards: int, loaded: dict[str, dict[str, int]]) -> Audit:
    """Re-add every record against the loaded stock: conservation and one record per order
    (onestock/domain/tally.py folds the versions; of a trimmed stream, state/ledger.py
    keeps the fold: latencies are those of the records still in the streams)."""
    totals = Totals()
    back, offs = aftersale(returns(store, shards), movements(store, shards), totals)
    n = dup = 0
    first, last = 2**63, 0
    lat: list[int] = []
    with store.ledger.holding(f"audit-{os.getpid()}-{uuid.uuid4().hex[:8]}"):
        snaps = [store.ledger.snapshot(shard) for shard in range(shards)]
    for snap in snaps:
        tally = Tally(snap.orders)
        for packed in snap.rest:
            tally.add(packed)
        settle(tally.orders.values(), back, offs, totals)
        totals.add(snap.totals)
        n, dup, lat = n + snap.n + tally.n, dup + snap.dup + tally.dup, lat + tally.lat
        first, last = min(first, snap.first, tally.first), max(last, snap.last, tally.last)
    _, cat = store.catalog()  # a SKU split into buckets is counted over all of them
    now = store.skus.stock_levels(loaded, {s.sku: s.buckets for s in cat.skus} if cat else None)
    oversold = _oversold(loaded, totals.shipped, now)
    dead = store.shards.outcome_counts(shards)[1]
    return Audit(
        n, totals.accepted, totals.rejected, dead, dup, oversold, lat, first, last, totals.gifts
    )
