"""What ops watch: one reading of Redis, as Prometheus metrics and as the live view.

Every figure comes from Redis, not from one process's memory, so any ``onestock serve``
process (and ``onestock top``) shows the same numbers for the whole pipeline, however many
dataflow and intake processes there are, and the counters survive their restarts:

- decisions, cancellations, returns, latency histograms, trimming: the shard counters that
  ``emit.lua`` keeps with each written batch (``onestock.domain.meter``), exact across crashes;
- intake outcomes: counted by each intake process, added to Redis every second;
- stock, locks, campaigns, backlog, held records: read as they are now.

``onestock.ops.live.Live`` keeps the last minute of these readings to turn counters into rates,
windowed latency percentiles and a sell-out projection per SKU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import msgspec
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from onestock.domain import meter
from onestock.domain.errors import OnestockError
from onestock.domain.types import Catalog
from onestock.ops.services import StockView, stock_view
from state import keys
from state.store import Store

LE = [b / 1000 for b in meter.BOUNDS_MS] + [math.inf]  # bucket upper bounds, seconds
NB = len(LE)
STATUS = {meter.ACCEPTED: "accepted", meter.CANCELLED: "cancelled"}


class CampaignFigures(msgspec.Struct):
    id: str
    sku: str
    gift_sku: str
    first_n: int
    ranks: int  # ranks settled so far
    awarded: int  # ranks that got a gift unit
    late: int  # settled ranks of orders later than the lateness bound
    ended_at: int | None  # the rank at which the gift stock ran out
    gift_units: int | None = None  # units of the gift SKU on hand

    @property
    def left(self) -> int:
        """Gifts still to give: none once the gift stock ran out, else the unsettled ranks,
        at most the gift units on hand."""
        if self.ended_at is not None:
            return 0
        left = max(0, self.first_n - self.ranks)
        return left if self.gift_units is None else min(left, max(0, self.gift_units))


class Figures(msgspec.Struct):
    """One reading of the whole pipeline."""

    at: float  # time.time() of the reading
    shards: int
    decisions: dict[str, int]  # "accepted", "cancelled", "rejected:<reason>"
    cancellations: int  # cancels of orders accepted before
    returns: int
    records: int  # fulfilment records written
    dead: int  # dead letters
    trimmed: int  # input entries trimmed behind the committed outcomes
    received: list[int]  # received -> decided: observations per bucket (not cumulative)
    paid: list[int]  # paid -> decided, likewise
    sum_received_ms: int
    sum_paid_ms: int
    backlog: list[int]  # per shard: events not decided yet
    stream_length: list[int]  # per shard: entries held in Redis
    held: int  # accepted records waiting for their gift settlement
    intake: dict[str, int]  # "<source>:<outcome>" -> requests
    intake_events: dict[str, int]  # source -> events stored
    stock: dict[str, StockView]
    campaigns: list[CampaignFigures]
    oversold: int  # units below zero + gifts past first_n: must be 0

    @property
    def decided(self) -> int:
        return sum(self.decisions.values())


class Reader:
    """Reads ``Figures`` from Redis in a few round trips (the catalog only when it changed)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._version = -1
        self._catalog: Catalog | None = None

    def catalog(self) -> Catalog | None:
        if self.store.catalog_version() != self._version:
            self._version, self._catalog = self.store.catalog()
        return self._catalog

    def read(self) -> Figures:
        store, r = self.store, self.store.r
        cat = self.catalog()
        try:
            k = store.shard_count()
        except OnestockError:
            k = 0  # nothing pushed yet
        camps = cat.campaigns if cat else []
        camp_skus = sorted({c.sku for c in camps})
        pipe = r.pipeline(transaction=False)
        for s in range(k):
            pipe.hgetall(keys.counters(s))
            pipe.xlen(keys.inbox(s))
            pipe.get(keys.watermark(s))
            pipe.hlen(keys.held(s))
        pipe.hgetall(keys.INTAKE_COUNTS)
        for sku in camp_skus:
            pipe.hgetall(keys.campaigns(sku))
        got = pipe.execute()
        now = time.time()
        decisions: dict[str, int] = {}
        received, paid = [0] * NB, [0] * NB
        totals = {"records": 0, "dead": 0, "trimmed": 0, "sum_r": 0, "sum_p": 0}
        after = {meter.CANCELLATION: 0, meter.RETURN: 0}
        lengths, marks, held = [], [], 0
        for s in range(k):
            counts, length, mark, nheld = got[4 * s : 4 * s + 4]
            lengths.append(length)
            marks.append(mark)
            held += nheld
            for field, value in counts.items():
                name, n = field.decode(), int(value)
                if name[0] != "m":
                    if name in totals:
                        totals[name] += n
                    continue
                rb, pb, status = name[1], name[2], name[3:]
                if status in after:
                    after[status] += n
                    continue
                label = STATUS.get(status) or "rejected:" + status[1:]
                decisions[label] = decisions.get(label, 0) + n
                i = meter.index(rb)
                if i is not None:
                    received[i] += n
                j = meter.index(pb)
                if j is not None:
                    paid[j] += n
        backlog = self._backlog(lengths, marks)
        intake: dict[str, int] = {}
        events: dict[str, int] = {}
        for field, value in got[4 * k].items():
            kind, _, rest = field.decode().partition(":")
            if kind == "r":
                intake[rest] = int(value)
            elif kind == "e":
                events[rest] = int(value)
        progress = dict(zip(camp_skus, got[4 * k + 1 :], strict=True))
        campaigns = []
        for c in camps:
            p = progress[c.sku]

            def num(field: str, hash_: dict[bytes, bytes] = p, cid: str = c.id) -> int | None:
                v = hash_.get(f"{cid}:{field}".encode())
                return int(v) if v is not None else None

            campaigns.append(
                CampaignFigures(
                    c.id,
                    c.sku,
                    c.gift_sku,
                    c.first_n,
                    num("ranks") or 0,
                    num("awarded") or 0,
                    num("late") or 0,
                    num("ended"),
                )  # fmt: skip
            )
        stock = stock_view(store, cat=cat) if cat is not None else {}
        for camp in campaigns:
            gift = stock.get(camp.gift_sku)
            camp.gift_units = gift.total if gift is not None else None
        oversold = sum(max(0, -q) for v in stock.values() for q in v.locations.values())
        oversold += sum(max(0, c.awarded - c.first_n) for c in campaigns)
        return Figures(
            at=now, shards=k, decisions=decisions,
            cancellations=after[meter.CANCELLATION], returns=after[meter.RETURN],
            records=totals["records"], dead=totals["dead"], trimmed=totals["trimmed"],
            received=received, paid=paid,
            sum_received_ms=totals["sum_r"], sum_paid_ms=totals["sum_p"],
            backlog=backlog, stream_length=lengths, held=held, intake=intake,
            intake_events=events, stock=stock, campaigns=campaigns, oversold=oversold,
        )  # fmt: skip

    def _backlog(self, lengths: list[int], marks: list[bytes | None]) -> list[int]:
        """Per shard: entries after the watermark (the last one whose outcome is stored).
        Trimming is approximate (whole stream nodes), so a few decided entries may still
        sit before the watermark: they are counted and taken off."""
        pipe = self.store.r.pipeline(transaction=False)
        for s, mark in enumerate(marks):
            if mark is not None:
                pipe.xrange(keys.inbox(s), "-", mark, count=10_000)
        behind = iter(pipe.execute())
        return [
            length - (len(next(behind)) if mark is not None else 0)
            for length, mark in zip(lengths, marks, strict=True)
        ]


