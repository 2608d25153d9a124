"""What ops watch: one reading of Redis, as Prometheus metrics and as the live view.

Every figure comes from Redis, not from one process's memory, so any ``onestock serve``
process (and ``onestock top``) shows the same numbers for the whole pipeline, however many
dataflow and intake processes there are, and the counters survive their restarts:

- decisions, cancellations, returns, latency histograms, trimming: the shard counters that
  ``emit.lua`` keeps with each written batch (``onestock.domain.meter``), exact across crashes;
- movements: counted by ``emit.lua`` with the batch's records too (tags ``M<kind>:<status>``);
- intake outcomes: counted by each intake process, added to Redis every second;
- the availability change feed: transitions by status (``feed_publish.lua``), webhook
  deliveries by subscriber and outcome, progress and retries (``onestock/ops/deliver.py``);
- stock, locks, campaigns, backlog, held records: read as they are now.

``onestock.ops.live.Live`` keeps the last minute of these readings to turn counters into rates,
windowed latency percentiles and a sell-out projection per SKU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from onestock.domain import events, meter
from onestock.domain.errors import OnestockError
from onestock.domain.protocol import Code, ProtocolError, code_of
from onestock.domain.types import Campaign, Catalog
from onestock.ops import availability
from onestock.ops.services import StockView, stock_view
from state import keys
from state.store import Store

LE = [b / 1000 for b in meter.BOUNDS_MS] + [math.inf]  # bucket upper bounds, seconds
NB = len(LE)
STATUS = {meter.ACCEPTED: "accepted", meter.CANCELLED: "cancelled", Code.RESERVED: "reserved"}
MOVEMENT_STATUSES = ("applied", "refused")
# every (kind, status) a movement record can have ("invalid": not a movement one can apply)
MOVEMENT_LABELS = [f"{k}:{s}" for k in events.MOVEMENT_KINDS for s in MOVEMENT_STATUSES]
MOVEMENT_LABELS.append("invalid:refused")
FEED_STATUSES = (availability.IN_STOCK, availability.LOW_STOCK, availability.SOLD_OUT)
DELIVERY_OUTCOMES = ("delivered", "retried", "given_up")  # (onestock/ops/deliver.py OUTCOMES)


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


class FeedFigures(msgspec.Struct):
    """The availability change feed and its webhook deliveries."""

    seq: int = 0  # transitions published so far (the feed's last seq)
    transitions: dict[str, int] = {}  # status -> transitions published to it
    deliveries: dict[str, int] = {}  # "<subscriber>:<outcome>" -> count (DELIVERY_OUTCOMES)
    retrying: dict[str, int] = {}  # subscriber -> transitions being retried now
    lag: dict[str, int] = {}  # subscriber of the catalog -> transitions not done yet
    undelivered: int = 0  # deliveries given up, kept in keys.FEED_UNDELIVERED
    # the fulfilment records' webhooks (the catalog's record_subscribers), likewise
    record_deliveries: dict[str, int] = {}  # "<subscriber>:<outcome>" -> count
    record_retrying: dict[str, int] = {}  # subscriber -> records being retried now
    record_subscribers: list[str] = []  # the catalog's
    record_undelivered: int = 0  # kept in keys.RECORD_UNDELIVERED


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
    movements: dict[str, int] = {}  # "<kind>:<applied|refused>" -> movement records
    payments: int = 0  # reserved orders paid in time (accepted)
    expiries: int = 0  # reserved orders expired unpaid (units given back)
    feed: FeedFigures = msgspec.field(default_factory=FeedFigures)

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
        store = self.store
        cat = self.catalog()
        try:
            k = store.shards.shard_count()
        except OnestockError:
            k = 0  # nothing pushed yet
        camps = cat.campaigns if cat else []
        camp_skus = sorted({c.sku for c in camps})
        got = self._fetch(k, camp_skus)
        now = time.time()
        tally = _Tally()
        lengths, marks, held = [], [], 0
        for s in range(k):
            counts, length, mark, nheld = got[4 * s : 4 * s + 4]
            lengths.append(length)
            marks.append(mark)
            held += nheld
            tally.add(counts)
        backlog = self._backlog(lengths, marks)
        intake, events = _intake_counts(got[4 * k])
        ncamp = len(camp_skus)
        progress = dict(zip(camp_skus, got[4 * k + 1 : 4 * k + 1 + ncamp], strict=True))
        feed = _feed(got[4 * k + 1 + ncamp :], cat)
        campaigns = [_campaign(c, progress[c.sku]) for c in camps]
        stock = stock_view(store, cat=cat) if cat is not None else {}
        for camp in campaigns:
            gift = stock.get(camp.gift_sku)
            camp.gift_units = gift.total if gift is not None else None
        oversold = sum(max(0, -q) for v in stock.values() for q in v.locations.values())
        oversold += sum(max(0, c.awarded - c.first_n) for c in campaigns)
        totals, after = tally.totals, tally.after
        return Figures(
            at=now, shards=k, decisions=tally.decisions,
            cancellations=after[meter.CANCELLATION], returns=after[meter.RETURN],
            payments=after[meter.PAID], expiries=after[meter.EXPIRED],
            records=totals["records"], dead=totals["dead"], trimmed=totals["trimmed"],
            received=tally.received, paid=tally.paid,
            sum_received_ms=totals["sum_r"], sum_paid_ms=totals["sum_p"],
            backlog=backlog, stream_length=lengths, held=held, intake=intake,
            intake_events=events, stock=stock, campaigns=campaigns, oversold=oversold,
            movements=tally.movements, feed=feed,
        )  # fmt: skip

    def _fetch(self, k: int, camp_skus: list[str]) -> list[Any]:
        """One round trip: per shard its counters, input length, watermark and held records;
        the intake's counts; each campaign SKU's campaign progress; the feed's figures
        (``_feed``: the seq first, so a transition published meanwhile is in the counts)."""
        pipe = self.store.r.pipeline(transaction=False)
        for s in range(k):
            pipe.hgetall(keys.counters(s))
            pipe.xlen(keys.inbox(s))
            pipe.get(keys.watermark(s))
            pipe.hlen(keys.held(s))
        pipe.hgetall(keys.INTAKE_COUNTS)
        for sku in camp_skus:
            pipe.hgetall(keys.campaigns(sku))
        pipe.get(keys.FEED_SEQ)
        for key in (keys.FEED_COUNTS, keys.FEED_DELIVERY_COUNTS, keys.FEED_DELIVERED):
            pipe.hgetall(key)
        pipe.hgetall(keys.FEED_RETRYING)
        pipe.xlen(keys.FEED_UNDELIVERED)
        pipe.hgetall(keys.RECORD_DELIVERY_COUNTS)
        pipe.hgetall(keys.RECORD_RETRYING)
        pipe.xlen(keys.RECORD_UNDELIVERED)
        return pipe.execute()

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


class _Tally:
    """The shard counters added up: decisions by label, after-sale records, the latency
    histograms (received, paid) and the plain totals."""

    def __init__(self) -> None:
        self.decisions: dict[str, int] = {}
        self.received, self.paid = [0] * NB, [0] * NB
        self.totals = {"records": 0, "dead": 0, "trimmed": 0, "sum_r": 0, "sum_p": 0}
        self.after: dict[str, int] = {
            meter.CANCELLATION: 0, meter.RETURN: 0, meter.PAID: 0, meter.EXPIRED: 0
        }  # fmt: skip
        self.movements: dict[str, int] = {}  # "<kind>:<applied|refused>" -> records

    def add(self, counts: dict[bytes, bytes]) -> None:
        """One shard's counters hash."""
        for field, value in counts.items():
            name, n = field.decode(), int(value)
            if name[0] == meter.FIELD:  # "m<received bucket><paid bucket><status>"
                self._tag(name[1], name[2], name[3:], n)
            elif name in self.totals:
                self.totals[name] += n

    def _tag(self, rb: str, pb: str, status: str, n: int) -> None:
        """``n`` records of one metric tag (``onestock.domain.meter``)."""
        if status in self.after:
            self.after[status] += n
            return
        if status[:1] == Code.MOVEMENT:  # a movement's record: "M<kind>:<status>"
            self.movements[status[1:]] = self.movements.get(status[1:], 0) + n
            return
        label = _label(status)
        self.decisions[label] = self.decisions.get(label, 0) + n
        i = meter.index(rb)
        if i is not None:
            self.received[i] += n
        j = meter.index(pb)
        if j is not None:
            self.paid[j] += n


