"""The checker's rule invariants (part of ``model``): (c) per-customer limits, (d) channel locks,
VIP pre-sales and pickup, (e) first-N ranks, and the sold-out alert of a SKU that sold out.

Each is judged from the outputs alone and errs on the lenient side where the outputs cannot
tell (e.g. which side of a reload an order was judged on): a violation here is certain.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from onestock.sim.history import BAD_TIMES, GIFT, pickups
from onestock.sim.model import ms, ordered, per_sku, units

if TYPE_CHECKING:
    from onestock.sim.model import Checker, Ev

Rank = tuple[str, str, int, str, bool]  # campaign, order id, rank, gift from, late
REFUSED = ("rejected", "unknown_channel")  # an order of a channel the catalog does not have


def check(c: Checker) -> None:
    limits(c)
    locks_and_presales(c)
    first_n(c)
    alerts(c)


def _rule(c: Checker, field: str) -> list[dict[str, Any]]:
    """Per catalog (initial, reloaded): SKU -> the value of ``field`` (None: no rule)."""
    return [{s["sku"]: s.get(field) for s in cat["skus"]} for cat in c.ob.catalogs]


def _obj(c: Checker, oid: str) -> dict[str, Any]:
    e = c.first.get(oid)
    return e.obj if e is not None and e.obj is not None else {}


def _decided_ms(c: Checker, oid: str) -> int | None:
    """When the order was decided (None: unknown, e.g. a held record cancelled unreleased:
    the cancellation's record tells when the cancel was decided, not the order)."""
    dec = c.decision.get(oid)
    return ms(dec["decided_at"]) if dec else None


def _received_ms(c: Checker, oid: str) -> int:
    """When the order was first received (its decision's record says; 0: unknown)."""
    dec = c.decision.get(oid)
    return (ms(dec.get("received_at")) or 0) if dec else 0


def limits(c: Checker) -> None:
    lim = _rule(c, "per_customer_limit")
    bought, after = _bought(c)
    for (cust, sku), q in bought.items():
        first, last = lim[0].get(sku), lim[-1].get(sku)
        if first is not None and q > max(first, last or first):
            c.fail("limit.exceeded", f"{cust!r} bought {q} x {sku}, limit {first}/{last}")
        elif first is None and last is not None and after[(cust, sku)] > last:
            c.fail("limit.exceeded", f"{cust!r} bought {after[(cust, sku)]} x {sku} after "
                   f"the reload set a limit of {last}")  # fmt: skip
    _limit_rejections(c, lim)


def _bought(c: Checker) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """(customer, SKU) -> units bought (a cancel counts), and of orders decided after the
    reload."""
    bought: Counter[tuple[str, str]] = Counter()
    after: Counter[tuple[str, str]] = Counter()
    for oid, took in c.took.items():
        cust = _obj(c, oid).get("customer", {}).get("id")
        if not took or cust is None:
            continue
        # (only where the driver knows: a record dated after the reload may be the replay
        # of a decision made before it)
        later = c.ob.after_reload is not None and oid in c.ob.after_reload and oid in c.decision
        for sku, q in per_sku(took).items():
            bought[(cust, sku)] += q
            if later:
                after[(cust, sku)] += q
    return bought, after


def _limit_rejections(c: Checker, lim: list[dict[str, Any]]) -> None:
    """A limit_exceeded needs units the customer bought before it (decided no later than it,
    give or take the clock skew between concurrent workers), whichever catalog judged it. A
    decision written after the first crash may be the replay of one made before it, as early
    as its order was received (a cross-slot order counts at its reservation)."""
    times = {oid: _decided_ms(c, oid) for oid in c.took}
    crash, skew = c.ob.first_crash_ms, c.ob.skew_ms
    for oid, dec in c.decision.items():
        if dec["status"] != "rejected" or dec["reason"] != "limit_exceeded":
            continue
        obj = _obj(c, oid)
        cust, at = obj.get("customer", {}).get("id"), ms(dec["decided_at"])
        anytime = at is None or (crash is not None and at >= crash - skew)
        have: Counter[str] = Counter()
        for other, took in c.took.items():
            t = times[other]
            replayed = crash is not None and t is not None and t >= crash - skew
            if _obj(c, other).get("customer", {}).get("id") == cust and (
                anytime
                or t is None
                or t <= at + skew  # type: ignore[operator]
                or (replayed and _received_ms(c, other) <= at + skew)  # type: ignore[operator]
            ):
                have += per_sku(took)
        reasons = [
            have[sku] + q > cap
            for sku, q in ordered(obj).items()
            for cap in (lm.get(sku) for lm in lim)
            if cap is not None
        ]
        if not any(reasons):
            caps = [{sku: lm.get(sku) for sku in ordered(obj)} for lm in lim]
            c.fail("limit.unjustified", f"{oid!r} rejected limit_exceeded: {cust!r} ordered "
                   f"{dict(ordered(obj))}, had {dict(have)}, limits {caps}")  # fmt: skip


def locks_and_presales(c: Checker) -> None:
    _presales_and_pickups(c)
    _pickups_ended(c)
    _channel_removed(c)
    _kept(c)
    _locks(c)


def _presales_and_pickups(c: Checker) -> None:
    """No non-VIP bought before a pre-sale's end (by either catalog); a pickup ships from its
    store."""
    vip = _rule(c, "vip_presale_until")
    for oid, took in c.took.items():
        obj = _obj(c, oid)
        paid = ms(obj.get("paid_at"))
        if not took or paid is None:
            continue
        for sku in per_sku(took):
            untils = [ms(v.get(sku)) for v in vip]
            if not obj["customer"].get("vip") and all(u is not None for u in untils):
                if paid < min(u for u in untils if u is not None):
                    c.fail("vip.breached", f"{oid!r}: non-VIP {sku} paid before the pre-sale end")
        dec = c.decision.get(oid)
        store = obj.get("delivery", {}).get("store")
        if dec and dec["status"] == "accepted" and obj.get("delivery", {}).get("mode") == "pickup":
            if {(s["location"], s["mode"]) for s in dec["shipments"]} != {(store, "pickup")}:
                c.fail("pickup.wrong", f"{oid!r}: pickup at {store!r}, {dec['shipments']}")


def _pickups_ended(c: Checker) -> None:
    """A pickup at a store whose pickup the reload ended, judged by the reloaded catalog alone
    (fast mode: every batch that held its id began after the reload), is rejected for the
    first reason that catalog gives (``admission.precheck``): pickup_unavailable, unless its
    channel or a SKU is unknown (or it is invalid). One decided before the reload keeps that
    decision, a replay after a crash too: one outcome per order (``outcome.two_decisions``),
    its units conserved (``stock.conservation``); one in the reload's window either."""
    after, cats = c.ob.after_reload, c.ob.catalogs
    if after is None or len(cats) < 2:
        return
    ended, new = pickups(cats[0]) - pickups(cats[-1]), cats[-1]
    channels, skus = {ch["id"] for ch in new["channels"]}, {s["sku"] for s in new["skus"]}
    for oid in sorted(after & set(c.decision)):
        obj, dec = _obj(c, oid), c.decision[oid]
        delivery = obj.get("delivery") or {}
        if delivery.get("mode") != "pickup" or delivery.get("store") not in ended:
            continue
        if (dec["status"], dec.get("reason")) == ("rejected", "invalid"):
            continue  # (the decoder's refusal comes first)
        want = (
            "unknown_channel"
            if obj.get("channel") not in channels
            else "unknown_sku"
            if any(ln.get("sku") not in skus for ln in obj.get("lines", []))
            else "pickup_unavailable"
        )
        if (dec["status"], dec.get("reason")) != ("rejected", want):
            c.fail("pickup.ended", f"{oid!r}: pickup at {delivery['store']!r}, ended by the "
                   f"reload before it was judged, yet {dec['status']} {dec.get('reason') or ''}"
                   f" (want rejected {want})")  # fmt: skip


def _channel_removed(c: Checker) -> None:
    """An order of a channel the reload removed, judged by the reloaded catalog alone (fast
    mode: every batch that held its id began after the reload), is rejected unknown_channel
    (``admission.precheck``'s first reason), unless it is invalid. One decided before keeps
    its decision (``_kept``; ``outcome.two_decisions``, ``stock.conservation``)."""
    after, cats = c.ob.after_reload, c.ob.catalogs
    if after is None or len(cats) < 2:
        return
    gone = {ch["id"] for ch in cats[0]["channels"]} - {ch["id"] for ch in cats[-1]["channels"]}
    for oid in sorted(after & set(c.decision)):
        channel, dec = _obj(c, oid).get("channel"), c.decision[oid]
        got = (dec["status"], dec.get("reason"))
        if channel in gone and got not in (("rejected", "invalid"), REFUSED):
            c.fail("channel.removed", f"{oid!r}: channel {channel!r}, removed by the reload "
                   f"before it was judged, yet {got[0]} {got[1] or ''} (want rejected "
                   "unknown_channel)")  # fmt: skip


def _kept(c: Checker) -> None:
    """An order a decide.lua call took units for before the reload, its run dying before the
    records (fast mode's aim), keeps that decision under the reloaded catalog: accepted or
    reserved (where a location has a daily capacity, maybe moved or rejected for it after;
    never refused by the catalog)."""
    capacity = any("daily_capacity" in loc for cat in c.ob.catalogs for loc in cat["locations"])
    for oid in sorted(c.ob.kept):
        dec = c.decision.get(oid)
        if dec is None or dec["status"] in ("accepted", "reserved"):
            continue  # (none: decided and cancelled in one batch; else outcome.missing)
        if not capacity or dec.get("reason") in ("unknown_channel", "unknown_sku"):
            c.fail("channel.replay", f"{oid!r}: decided (its units taken) before the reload, "
                   f"its run died before the record; then {dec['status']} "
                   f"{dec.get('reason') or ''}")  # fmt: skip


def _locks(c: Checker) -> None:
    """Other channels took no more of a locked SKU, before the lock's end, than was theirs."""
    given: Counter[str] = Counter()
    for back in c.back.values():
        given += per_sku(back)
    for oid in c.written_off:  # (a sold_out re-route gave the order's other units back)
        given += per_sku(c.rerouted_back(oid))
    for sku in c.ob.catalogs[0]["skus"]:
        for lock in sku.get("channel_locks", []):
            until, name = ms(lock["until"]), sku["sku"]
            others = sum(
                per_sku(took)[name]
                for oid, took in c.took.items()
                if _obj(c, oid).get("channel") != lock["channel"]
                and (ms(_obj(c, oid).get("paid_at")) or 0) < (until or 0)
            )
            pool = sum(c.ob.base.get(name, {}).values()) - lock["qty"] + given[name]
            pool += c.moves.added(name)  # (receipts, counts that found more: anyone's)
            if others > max(pool, 0):
                c.fail("lock.breached", f"{name}: other channels took {others} before the "
                       f"lock's end; at most {max(pool, 0)} were theirs")  # fmt: skip


def first_n(c: Checker) -> None:
    camps = c.ob.catalogs[-1].get("campaigns") or []
    if not camps:
        return
    camp = camps[0]
    entries = [e for e in c.ob.ranks if e[0] == camp["id"]]
    rank_of = _ranks(c, entries)
    view = c.ob.gifts or {}
    if view.get("pending"):
        c.fail("firstn.pending", f"{view['pending']} candidates never settled")
    unacked = view.get("settled", 0) - len(entries)
    if unacked > 0:  # settled and released, but not in the ranks `onestock gifts` lists
        c.fail("firstn.unacked", f"drained, `onestock gifts` says {view['settled']} ranks "
               f"settled, but lists {len(entries)}: winners missing from it")  # fmt: skip
    _gifts(c, camp, rank_of, view.get("ended_early_at"), unacked)
    _rank_order(c, entries, camp["sku"], camp["lateness_ms"])


def _ranks(c: Checker, entries: list[Rank]) -> dict[str, int]:
    """Order id -> its rank: each rank given once, 1.. without a gap, to accepted orders."""
    for rank, k in Counter(e[2] for e in entries).items():
        if k > 1:
            c.fail("firstn.rank_twice", f"rank {rank} given {k} times")
    rank_of = {e[1]: e[2] for e in entries}
    if sorted(rank_of.values()) != list(range(1, len(rank_of) + 1)):
        c.fail("firstn.rank_gap", f"ranks {sorted(rank_of.values())}")
    for oid in rank_of:
        if not c.accepted(oid):
            c.fail("firstn.rank_to_rejected", f"{oid!r} holds rank {rank_of[oid]}")
    return rank_of


def _gifts(
    c: Checker, camp: dict[str, Any], rank_of: dict[str, int], ended: int | None, unacked: int
) -> None:
    """Every accepted buyer of the campaign SKU ranked (until N are); a gift exactly to the
    ranks up to N, while the gift stock lasts."""
    n, sku = camp["first_n"], camp["sku"]
    full = ended is not None or sum(1 for r in rank_of.values() if r <= n) >= n
    for oid, rec in c.final.items():
        g = rec.get("gift") or (  # (a re-route's later versions: gift null, it stands)
            next((r["gift"] for r in c.versions.get(oid, []) if r.get("gift")), None)
            if rec["status"] == "accepted"
            else None
        )
        holds = rec["status"] == "accepted" and sku in per_sku(units(rec["shipments"]))
        if unacked > 0 and oid not in rank_of:
            continue  # (reported above)
        if holds and oid not in rank_of and not full:  # (once N are ranked, no more are)
            c.fail("firstn.unsettled", f"{oid!r} accepted with {sku}, never ranked")
        if g and (rank_of.get(oid) != g["rank"] or g["rank"] > n or not holds):
            c.fail("firstn.gift", f"{oid!r}: gift {g}, rank {rank_of.get(oid)}, N {n}")
        if holds and not g and ended is None and rank_of.get(oid, n + 1) <= n:
            c.fail("firstn.gift", f"{oid!r} holds rank {rank_of[oid]} <= {n}, but no gift")


def _rank_order(c: Checker, entries: list[Rank], sku: str, late_ms: int) -> None:
    """A rank marked late had an earlier order of its shard paid more than the lateness
    after it; the ranks on time follow (paid_at, order id)."""

    def hostile(e: Ev) -> bool:
        return (e.obj or {}).get("paid_at") in BAD_TIMES

    def paid(e: Ev) -> int:
        return ms((e.obj or {}).get("paid_at")) or 0

    # the event that made each order a candidate: its order, or the payment that paid it
    # (ranked by that payment's paid_at)
    made = {oid: c.paid_by.get(oid) or e for oid, e in c.first.items()}
    buyers = [e for e in c.first.values() if sku in ordered(e.obj or {})]
    buyers += [e for e in c.evs if e.kind == "paid"]  # (every payment's paid_at counts)
    for _, oid, rank, _, late in entries:
        e = made.get(oid)
        if e is None or not late or hostile(e):
            continue
        if not any(o.shard == e.shard and o.i < e.i and not hostile(o)
                   and paid(o) > paid(e) + late_ms for o in buyers):  # fmt: skip
            c.fail("firstn.late", f"{oid!r} (rank {rank}) marked late, but no earlier order of "
                   f"its shard was paid more than {late_ms} ms after it")  # fmt: skip
    seq = sorted(
        (rank, oid) for _, oid, rank, _, late in entries
        if not late and oid in made and not hostile(made[oid])
    )  # fmt: skip
    keys = [(paid(made[oid]), oid.encode(), rank) for rank, oid in seq]
    for a, b in zip(keys, keys[1:], strict=False):
        if a[:2] > b[:2]:
            c.fail("firstn.order", f"rank {a[2]} paid {a[0]} ({a[1]!r}) before rank {b[2]} "
                   f"paid {b[0]} ({b[1]!r})")  # fmt: skip
            break


def alerts(c: Checker) -> None:
    thresholds = {
        s["sku"]: s.get("low_stock_threshold")
        for s in c.ob.catalogs[-1]["skus"]
        if s["sku"] != GIFT
    }
    for a in c.ob.alerts:
        thr, left = thresholds.get(a["sku"]), a["remaining"]
        if a["reason"] == "back_in_stock" and thr is not None and left > thr:
            continue  # (an addition: the alert closed by a restock)
        if thr is None or left > thr or (a["reason"] == "sold_out") != (left == 0):
            c.fail("alert.wrong", f"{a} (threshold {thr})")
    sold = Counter[str]()
    for took in c.took.values():
        sold += per_sku(took)
    for sku, thr in thresholds.items():
        total = c.ob.stock.get(sku, {}).get("total")
        if thr is None or total != 0 or not sold[sku]:
            continue
        if not any(a["sku"] == sku and a["reason"] == "sold_out" for a in c.ob.alerts):
            c.fail("alert.no_sold_out", f"{sku} sold out (threshold {thr}), no sold_out alert")