# -- Prometheus ------------------------------------------------------------------------------


def _histogram(name: str, doc: str, counts: list[int], sum_ms: int) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc)
    cum, buckets = 0, []
    for le, n in zip(LE, counts, strict=True):
        cum += n
        buckets.append(("+Inf" if le == math.inf else repr(le), cum))
    h.add_metric([], buckets, sum_ms / 1000)
    return h


def families(f: Figures) -> Iterator[Metric]:
    """The Prometheus metric families of one reading (README "Metrics" lists them)."""
    g = GaugeMetricFamily("onestock_redis_up", "1 when the last reading of Redis worked.")
    g.add_metric([], 1)
    yield g
    c = CounterMetricFamily(
        "onestock_intake_requests", "Webhook requests by source and outcome.",
        labels=["source", "outcome"],
    )  # fmt: skip
    for key, n in sorted(f.intake.items()):
        source, _, outcome = key.partition(":")
        c.add_metric([source, outcome], n)
    yield c
    c = CounterMetricFamily(
        "onestock_intake_events", "Events stored by the intake, by source.", labels=["source"]
    )
    for source, n in sorted(f.intake_events.items()):
        c.add_metric([source], n)
    yield c
    c = CounterMetricFamily(
        "onestock_decisions",
        "Orders decided, by status (accepted, rejected, cancelled) and rejection reason.",
        labels=["status", "reason"],
    )
    for label, n in sorted(f.decisions.items()):
        status, _, reason = label.partition(":")
        c.add_metric([status, reason], n)
    yield c
    yield CounterMetricFamily(
        "onestock_cancellations", "Cancellations of orders accepted before.", f.cancellations
    )
    yield CounterMetricFamily("onestock_returns", "Returns accepted (units restocked).", f.returns)
    yield CounterMetricFamily("onestock_records", "Fulfilment records written.", f.records)
    yield CounterMetricFamily("onestock_dead_letters", "Events kept as dead letters.", f.dead)
    yield CounterMetricFamily(
        "onestock_stream_trimmed", "Input entries trimmed behind stored outcomes.", f.trimmed
    )
    yield _histogram(
        "onestock_received_to_decided_seconds",
        "From the event's arrival in the input stream to its decision.",
        f.received, f.sum_received_ms,
    )  # fmt: skip
    yield _histogram(
        "onestock_paid_to_decided_seconds",
        "From the order's paid_at to its decision.", f.paid, f.sum_paid_ms,
    )  # fmt: skip
    for name, doc, values in (
        ("onestock_stream_backlog", "Events in the input stream not decided yet.", f.backlog),
        ("onestock_stream_length", "Entries the input stream holds in Redis.", f.stream_length),
    ):
        g = GaugeMetricFamily(name, doc, labels=["shard"])
        for s, n in enumerate(values):
            g.add_metric([str(s)], n)
        yield g
    yield GaugeMetricFamily(
        "onestock_held_records", "Accepted records waiting for their gift settlement.", f.held
    )
    g = GaugeMetricFamily(
        "onestock_stock_sellable_units",
        "Units each channel can still sell, per SKU (locks and safety stock applied).",
        labels=["sku", "channel"],
    )
    t = GaugeMetricFamily("onestock_stock_units", "Units on hand per SKU.", labels=["sku"])
    for sku, v in f.stock.items():
        t.add_metric([sku], v.total)
        for channel, n in v.available.items():
            g.add_metric([sku, channel], n)
    yield g
    yield t
    awarded = CounterMetricFamily(
        "onestock_gifts_awarded", "First-N gifts given, per campaign.", labels=["campaign"]
    )
    left = GaugeMetricFamily(
        "onestock_gifts_left", "First-N gifts still to give, per campaign.", labels=["campaign"]
    )
    late = CounterMetricFamily(
        "onestock_gift_late_orders",
        "Settled campaign orders that came later than the lateness bound.",
        labels=["campaign"],
    )
    for camp in f.campaigns:
        awarded.add_metric([camp.id], camp.awarded)
        left.add_metric([camp.id], camp.left)
        late.add_metric([camp.id], camp.late)
    yield awarded
    yield left
    yield late
    yield GaugeMetricFamily(
        "onestock_oversold_units", "Units sold beyond stock or gifts past first_n: must be 0.",
        f.oversold,
    )  # fmt: skip


class PipelineCollector(Collector):
    """A prometheus_client collector that reads Redis at each scrape."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        try:
            f = self.reader.read()
        except Exception:  # noqa: BLE001 - the scrape still answers: Redis is down
            g = GaugeMetricFamily("onestock_redis_up", "1 when the last reading of Redis worked.")
            g.add_metric([], 0)
            yield g
            return
        yield from families(f)


# -- the live view (dashboard, onestock top) ---------------------------------------------------


def quantile(q: float, counts: list[int]) -> float | None:
    """Prometheus' histogram_quantile over per-bucket counts (linear inside a bucket)."""
    total = sum(counts)
    if total == 0:
        return None
    rank, cum = q * total, 0
    for i, n in enumerate(counts):
        if cum + n >= rank and n > 0:
            lo = LE[i - 1] if i > 0 else 0.0
            hi = LE[i]
            if hi == math.inf:
                return lo
            return lo + (hi - lo) * (rank - cum) / n
        cum += n
    return LE[-2]
