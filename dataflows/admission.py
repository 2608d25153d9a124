"""What the catalog and the day's capacities say of a batch's orders before any script:
``precheck`` (an unknown channel, SKU or pickup store; a store without pickup) and ``room``
(the locations whose day is full). Both judge only orders no run may have decided: the
decider sends the others to the scripts, which answer a replay with its stored outcome
(``Decider._judge``: ``FLAG_STORED``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dataflows.fulfilment import DAY_MS
from dataflows.refusals import NO_PICKUP
from dataflows.view import CatalogView
from onestock.domain import events
from onestock.domain.records import rejected
from onestock.domain.types import Order
from state.conn import parse_id
from state.store import Store

NO_ROOM = rejected("pickup_unavailable", "the store has no room for more orders today")


def precheck(view: CatalogView, o: Order) -> str | None:
    """Rejections that need only the catalog (the Lua script re-checks SKUs atomically)."""
    if o.channel not in view.channels:
        return rejected("unknown_channel")
    for ln in o.lines:
        if ln.sku not in view.skus:
            return rejected("unknown_sku")
    if o.delivery.mode == "pickup":
        store = o.delivery.store
        if store not in view.locations:
            return rejected(
                "invalid", f"delivery.store: unknown location {store!r} - at `$.delivery.store`"
            )
        if store not in view.router.pickup:
            return NO_PICKUP
    return None


def room(
    view: CatalogView,
    store: Store,
    call: Callable[..., Any],
    firsts: dict[str, tuple[str, events.Decoded]],
    todo: list[Order],
    mark: tuple[int, int],
) -> tuple[dict[str, frozenset[int]], dict[str, str]]:
    """Routing honours the daily capacities: per order, the location indices whose day (the
    order's arrival's) is full, to leave out of its ranking, so decide.lua never routes
    there; and the pickups at a full store, rejected before deciding. (An order that a
    concurrent worker's orders crowd out after this read is moved or rejected by
    ``Lifecycle.route``; so is an order at or before the shard's decide ``mark``, which a
    run that died before writing its record may have decided: decide.lua answers its
    replay with the stored outcome, its units still taken, and capacity.lua counts it
    once, so rejecting it here would lose those units. For the same reason the decider
    asks nothing here while a quarantine may have left a decision without its record:
    ``Decider._calm``.)"""
    places, index = view.places, view.router.index
    by_day: dict[int, list[Order]] = {}
    for o in todo:
        if parse_id(firsts[o.order_id][0]) <= mark:  # maybe decided: Lifecycle.route
            continue
        by_day.setdefault(int(firsts[o.order_id][0].partition("-")[0]) // DAY_MS, []).append(o)
    skip: dict[str, frozenset[int]] = {}
    turned: dict[str, str] = {}
    for day, orders in by_day.items():
        loads = call(store.shipments.loads, day, list(places.capacity))
        full = {loc for loc, n in loads.items() if n >= places.capacity[loc]}
        if not full:
            continue
        drop = frozenset(index[loc] for loc in full)
        for o in orders:
            if o.delivery.mode == "pickup" and o.delivery.store in full:
                turned[o.order_id] = NO_ROOM
            else:
                skip[o.order_id] = drop
    return skip, turned
