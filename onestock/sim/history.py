"""Seeded histories: a small catalog, an optional mid-burst reload, and the events to push.

A history is a pure function of ``(seed, features)``. Times are offsets in ms from an anchor
the driver picks when it runs the history (``render_*``), so a replay is the same history at
another wall-clock time. Stock is small so sell-outs happen; ``paid_at`` increases with a
per-event disorder bounded by half the campaign's lateness, so the first-N ranking is well
defined; every hostile class can be switched off (``Features``), so the check runs green on
what is fixed and red on what is not.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from onestock.domain.protocol import RS, SEP
from onestock.sim.features import Features

SUR = "@@SUR@@"  # rendered as the JSON escape of a lone surrogate, \ud800
CAMPAIGN, CAMPAIGN_SKU, GIFT = "FIRST", "SKU-0", "GIFT"
CHANNELS = [("tmall", "online"), ("jd", "online"), ("douyin", "online"), ("pos", "store")]
LOCATIONS = [("wh-a", "warehouse", 31.23, 121.47), ("wh-b", "warehouse", 39.90, 116.40),
             ("st-c", "store", 30.27, 120.15), ("st-d", "store", 22.54, 114.06)]  # fmt: skip
INTERNAL = ["~nc", "~c:{x}", "~x:{x}", "~R:abc", "#1-0", "~u:{x}", "~rq:{x}", "~k:{x}"]
BAD_TIMES = ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2062-06-01T00:00:00Z"]
GARBAGE = [b"not json {", b"[1,2,3]", b"42", b'"just a string"', b'{"no_id": true}',
           b'{"order_id": 7}', b'{"order_id": ""}', b"{}", b"null",
           b'{"order_id": "' + b"x" * 300 + b'"}']  # fmt: skip


@dataclass
class Event:
    kind: str  # order | dup | cancel | return | garbage | closer | movement | paid | fulfilment
    body: dict[str, Any] | None = None  # "paid_at": int = ms after the anchor
    raw: bytes | None = None  # fixed bytes (garbage)
    of: int = -1  # dup: index (in ``History.events``) of the event it copies


@dataclass
class History:
    seed: int
    features: Features
    shards: int
    workers: int
    lateness: int
    catalog: dict[str, Any]
    reload: dict[str, Any] | None  # its SKUs' stock is filled in by the driver
    reload_at: int  # the reload comes after this many events were pushed
    layout: str = "one"  # the dataset's layout (keys.LAYOUT: "one" or "slots")
    events: list[Event] = field(default_factory=list)

    def movements(self) -> int:
        """How many of the events pushed are movements (copies too)."""
        kinds = [e.kind for e in self.events]
        return sum(k == "movement" or k == "dup" and kinds[e.of] == "movement"
                   for k, e in zip(kinds, self.events, strict=True))  # fmt: skip

    def payments(self) -> int:
        """How many of the events pushed are pending orders or payments (copies too)."""

        def paying(e: Event) -> bool:
            return e.kind == "paid" or "payment" in (e.body or {})

        return sum(paying(self.events[e.of] if e.kind == "dup" else e) for e in self.events)

    def render_events(self, anchor_ms: int) -> list[bytes]:
        out: list[bytes] = []
        for e in self.events:
            if e.raw is not None:
                out.append(e.raw)
            elif e.kind == "dup":
                out.append(out[e.of])
            else:
                body = dict(e.body or {})
                if isinstance(body.get("paid_at"), int):
                    body["paid_at"] = iso(anchor_ms + body["paid_at"])
                pay = body.get("payment")
                if pay is not None and isinstance(pay.get("deadline"), int):
                    body["payment"] = {**pay, "deadline": iso(anchor_ms + pay["deadline"])}
                out.append(orjson.dumps(body).replace(SUR.encode(), b"\\ud800"))
        return out


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def render_catalog(tpl: dict[str, Any], anchor_ms: int) -> dict[str, Any]:
    """The catalog with its time offsets made RFC 3339 times."""
    cat = orjson.loads(orjson.dumps(tpl))
    for sku in cat["skus"]:
        if isinstance(sku.get("vip_presale_until"), int):
            sku["vip_presale_until"] = iso(anchor_ms + sku["vip_presale_until"])
        for lock in sku.get("channel_locks", []):
            lock["until"] = iso(anchor_ms + lock["until"])
    return cat


def generate(seed: int, features: Features) -> History:
    rng = random.Random(seed)
    f = features
    n = rng.randint(12, 60)
    lateness = rng.choice([800, 1500, 3000])
    span = n * 40
    cat = _catalog(rng, f, lateness, span)
    if f.buckets:
        _split(seed, cat)
    skus = [s["sku"] for s in cat["skus"]]
    shards = rng.choice([1, 2, 3, 4])
    h = History(seed, f, shards, rng.choice([1, 2]) if shards > 1 else 1, lateness, cat, None, 0)
    if f.slot_path and random.Random(seed * 7 + 5).random() < 0.5:  # (the rest as without it)
        h.layout = "slots"
    base, t = _orders(rng, f, cat, skus, n, lateness)
    events: list[tuple[float, Event]] = [(float(i), e) for i, e in enumerate(base)]
    end = float(len(base))
    locations = [loc["id"] for loc in cat["locations"]]
    for i, e in enumerate(base):
        events += _aftersale(rng, f, i, e, end, locations)
        events += _changed_copy(seed, f, e, i, end, skus)
    if f.garbage:
        for _ in range(rng.randint(1, 4)):
            events.append((rng.uniform(-1, end), Event("garbage", raw=rng.choice(GARBAGE))))
    if f.movements:  # (drawn from a source of their own: the rest stays as without them)
        from onestock.sim.moves import movement_events

        ids = [
            o for e in base if (o := (e.body or {})["order_id"]).startswith("o-") and SUR not in o
        ]
        events += movement_events(seed, cat, end, ids, f.internal_ids)
    if f.payments:  # (a source of their own too: some orders made pending, in place)
        from onestock.sim.pay import payment_events

        events += payment_events(seed, cat, base, end, lateness, f)
    if f.fulfilment:  # (a source of their own too; after the payments: pending ones known)
        from onestock.sim.ship import fulfilment_events

        returned = {(e.body or {}).get("order_id") for _, e in events if e.kind == "return"}
        events += fulfilment_events(seed, cat, base, end, f, returned)
    events.sort(key=lambda kv: kv[0])
    where = {id(e): j for j, (_, e) in enumerate(events)}
    h.events = [e for _, e in events]
    for e in h.events:
        if e.kind == "dup":
            e.of = where[e.of]
    if not f.tail_noop:  # every shard ends on an order that certainly writes a record
        for shard in range(h.shards):
            oid = next(o for j in range(10_000) if _shard(o := f"z-{shard}-{j}", h.shards) == shard)
            h.events.append(Event("closer", _order(rng, cat, skus, oid, t + 1)))
    if f.reload:
        h.reload = _reload(rng, cat, f)
        if not f.capacity_rules and any("daily_capacity" in x for x in cat["locations"]):
            from onestock.sim.ship import no_rules

            no_rules(h.reload)  # (a catalog with a daily capacity: none added by the reload)
        h.reload_at = rng.randint(len(h.events) // 6, len(h.events) // 2)
        _end_pickup(seed, h)
        from onestock.sim.rekind import change_channel

        change_channel(seed, h)  # (drawn from a source of its own too)
    return h


def _orders(
    rng: random.Random, f: Features, cat: dict[str, Any], skus: list[str], n: int, lateness: int
) -> tuple[list[Event], int]:
    """The history's ``n`` orders in push order (paid_at displaced by less than half the
    lateness bound), and the paid_at offset of the last one."""
    keyed: list[tuple[float, Event]] = []
    t = 0
    ids = [f"o-{i:03d}" for i in range(n)]
    for i in range(n):
        t += rng.choice([0, 0, 5, 20, 60, 150])
        oid = ids[i]
        if f.internal_ids and rng.random() < 0.04:
            oid = rng.choice(INTERNAL).format(x=rng.choice(ids))
        body = _order(rng, cat, skus, oid, t)
        _hostile(rng, f, body, oid)
        # the push order: paid_at displaced by less than half the lateness bound
        key = t + rng.randrange(max(1, lateness // 2 - 1))
        keyed.append((key, Event("order", body)))
    keyed.sort(key=lambda kv: kv[0])
    return [e for _, e in keyed], t


def _hostile(rng: random.Random, f: Features, body: dict[str, Any], oid: str) -> None:
    """Now and then a customer id with separators, a lone surrogate, a paid_at out of range."""
    if f.control_ids and rng.random() < 0.02:
        body["customer"]["id"] = rng.choice([f"c{SEP}1", f"c{RS}2", f"c-{SEP}"])
    if f.surrogates and rng.random() < 0.015:
        spot = rng.choice(["order_id", "customer", "sku"])
        if spot == "order_id":
            body["order_id"] = oid + SUR
        elif spot == "customer":
            body["customer"]["id"] = "c" + SUR
        else:
            body["lines"][0]["sku"] += SUR
    if f.bad_times and rng.random() < 0.03:
        body["paid_at"] = rng.choice(BAD_TIMES)


def _changed_copy(
    seed: int, f: Features, e: Event, i: int, end: float, skus: list[str]
) -> list[tuple[float, Event]]:
    """Now and then a copy of order ``i`` under its id with other lines: its first line's
    SKU swapped (the SKU that keeps its decision changes with it), soon after it (the same
    batch, the next, or one while the first is not yet written) or later. Drawn from a
    source of its own: the rest of the history stays as without it."""
    rng = random.Random(seed * 31 + i)
    body = e.body or {}
    if not f.changed_copies or rng.random() >= 0.06 or not isinstance(body.get("lines"), list):
        return []
    if len(skus) < 2:
        return []
    copy = orjson.loads(orjson.dumps(body))
    first = copy["lines"][0]
    first["sku"] = rng.choice([s for s in skus if s != first.get("sku")])
    copy["lines"] = [first] + [ln for ln in copy["lines"][1:] if ln.get("sku") != first["sku"]]
    k = i + rng.choice([0.0005, 0.002, 0.5, 2.0]) if rng.random() < 0.7 else rng.uniform(i, end)
    return [(k, Event("order", copy))]


def _aftersale(
    rng: random.Random, f: Features, i: int, e: Event, end: float, locations: list[str]
) -> list[tuple[float, Event]]:
    """The events around order ``i`` (at key ``i``; the last at ``end``): maybe a cancel (maybe
    before it), a copy, returns (some early, some delivered twice)."""
    out: list[tuple[float, Event]] = []
    oid = (e.body or {})["order_id"]
    cancel_key = None
    if f.cancels and rng.random() < 0.15:
        before = f.early_cancels and rng.random() < 0.25
        cancel_key = rng.uniform(-0.99, i - 0.01) if before else rng.uniform(i + 0.01, end)
        out.append((cancel_key, Event("cancel", {"type": "cancel", "order_id": oid})))
    if f.dups and rng.random() < 0.12:
        k = i + 0.001 if rng.random() < 0.4 else rng.uniform(i + 0.01, end)
        out.append((k, Event("dup", of=id(e))))  # resolved by generate
    if f.returns and rng.random() < 0.15:
        if cancel_key is not None and not f.cancel_after_return:
            return out
        for ret in _returns(rng, e.body or {}, locations):
            early = f.early_returns and rng.random() < 0.08
            k = rng.uniform(-0.99, i) if early else rng.uniform(i + 0.01, end)
            out.append((k, Event("return", ret)))
            if rng.random() < 0.25:  # a retried delivery of the same return
                out.append((rng.uniform(k, end + 0.5), Event("return", dict(ret))))
    return out


def _shard(oid: str, shards: int) -> int:
    return zlib.crc32(oid.encode()) % shards


def _catalog(rng: random.Random, f: Features, lateness: int, span: int) -> dict[str, Any]:
    locs = rng.sample(LOCATIONS, rng.randint(2, 4))
    locations = []
    for lid, kind, lat, lon in locs:
        loc: dict[str, Any] = {"id": lid, "kind": kind, "lat": lat, "lon": lon,
                               "priority": rng.randint(0, 5)}  # fmt: skip
        if kind == "store":
            loc["pickup"] = rng.random() < 0.7
            loc["safety_stock"] = rng.choice([0, 1])
        locations.append(loc)
    ids = [loc["id"] for loc in locations]
    skus: list[dict[str, Any]] = []
    # (no limit at all before a reload that adds one: the catalog the deciders hold has none)
    limits = 0.0 if f.reload and f.reload_adds_limit and rng.random() < 0.4 else 0.35
    for i in range(rng.randint(3, 6)):
        top = 8 if i == 0 else 4
        sku: dict[str, Any] = {
            "sku": f"SKU-{i}",
            "stock": {lid: rng.randint(0, top) for lid in ids},
        }
        if rng.random() < limits:
            sku["per_customer_limit"] = rng.randint(1, 3)
        if f.alerts and rng.random() < 0.4:
            sku["low_stock_threshold"] = rng.randint(0, 3)
        if rng.random() < 0.2:
            sku["vip_presale_until"] = rng.randint(0, span)
        if rng.random() < 0.3:
            sku["channel_locks"] = [
                {"channel": "douyin", "qty": rng.randint(1, 3), "until": rng.randint(0, span)}
            ]
        skus.append(sku)
    cat: dict[str, Any] = {
        "channels": [{"id": c, "kind": k} for c, k in CHANNELS],
        "locations": locations,
        "skus": skus,
        "routing": rng.choice(["nearest", "priority", "fewest_shipments"]),
    }
    if f.campaign:
        first_n = rng.randint(2, 6)
        gift_units = first_n + 2 if rng.random() < 0.8 else rng.randint(0, first_n - 1)
        split = rng.randint(0, gift_units)
        skus.append({"sku": GIFT, "stock": {ids[0]: split, ids[-1]: gift_units - split}})
        cat["campaigns"] = [{"id": CAMPAIGN, "sku": CAMPAIGN_SKU, "gift_sku": GIFT,
                             "first_n": first_n, "lateness_ms": lateness}]  # fmt: skip
    return cat


def _split(seed: int, cat: dict[str, Any]) -> None:
    """Maybe a SKU or two split into hot-SKU buckets (docs/buckets.md), drawn from a source
    of their own; such a SKU may have no per-customer limit, threshold or lock (the catalog
    refuses them), and neither the campaign's SKU nor its gift is split."""
    rng = random.Random(seed * 7_368_787 + 5)
    regular = [s for s in cat["skus"] if s["sku"] not in (CAMPAIGN_SKU, GIFT)]
    for sku in rng.sample(regular, min(len(regular), rng.choice([0, 1, 1, 2]))):
        sku["buckets"] = rng.randint(2, 4)
        for rule in ("per_customer_limit", "low_stock_threshold", "channel_locks"):
            sku.pop(rule, None)