def _label(status: str) -> str:
    """The decisions label of a decision's tag status: "accepted", "cancelled" or
    "rejected:<reason>"; an unknown code raises."""
    code = code_of(status)
    if code is Code.REJECTED:
        return "rejected:" + status[1:]
    label = STATUS.get(code)
    if label is None:
        raise ProtocolError(f"a metric tag of status {status!r}: not a decision")
    return label


def _intake_counts(counts: dict[bytes, bytes]) -> tuple[dict[str, int], dict[str, int]]:
    """The intake's counts: requests by "<source>:<outcome>", events stored by source."""
    intake: dict[str, int] = {}
    events: dict[str, int] = {}
    for field, value in counts.items():
        kind, _, rest = field.decode().partition(":")
        if kind == keys.INTAKE_REQUESTS:
            intake[rest] = int(value)
        elif kind == keys.INTAKE_EVENTS:
            events[rest] = int(value)
    return intake, events


def _ints(h: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in h.items()}


def _feed(got: list[Any], cat: Catalog | None) -> FeedFigures:
    """The feed's figures from ``_fetch``'s last answers. Transitions counted before the
    publisher counted them by status (none on a fresh install) show as status "unknown"."""
    seq_b, counts, delivered_counts, progress, retrying, undelivered, *records = got
    r_counts, r_retrying, r_undelivered = records
    seq = int(seq_b or 0)
    transitions = _ints(counts)
    if seq > sum(transitions.values()):
        transitions["unknown"] = seq - sum(transitions.values())
    done = _ints(progress)
    subs = [s.id for s in cat.subscribers] if cat else []
    return FeedFigures(
        seq=seq, transitions=transitions, deliveries=_ints(delivered_counts),
        retrying=_ints(retrying), lag={s: max(0, seq - done.get(s, 0)) for s in subs},
        undelivered=int(undelivered), record_deliveries=_ints(r_counts),
        record_retrying=_ints(r_retrying),
        record_subscribers=[s.id for s in cat.record_subscribers] if cat else [],
        record_undelivered=int(r_undelivered),
    )  # fmt: skip


