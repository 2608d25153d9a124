"""``onestock bench-memory``: Redis memory per day over several days, time compressed for real.

A day is ``--day-s`` seconds of real time, and the idempotency window is one such day: the
dataflow runs with ``ONESTOCK_IDEMPOTENCY_DAYS`` = day_s / 86400 and ``ONESTOCK_MAX_FUTURE_S``
= 1 (the window must be at least twice that). Why real time, not entry ids in the past: the
idempotency state lives in generations of the stream clock, one window long (state/gens.py,
a generation is an entry id's ms // the window), and a dataflow process deletes every
generation up to two before the horizon's, the least over shards of the first unread entry's
time, or the server's TIME once a shard has read everything (horizon.lua): a caught-up shard
makes every past entry look ancient. So the bench lives in the present, and a generation is
deleted once every shard has read two windows past it.

Days are aligned to generations: day 1 starts at the first multiple of day_s s (epoch) after
now, day d at day_s s after day d - 1 (the bench sleeps until then). Per day: its N orders
pushed as any client does (``Shards.push``: XADD *, real entry ids), each paid when pushed;
the dataflow run until drained (one scratch Redis and one dataflow home for every day:
recovery carries on from day to day, as in production); every order checked to have ended
once, and none a dead letter; then ``INFO memory``, every key's ``MEMORY USAGE`` (exact:
SAMPLES 0) grouped by key family (``state.replay.family_of``), and the generations held.
The deletion happens while a dataflow runs, so each day's drain deletes what the window no
longer needs: after day d's drain Redis holds days d - 1 and d. A day whose push and drain
overrun the next day's start makes it start late (said, and recorded as ``late_s``).

Every order is accepted: the demo catalog with 1000 x its stock, and a per-customer limit of
1000 units on every SKU (so the units each customer bought are kept, as with real limits);
order and customer ids are unique per day ("d<day>-...").

A downstream system reads the records: a consumer group (``GROUP``) on every output stream,
created before day 1; after each day's drain it acknowledges everything and the dataflow
starts once more (it exits at once, drained, after one housekeeping look,
``dataflows.housekeeping``, as the running dataflow's next look would): the acknowledged
records are folded and trimmed, orders no version can come for any more settled
(state/ledger.py). The look runs in a dataflow process because its generations are those
of the dataflow's window.

Day 1 holds one day of state only: the steady state, and the flatness ratios (max / min), are
over days 2..D.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import msgspec
import orjson
from rich.console import Console
from rich.table import Table

from onestock import burst, harness
from onestock.bench.measure import check_outcomes
from onestock.domain.settings import DEFAULT_SHARDS
from onestock.domain.sharding import shard_of_id
from onestock.domain.types import Catalog
from state import keys, replay
from state.outbox import Outbox
from state.store import Store

DAY_S = 86_400  # a real day, seconds (ONESTOCK_IDEMPOTENCY_DAYS counts them)
MAX_FUTURE_S = 1  # the dataflow's ONESTOCK_MAX_FUTURE_S: a window of day_s >= 2 s fits it
STOCK_SCALE = 1000  # x the demo stock: no order of the bench sells out
LIMIT = 1000  # units per customer and SKU: never reached, but the counts are kept
GROUP = "bench-downstream"  # the consumer group that reads every record
TOP = 10  # families shown in the table (the JSON has them all, every day)


class FamilyUse(msgspec.Struct):
    family: str
    keys: int
    bytes: int


class Day(msgspec.Struct):
    day: int
    start_ms: int  # when the day was due to start (a generation's start)
    late_s: float  # how late its push began (the day before's push + drain overran it)
    orders: int  # pushed this day
    orders_total: int  # pushed so far
    records: int  # fulfilment records written so far (one per order)
    dead_letters: int  # so far (0: the bench has no garbage, no stale order)
    push_s: float  # pushing the day's orders
    drain_s: float  # the dataflow's start to exit, this day
    ack_s: float  # the consumer acknowledging the day's records, and the housekeeping look
    used_memory: int  # bytes, INFO memory
    used_memory_dataset: int
    bytes_per_order: float  # used_memory / the day's orders
    growth_per_order: float  # (used_memory - the day before's) / the day's orders
    generations: dict[int, int]  # generation held after the drain -> its keys
    families: list[FamilyUse]


class Figures(msgspec.Struct):
    days: int
    orders_per_day: int
    day_s: int  # a day, and the idempotency window, in seconds of real time
    workers: int
    samples: int  # MEMORY USAGE SAMPLES (0: exact)
    start_ms: int  # day d is due at start_ms + (d - 1) x day_s s; its generation: // day_s s
    rows: list[Day]
    # max / min over days 2..D (None with one day): flat within 10% is <= 1.10
    used_memory_ratio: float | None
    dataset_ratio: float | None
    bytes_per_order_ratio: float | None
    # the keys' bytes but the output streams' (trimmed once acknowledged and folded)
    without_outbox_ratio: float | None


def replay_catalog() -> Catalog:
    """The demo catalog, every order accepted: 1000 x the stock, a generous per-customer
    limit on every SKU (``LIMIT``)."""
    cat = burst.demo_catalog()
    for sku in cat.skus:
        sku.stock = {loc: q * STOCK_SCALE for loc, q in sku.stock.items()}
        sku.per_customer_limit = LIMIT
    return cat


def first_start_ms(day_s: int, now_ms: int | None = None) -> int:
    """Day 1's start: the first multiple of ``day_s`` seconds (epoch) after now, so that
    every day is one generation of the idempotency state."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return (now // (day_s * 1000) + 1) * day_s * 1000