def _order(
    rng: random.Random, cat: dict[str, Any], skus: list[str], oid: str, t: int
) -> dict[str, Any]:
    regular = [s for s in skus if s != GIFT]
    chosen = rng.sample(regular, min(len(regular), rng.choice([1, 1, 1, 2, 2, 3])))
    if CAMPAIGN_SKU not in chosen and rng.random() < 0.3:
        chosen[0] = CAMPAIGN_SKU
    if rng.random() < 0.04:
        chosen.append(rng.choice([GIFT, "NOPE"]))
    lines = [{"sku": s, "qty": rng.choice([1, 1, 1, 2, 3])} for s in chosen]
    if rng.random() < 0.05:
        lines.append({"sku": chosen[0], "qty": 1})  # two lines of one SKU
    cid = f"c-{rng.randint(0, 5)}" if rng.random() < 0.85 else f"c+{oid}"
    customer: dict[str, Any] = {"id": cid, "vip": rng.random() < 0.3}
    if rng.random() < 0.7:
        customer.update(lat=round(rng.uniform(20, 40), 3), lon=round(rng.uniform(110, 122), 3))
    channel = rng.choice([c for c, _ in CHANNELS]) if rng.random() > 0.03 else "nowhere"
    delivery: dict[str, Any] = {"mode": "ship"}
    if rng.random() < 0.2:
        delivery = {"mode": "pickup", "store": rng.choice(cat["locations"])["id"]}
    return {"order_id": oid, "channel": channel, "customer": customer, "lines": lines,
            "delivery": delivery, "paid_at": t}  # fmt: skip