def _campaign(c: Campaign, progress: dict[bytes, bytes]) -> CampaignFigures:
    """A campaign's figures from its SKU's campaign progress hash."""

    def num(field: str) -> int | None:
        v = progress.get(f"{c.id}:{field}".encode())
        return int(v) if v is not None else None

    return CampaignFigures(
        c.id, c.sku, c.gift_sku, c.first_n,
        num("ranks") or 0, num("awarded") or 0, num("late") or 0, num("ended"),
    )  # fmt: skip


# -- Prometheus ------------------------------------------------------------------------------


def _histogram(name: str, doc: str, counts: list[int], sum_ms: int) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc)
    cum, buckets = 0, []
    for le, n in zip(LE, counts, strict=True):
        cum += n
        buckets.append(("+Inf" if le == math.inf else repr(le), cum))
    h.add_metric([], buckets, sum_ms / 1000)
    return h


def _intake_families(f: Figures) -> Iterator[Metric]:
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


def _outcome_families(f: Figures) -> Iterator[Metric]:
    """Decisions, after-sale records, records, dead letters, trimming, latencies."""
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
    yield CounterMetricFamily(
        "onestock_payments", "Reserved orders paid by their deadline (now accepted).", f.payments
    )
    yield CounterMetricFamily(
        "onestock_expiries", "Reserved orders expired unpaid (units given back).", f.expiries
    )
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


def _stream_families(f: Figures) -> Iterator[Metric]:
    """Per shard backlog and length; the held records."""
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


def _stock_families(f: Figures) -> Iterator[Metric]:
    """Stock per SKU and channel, the first-N campaigns, units oversold."""
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


