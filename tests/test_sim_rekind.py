"""The randomized check's reload that removes or re-kinds a sales channel (feature
``reload_changes_channel``, ``onestock/sim/rekind.py``): what its histories hold, and a proof
that the checker's rules for it (``channel.removed``, ``channel.replay``) can fail."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import orjson
import pytest

from onestock.sim.fast import run_fast
from onestock.sim.history import Features, generate
from onestock.sim.model import Observed, check
from onestock.sim.rekind import changed, channel_aim, hot_skus

SMALL = Features.parse("none,+reload,+reload_changes_channel,+buckets")


def _removed(seed: int) -> set[str]:
    h = generate(seed, SMALL)
    assert h.reload is not None
    return {ch["id"] for ch in h.catalog["channels"]} - {ch["id"] for ch in h.reload["channels"]}


def test_the_reload_removes_or_rekinds_a_channel_its_hot_orders_name() -> None:
    """About half the histories change a channel, both ways and by removal; most of those
    have one-line orders of a hot SKU on it; about half of those aim a crash at it."""
    seen: Counter[str] = Counter()
    for seed in range(300):
        h = generate(seed, Features.parse("all,-capacity_rules"))
        chans = changed(h.catalog, h.reload)
        if not chans:
            continue
        seen["changed"] += 1
        new = {ch["id"]: ch["kind"] for ch in (h.reload or {})["channels"]}
        seen["removed"] += any(ch not in new for ch in chans)
        seen["to_store"] += any(new.get(ch) == "store" for ch in chans)
        seen["to_online"] += any(new.get(ch) == "online" for ch in chans)
        hot = hot_skus(h.catalog)
        seen["hot"] += any(
            b.get("channel") in chans and len(b["lines"]) == 1 and b["lines"][0]["sku"] in hot
            for e in h.events
            if e.kind == "order" and (b := e.body or {})
        )
        seen["aimed"] += channel_aim(h) is not None
    assert 100 < seen["changed"] < 200, seen
    assert min(seen["removed"], seen["to_store"], seen["to_online"]) > 20, seen
    assert seen["hot"] > seen["changed"] // 3, seen
    assert seen["changed"] // 4 < seen["aimed"] < seen["changed"] * 3 // 4, seen


def _obj(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("order_id"), str) else None


def _doctor(ob: Observed, how: str) -> Observed:
    """A kept order's decision made the catalog's refusal, or a refused order of the removed
    channel accepted."""
    bad = copy.deepcopy(ob)
    decided = ("accepted", "rejected", "reserved")
    if how == "refuse a kept order":
        oid = min(bad.kept, default=None)
        rec = next(r for r in bad.versions if r["order_id"] == oid and r["status"] in decided)
        rec.update(status="rejected", reason="unknown_channel", shipments=[])
    else:
        gone = {ch["id"] for ch in ob.catalogs[0]["channels"]} - {
            ch["id"] for ch in ob.catalogs[-1]["channels"]
        }
        of = {o["order_id"]: o.get("channel") for raw in ob.lines if (o := _obj(raw))}
        after = {oid for oid in bad.after_reload or () if of.get(oid) in gone}
        rec = next(r for r in bad.versions
                   if r["order_id"] in after and r.get("reason") == "unknown_channel")  # fmt: skip
        rec.update(status="accepted", reason=None)
    return bad


@pytest.mark.parametrize(
    ("how", "cls"),
    [("refuse a kept order", "channel.replay"), ("accept a refused one", "channel.removed")],
)
def test_the_checker_reports_a_changed_channels_orders_misjudged(
    url: str, how: str, cls: str
) -> None:
    """Real outputs of a history whose reload removed a channel, a crash aimed at a call
    that took units for one of its orders: the checker must see one thing changed."""
    seed = next(
        s for s in range(1000)
        if _removed(s) and (aim := channel_aim(generate(s, SMALL))) is not None and aim.hot
    )  # fmt: skip
    ob, _ = run_fast(generate(seed, SMALL), url)
    try:
        bad = _doctor(ob, how)
    except StopIteration:
        pytest.skip("this run's aim took nothing, or no order met the removed channel")
    before = {c for c, _ in check(ob)}
    after = check(bad)
    assert cls not in before, before
    assert any(c == cls for c, _ in after), after