def _returns(
    rng: random.Random, order: dict[str, Any], locations: list[str]
) -> list[dict[str, Any]]:
    """One return of some of the order's units, or two partial ones."""
    lines = [ln for ln in order["lines"] if rng.random() < 0.7] or order["lines"][:1]
    parts = 2 if rng.random() < 0.3 else 1
    out = []
    for _ in range(parts):
        back = [{"sku": ln["sku"], "qty": rng.randint(1, ln["qty"])} for ln in lines]
        out.append({"type": "return", "order_id": order["order_id"], "lines": back,
                    "location": rng.choice(locations)})  # fmt: skip
    return out


def _reload(rng: random.Random, cat: dict[str, Any], f: Features) -> dict[str, Any]:
    """The same catalog with rules changed: limits raised, maybe one added, a safety stock
    and the routing changed. Locks, pre-sales, thresholds and the campaign stay."""
    new = orjson.loads(orjson.dumps(cat))
    for sku in new["skus"]:
        if "per_customer_limit" in sku and rng.random() < 0.5:
            sku["per_customer_limit"] += 1
    unlimited = [
        s
        for s in new["skus"]
        if "per_customer_limit" not in s and s["sku"] != GIFT and not s.get("buckets")
    ]
    if f.reload_adds_limit and unlimited:  # on the SKU most likely to have units left
        most = max(unlimited, key=lambda s: sum(s["stock"].values()))
        most["per_customer_limit"] = rng.randint(1, 2)
    stores = [loc for loc in new["locations"] if loc["kind"] == "store"]
    if stores:
        loc = rng.choice(stores)
        loc["safety_stock"] = 1 - loc.get("safety_stock", 0)
    new["routing"] = rng.choice(["nearest", "priority", "fewest_shipments"])
    return new


def pickups(cat: dict[str, Any]) -> set[str]:
    """The catalog's locations that offer pickup."""
    return {loc["id"] for loc in cat["locations"] if loc.get("pickup")}


def _end_pickup(seed: int, h: History) -> None:
    """Now and then the reload ends pickup at the store most pickup orders name (drawn from
    a source of its own: the rest of the history stays as without it). An order decided
    before the reload keeps its decision, also when a run died before its record and its
    replay meets the new catalog; one first decided after it is rejected pickup_unavailable."""
    if h.reload is None or not h.features.reload_ends_pickup:
        return
    named: Counter[str | None] = Counter()
    for e in h.events:
        delivery = (e.body or {}).get("delivery") or {}
        if e.kind in ("order", "closer") and delivery.get("mode") == "pickup":
            named[delivery.get("store")] += 1
    stores = [loc for loc in h.reload["locations"] if loc.get("pickup") and named[loc["id"]]]
    if stores and random.Random(seed * 4_000_037 + 3).random() < 0.5:
        max(stores, key=lambda loc: named[loc["id"]])["pickup"] = False
