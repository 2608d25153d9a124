"""Feature ``reload_changes_channel``: now and then the mid-burst reload removes a sales
channel that orders name, or changes a channel's kind (store <-> online), and in half such
histories fast mode aims a crash at a ``decide.lua`` call that took units for an order of
that channel, the reload in between (``aim_channel``).

What it reaches: an order a run decided before it died, replayed under a catalog that now
refuses it, gets its stored outcome (``admission.precheck``, ``Decider._refused``:
FLAG_STORED); a one-line order of a hot SKU goes to the bucket holding its outcome, which
the channel's kind chose (store: bucket 0, online: shard % B) and the reload may no longer
name (``Borrowing._decided_in``). So the changed channel is steered onto one-line orders of
the hot SKUs (feature ``buckets``), and half the aimed crashes first kill the run before a
fresh call (nothing decided, the decide mark moved): its replay is decided by a call that
stores its outcome in the bucket's decision hash, not the shard's journal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onestock.domain.types import Order
from state import keys

if TYPE_CHECKING:
    from onestock.sim.faults import Faults
    from onestock.sim.history import History
    from state.store import Store

# how the reload changes a channel (the ones a hot SKU's replay meets twice as often)
CHANGES = ("remove_store", "remove_store", "remove_online", "to_online", "to_store", "to_store")
TOOK = b"AGV"  # outcome codes of an order whose units were taken (accepted, candidate, reserved)


def change_channel(seed: int, h: History) -> None:
    """In half the histories with a reload (drawn from a source of its own: the rest of the
    history stays as without it), the reload removes a channel or changes its kind; a
    removed one is not a channel lock's (the catalog would refuse the lock)."""
    if h.reload is None or not h.features.reload_changes_channel:
        return
    rng = random.Random(seed * 5_000_011 + 7)
    if rng.random() >= 0.5:
        return
    how = rng.choice(CHANGES)
    channel = _target(rng, h.catalog, h.reload, how)
    if channel is None:
        return
    if how.startswith("remove"):
        h.reload["channels"] = [ch for ch in h.reload["channels"] if ch["id"] != channel]
    else:
        for ch in h.reload["channels"]:
            if ch["id"] == channel:
                ch["kind"] = "online" if how == "to_online" else "store"
    _steer(rng, h, channel)


def _target(rng: random.Random, cat: dict[str, Any], new: dict[str, Any], how: str) -> str | None:
    """The channel ``how`` changes: of the kind it removes or re-kinds."""
    locked = {lk["channel"] for c in (cat, new) for s in c["skus"]
              for lk in s.get("channel_locks", [])}  # fmt: skip
    want = "store" if how in ("remove_store", "to_online") else "online"
    keep = locked if how.startswith("remove") else set()
    pool = [ch["id"] for ch in new["channels"]
            if ch.get("kind", "online") == want and ch["id"] not in keep]  # fmt: skip
    return rng.choice(sorted(pool)) if pool else None


def hot_skus(cat: dict[str, Any]) -> set[str]:
    """The catalog's SKUs split into buckets."""
    return {s["sku"] for s in cat["skus"] if s.get("buckets", 1) > 1}


def _steer(rng: random.Random, h: History, channel: str) -> None:
    """Most one-line orders of a hot SKU made orders of ``channel`` (in place: their copies
    with them)."""
    hot = hot_skus(h.catalog)
    known = {ch["id"] for ch in h.catalog["channels"]}
    for e in h.events:
        body = e.body or {}
        if e.kind != "order" or body.get("channel") not in known or not _one_hot(body, hot):
            continue
        if rng.random() < 0.6:
            body["channel"] = channel


def _one_hot(body: dict[str, Any], hot: set[str]) -> bool:
    lines = body.get("lines")
    return isinstance(lines, list) and len(lines) == 1 and lines[0].get("sku") in hot


def changed(cat: dict[str, Any], new: dict[str, Any] | None) -> set[str]:
    """The channels the reload removed or gave another kind."""
    if new is None:
        return set()
    kinds = [{ch["id"]: ch.get("kind", "online") for ch in c["channels"]} for c in (cat, new)]
    return {ch for ch, kind in kinds[0].items() if kinds[1].get(ch) != kind}


@dataclass
class ChannelAim:
    """A crash aimed at the orders of the channels the reload changes (``aim_channel``)."""

    channels: set[str]
    hot: set[str]  # only one-line orders of these SKUs (none: any order of the channels)
    primed: bool  # False: first a crash before a fresh call naming such an order
    live: bool = True  # until the reload
    kept: set[str] = field(default_factory=set)  # orders the aimed call took units for

    def wants(self, o: Order) -> bool:
        if o.channel not in self.channels:
            return False
        return not self.hot or len(o.lines) == 1 and keys.public(o.lines[0].sku) in self.hot


def channel_aim(h: History) -> ChannelAim | None:
    """In half the histories whose reload changes a channel (its own draws), an aim at the
    channel's orders: at its one-line orders of a hot SKU where the history has some."""
    chans = changed(h.catalog, h.reload) if h.features.reload_changes_channel else set()
    rng = random.Random(h.seed * 31 + 29)
    if not chans or rng.random() >= 0.5:
        return None
    hot = hot_skus(h.catalog)
    if not any(
        (e.body or {}).get("channel") in chans and _one_hot(e.body or {}, hot)
        for e in h.events
        if e.kind == "order"
    ):
        hot = set()
    return ChannelAim(chans, hot, primed=rng.random() < 0.5)


def aim_channel(store: Store, faults: Faults, aim: ChannelAim, reload: Any) -> None:
    """Once, right after the first decide.lua call that took units for an order ``aim``
    wants, the reload (from another process), and a crash at the next command: the batch's
    records are not written, and its replay meets the changed channel. Unprimed, the run
    first dies before a fresh call naming such an order: its replay is not fresh."""
    decide = store.skus.decide

    def call(calls: list[list[Order]], args: Any) -> Any:
        named = aim.live and any(aim.wants(o) for orders in calls for o in orders)
        if not named:
            return decide(calls, args)
        if not aim.primed:
            aim.primed = True
            if args.fresh:  # dies at the call's first command: nothing decided
                faults.crash_at, faults.after_send = faults.count + 1, False
            return decide(calls, args)
        got = decide(calls, args)
        taken = {o.order_id for orders, res in zip(calls, got, strict=True)
                 for o, r in zip(orders, res, strict=True) if r[:1] in TOOK}  # fmt: skip
        if any(aim.wants(o) and o.order_id in taken for orders in calls for o in orders):
            aim.kept |= taken
            reload()  # (no longer live)
            faults.crash_at, faults.after_send = faults.count + 1, faults.rng.random() < 0.5
        return got

    store.skus.decide = call  # type: ignore[method-assign]