def _movement_families(f: Figures) -> Iterator[Metric]:
    """Movement records by kind and status; every (kind, status) from 0, so a rate sees the
    first one."""
    c = CounterMetricFamily(
        "onestock_movements",
        "Stock movement records, by kind (receipt, sale, adjustment, transfer, count, "
        "invalid) and status (applied, refused).",
        labels=["kind", "status"],
    )
    counts = dict.fromkeys(MOVEMENT_LABELS, 0) | f.movements
    for label, n in sorted(counts.items()):
        kind, _, status = label.partition(":")
        c.add_metric([kind, status], n)
    yield c


def _feed_families(f: Figures) -> Iterator[Metric]:
    """The change feed's transitions; webhook deliveries per subscriber, retries, lag and
    the given-up deliveries kept. Each subscriber of the catalog has every outcome from 0."""
    feed = f.feed
    c = CounterMetricFamily(
        "onestock_availability_transitions",
        "Availability transitions of a (SKU, channel) published on the change feed, by the "
        "status changed to.",
        labels=["status"],
    )
    for status, n in sorted((dict.fromkeys(FEED_STATUSES, 0) | feed.transitions).items()):
        c.add_metric([status], n)
    yield c
    d = CounterMetricFamily(
        "onestock_webhook_deliveries",
        "Webhook deliveries of the change feed, by subscriber and outcome (delivered, "
        "retried: a try after a failed one, given_up: kept undelivered).",
        labels=["subscriber", "outcome"],
    )
    counts = {f"{s}:{o}": 0 for s in feed.lag for o in DELIVERY_OUTCOMES} | feed.deliveries
    for label, n in sorted(counts.items()):
        sub, _, outcome = label.rpartition(":")
        d.add_metric([sub, outcome], n)
    yield d
    retrying = GaugeMetricFamily(
        "onestock_webhook_retrying",
        "Transitions being retried now, per subscriber.",
        labels=["subscriber"],
    )
    for sub, n in sorted((dict.fromkeys(feed.lag, 0) | feed.retrying).items()):
        retrying.add_metric([sub], n)
    yield retrying
    lag = GaugeMetricFamily(
        "onestock_subscriber_lag_transitions",
        "Transitions published and not yet delivered (or given up), per subscriber.",
        labels=["subscriber"],
    )
    for sub, n in sorted(feed.lag.items()):
        lag.add_metric([sub], n)
    yield lag
    yield GaugeMetricFamily(
        "onestock_webhook_undelivered",
        "Webhook deliveries given up and kept (onestock deliveries --undelivered).",
        feed.undelivered,
    )


def _record_delivery_families(feed: FeedFigures) -> Iterator[Metric]:
    """The fulfilment records' webhook deliveries (docs/downstream.md), as the feed's: each
    record subscriber of the catalog has every outcome from 0."""
    subs = feed.record_subscribers
    d = CounterMetricFamily(
        "onestock_record_webhook_deliveries",
        "Webhook deliveries of fulfilment records, by record subscriber and outcome "
        "(delivered, retried: a try after a failed one, given_up: kept undelivered).",
        labels=["subscriber", "outcome"],
    )
    counts = {f"{s}:{o}": 0 for s in subs for o in DELIVERY_OUTCOMES} | feed.record_deliveries
    for label, n in sorted(counts.items()):
        sub, _, outcome = label.rpartition(":")
        d.add_metric([sub, outcome], n)
    yield d
    retrying = GaugeMetricFamily(
        "onestock_record_webhook_retrying",
        "Records being retried now, per record subscriber.",
        labels=["subscriber"],
    )
    for sub, n in sorted((dict.fromkeys(subs, 0) | feed.record_retrying).items()):
        retrying.add_metric([sub], n)
    yield retrying
    yield GaugeMetricFamily(
        "onestock_record_webhook_undelivered",
        "Record deliveries given up and kept (onestock deliveries --undelivered).",
        feed.record_undelivered,
    )


def families(f: Figures) -> Iterator[Metric]:
    """The Prometheus metric families of one reading (docs/ops.md "Metrics" lists them)."""
    g = GaugeMetricFamily("onestock_redis_up", "1 when the last reading of Redis worked.")
    g.add_metric([], 1)
    yield g
    yield from _intake_families(f)
    yield from _outcome_families(f)
    yield from _stream_families(f)
    yield from _stock_families(f)
    yield from _movement_families(f)
    yield from _feed_families(f)
    yield from _record_delivery_families(f.feed)


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