def idempotency_days(day_s: int) -> str:
    """ONESTOCK_IDEMPOTENCY_DAYS for a window of exactly ``day_s`` seconds: the dataflow
    takes int(days x 86,400,000) ms, and day_s / 86400 may round a hair below it."""
    want = day_s * 1000
    days = day_s / DAY_S
    while int(days * 86_400_000) < want:
        days = math.nextafter(days, math.inf)
    text = repr(days)
    if int(float(text) * 86_400_000) != want:  # never: repr round-trips
        raise ValueError(f"no ONESTOCK_IDEMPOTENCY_DAYS gives a window of {day_s} s")
    return text


def _iso(ms: int) -> str:
    at = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def day_events(
    day: int, n: int, catalog: Catalog, shards: int = DEFAULT_SHARDS
) -> Iterator[tuple[int, bytes]]:
    """Day ``day``'s ``n`` orders as (shard, raw): the demo burst (no garbage), ids made
    unique to the day, each paid at the wall time it is made (just before it is pushed)."""
    for raw in burst.orders(n, catalog, seed=2026 + day, garbage=0.0):
        order = orjson.loads(raw)
        order["order_id"] = oid = f"d{day}-{order['order_id']}"
        order["customer"]["id"] = f"d{day}-{order['customer']['id']}"
        order["paid_at"] = _iso(time.time_ns() // 1_000_000)
        yield shard_of_id(oid, shards), orjson.dumps(order)


@contextmanager
def _environment(day_s: int) -> Iterator[None]:
    """The dataflow's environment (``harness.start_dataflow`` passes ours on): a window of
    one day and a paid_at horizon of a second; restored afterwards."""
    wanted = {
        "ONESTOCK_IDEMPOTENCY_DAYS": idempotency_days(day_s),
        "ONESTOCK_MAX_FUTURE_S": str(MAX_FUTURE_S),
    }
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait_until(ms: int) -> float:
    """Sleep until epoch ``ms``; how late it is already (s, 0 when it was ahead)."""
    ahead = ms / 1000 - time.time()
    if ahead > 0:
        time.sleep(ahead)
        return 0.0
    return -ahead


def _drain(url: str, home: Path, workers: int) -> float:
    """The dataflow until drained; seconds start to exit."""
    t0 = time.perf_counter()
    proc = harness.start_dataflow(url, home, workers, until_drained=True)
    if proc.wait() != 0:
        raise RuntimeError(f"the dataflow exited with status {proc.returncode}")
    return time.perf_counter() - t0


def _without_outbox(row: Day) -> float:
    """The bytes of every key but the output streams' (``keys.outbox``)."""
    outbox = replay.family_of(keys.outbox(0))
    return sum(f.bytes for f in row.families if f.family != outbox)


def _ratio(values: list[float]) -> float | None:
    steady = values[1:]  # day 1 holds one day of state only
    if not steady or min(steady) <= 0:
        return None
    return max(steady) / min(steady)


class _Timing(NamedTuple):
    start_ms: int  # when the day was due
    late_s: float
    push_s: float
    drain_s: float
    ack_s: float


def _acknowledge(store: Store) -> None:
    """The downstream consumer takes and acknowledges every record."""
    box = Outbox(store.r, DEFAULT_SHARDS)
    while got := box.read_group(GROUP, "bench", dict.fromkeys(range(box.k), ">"), 500):
        box.ack(GROUP, ((e.shard, e.id) for e in got))


def _measure_day(store: Store, day: int, n: int, t: _Timing, before: int, samples: int) -> Day:
    """The figures after day ``day`` is drained (every order ended exactly once)."""
    total = day * n
    check_outcomes(store, total, f"day {day}")
    records, dead = store.shards.outcome_counts(DEFAULT_SHARDS)
    if dead:  # no garbage, each paid when pushed: a dead letter is an event deciding failed on
        raise RuntimeError(f"day {day}: {dead:,} dead letters (every order should be decided)")
    mem = replay.memory(store)
    fams = [FamilyUse(f.name, f.keys, f.bytes) for f in replay.memory_by_family(store, samples)]
    return Day(day, t.start_ms, t.late_s, n, total, records, dead, t.push_s, t.drain_s,
               t.ack_s, mem.used, mem.dataset, mem.used / n, (mem.used - before) / n,
               replay.generations(store), fams)  # fmt: skip


class _Args(NamedTuple):
    days: int
    n: int
    workers: int
    catalog: Catalog
    say: Console


def _day(store: Store, url: str, home: Path, d: int, start_ms: int, args: _Args) -> _Timing:
    """Day ``d``: wait for its start, push its orders, drain them; its timings."""
    say = args.say
    late = _wait_until(start_ms)
    if late > 0:
        say.print(f"day {d} starts {late:.1f} s late: day {d - 1}'s push + drain overran it")
    say.print(f"day {d} of {args.days}: pushing {args.n:,} orders ...")
    t0 = time.perf_counter()
    store.shards.push(day_events(d, args.n, args.catalog))
    push_s = time.perf_counter() - t0
    say.print(f"day {d} of {args.days}: draining ...")
    drain_s = _drain(url, home / "flow", args.workers)
    t0 = time.perf_counter()
    _acknowledge(store)
    _drain(url, home / "flow", args.workers)  # one housekeeping look: fold, trim, settle
    return _Timing(start_ms, late, push_s, drain_s, time.perf_counter() - t0)


def measure(days: int, n: int, day_s: int, workers: int, say: Console, samples: int = 0) -> Figures:
    """The days, each waited for, pushed, drained and weighed, on one scratch Redis."""
    args = _Args(days, n, workers, replay_catalog(), say)
    rows: list[Day] = []
    with harness.scratch_redis("onestock-memory-") as (server, home), _environment(day_s):
        store = Store.connect(server.url)
        harness.reset(store, catalog=args.catalog)
        Outbox(store.r, DEFAULT_SHARDS).create_group(GROUP, ["0-0"] * DEFAULT_SHARDS)
        before = replay.memory(store).used
        start = first_start_ms(day_s)
        say.print(f"a day is {day_s} s; day 1 starts in {start / 1000 - time.time():.1f} s")
        for d in range(1, days + 1):
            timing = _day(store, server.url, home, d, start + (d - 1) * day_s * 1000, args)
            rows.append(_measure_day(store, d, n, timing, before, samples))
            before = rows[-1].used_memory
    return Figures(days, n, day_s, workers, samples, start, rows,
                   _ratio([r.used_memory for r in rows]),
                   _ratio([r.used_memory_dataset for r in rows]),
                   _ratio([r.bytes_per_order for r in rows]),
                   _ratio([_without_outbox(r) for r in rows]))  # fmt: skip


def _mb(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def _days_held(figs: Figures, held: dict[int, int]) -> str:
    """The generations held, as the days they are (day 1's generation is day 1)."""
    first = figs.start_ms // (figs.day_s * 1000)
    return ",".join(str(g - first + 1) for g in held) or "-"


def table(figs: Figures) -> Table:
    """One row per day: orders so far, memory, bytes per order, the days held, timings."""
    title = (
        f"Redis memory per day: {figs.orders_per_day:,} orders a day, a day (and the "
        f"idempotency window) {figs.day_s} s, {figs.workers} worker(s)"
    )
    caption = (
        "used: INFO used_memory; dataset: used_memory_dataset; B/order: used / the day's "
        "orders; +B/order: used - the day before's, / the day's orders; days held: the "
        "generations of idempotency state in Redis; late: the day's start missed by; drain: "
        "the dataflow's start to exit; ack: the consumer's acknowledging, and the dataflow's "
        "housekeeping look"
    )
    t = Table(title=title, caption=caption)
    for col in ("day", "orders so far", "records", "used MB", "dataset MB", "B/order",
                "+B/order", "days held", "late s", "push s", "drain s", "ack s"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in figs.rows:
        t.add_row(str(r.day), f"{r.orders_total:,}", f"{r.records:,}", _mb(r.used_memory),
                  _mb(r.used_memory_dataset), f"{r.bytes_per_order:,.0f}",
                  f"{r.growth_per_order:,.0f}", _days_held(figs, r.generations),
                  f"{r.late_s:.1f}", f"{r.push_s:.1f}", f"{r.drain_s:.1f}",
                  f"{r.ack_s:.1f}")  # fmt: skip
    return t


def families_table(figs: Figures) -> Table:
    """The ``TOP`` biggest key families of the last day, their MB (keys) each day."""
    last = figs.rows[-1].families[:TOP] if figs.rows else []
    t = Table(title=f"the {TOP} biggest key families (hash tags as {{}}, a trailing number "
                    f"as <n>): MB (keys) after each day")  # fmt: skip
    t.add_column("family")
    for r in figs.rows:
        t.add_column(f"day {r.day}", justify="right")
    for fam in last:
        cells = []
        for r in figs.rows:
            got = next((f for f in r.families if f.family == fam.family), None)
            cells.append(f"{_mb(got.bytes)} ({got.keys:,})" if got else "-")
        t.add_row(fam.family, *cells)
    return t


def verdict(figs: Figures) -> str:
    """The flatness line: max / min over days 2..D."""
    if figs.used_memory_ratio is None:
        return "one day only (day 1 holds one day of state): no steady state to compare"
    late = [r.day for r in figs.rows if r.late_s > 0]
    note = f"; days started late: {', '.join(map(str, late))}" if late else ""
    return (
        f"days 2..{figs.days} (day 1 holds one generation only), max / min: "
        f"used_memory {figs.used_memory_ratio:.3f}, dataset {figs.dataset_ratio or 0:.3f}, "
        f"bytes per order of the day {figs.bytes_per_order_ratio or 0:.3f}, the keys but "
        f"the output streams {figs.without_outbox_ratio or 0:.3f} "
        f"(flat within 10%: <= 1.10){note}"
    )


def run_memory(
    days: int, n: int, day_s: int, workers: int, out: Path | None, samples: int = 0
) -> Figures:
    """``onestock bench-memory``: measure, print the table and the verdict, write --out."""
    console = Console(width=None if sys.stdout.isatty() else 150)  # a log: the whole table
    figs = measure(days, n, day_s, workers, console, samples)
    console.print(table(figs))
    console.print(families_table(figs))
    console.print(verdict(figs))
    if out is not None:
        out.write_bytes(msgspec.json.format(msgspec.json.encode(figs)))
    return figs
