"""Routing rules of the contract, computed in Python.

Python ranks the candidate locations for each order (great-circle distance, ties by lower
``priority`` then id; a customer without coordinates by priority); the Lua decision takes the
first candidate that still has the stock, so choice and decrement are one atomic step.
``plan`` is the same rule over a stock snapshot, used for orders whose SKUs span hash slots.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onestock.domain.types import Catalog, Line

EARTH_KM = 6371.0088
Allocation = tuple[str, str, int]  # (location, sku, qty)


class Router:
    """Ranks a catalog's locations for customers; rankings are little-endian uint16 strings."""

    def __init__(self, catalog: Catalog) -> None:
        # Pre-sort by (priority, id) so a stable sort on distance breaks ties as the contract says.
        locs = sorted(catalog.locations, key=lambda loc: (loc.priority, loc.id))
        if len(locs) > 65535:
            raise ValueError("at most 65535 locations")
        self.ids: list[str] = [loc.id for loc in locs]
        self.index: dict[str, int] = {loc_id: i for i, loc_id in enumerate(self.ids)}
        self.pickup: set[str] = {loc.id for loc in locs if loc.allows_pickup}
        has = np.array([loc.lat is not None and loc.lon is not None for loc in locs], dtype=bool)
        lat = np.array([loc.lat if loc.lat is not None else 0.0 for loc in locs], dtype=np.float64)
        lon = np.array([loc.lon if loc.lon is not None else 0.0 for loc in locs], dtype=np.float64)
        self._has_coords = has
        self._lat = np.radians(lat)
        self._lon = np.radians(lon)
        self._cos_lat = np.cos(self._lat)
        self.by_priority: bytes = np.arange(len(locs), dtype="<u2").tobytes()
        self._decoded: dict[bytes, list[str]] = {}
        # "priority" routing: lower priority first, nearest within a priority, then id
        self._priority = (
            np.array([loc.priority for loc in locs]) if catalog.routing == "priority" else None
        )

    def distances_km(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Great-circle distances, shape (customers, locations); inf where a location has none."""
        la = np.radians(lat)[:, None]
        lo = np.radians(lon)[:, None]
        h = (
            np.sin((self._lat - la) / 2) ** 2
            + np.cos(la) * self._cos_lat * np.sin((self._lon - lo) / 2) ** 2
        )
        d = 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
        d[:, ~self._has_coords] = np.inf
        return d

    def rank_batch(self, coords: list[tuple[float, float] | None]) -> list[bytes]:
        """One ranking per customer: nearest first; customers without coordinates by priority."""
        out: list[bytes] = [self.by_priority] * len(coords)
        idx = [i for i, c in enumerate(coords) if c is not None]
        if not idx or not self.ids:
            return out
        lat = np.fromiter((coords[i][0] for i in idx), dtype=np.float64, count=len(idx))  # type: ignore[index]
        lon = np.fromiter((coords[i][1] for i in idx), dtype=np.float64, count=len(idx))  # type: ignore[index]
        order = np.argsort(self.distances_km(lat, lon), axis=1, kind="stable")
        if self._priority is not None:  # a stable re-sort by priority keeps distance order
            by_prio = np.argsort(self._priority[order], axis=1, kind="stable")
            order = np.take_along_axis(order, by_prio, axis=1)
        order = order.astype("<u2")
        for row, i in zip(order, idx, strict=True):
            out[i] = row.tobytes()
        return out

    def decode(self, ranking: bytes) -> list[str]:
        """Location ids of a ranking (the same list object for the same ranking: read-only)."""
        ids = self._decoded.get(ranking)
        if ids is None:
            if len(self._decoded) >= 4096:  # customers in one area share rankings
                self._decoded.clear()
            ids = self._decoded[ranking] = [self.ids[i] for i in np.frombuffer(ranking, "<u2")]
        return ids


def plan(
    lines: list[Line],
    stock: dict[str, dict[str, int]],
    candidates: list[str],
    pickup_store: str | None,
    floors: dict[str, int] | None = None,
    fewest: bool = False,
) -> list[Allocation] | str:
    """Allocate an order all-or-nothing; returns allocations or a reject reason.

    Ship: the first candidate that holds every line; otherwise each line is taken from the
    candidates nearest first (a line may split). Pickup: the named store holds every line.
    ``floors``: units per location the order may not take (safety stock, online channels).
    ``fewest``: split over as few locations as possible (greedy), instead of nearest first.
    """
    floors = floors or {}

    def free(sku: str, loc: str) -> int:
        return stock[sku].get(loc, 0) - floors.get(loc, 0)

    levels: list[tuple[dict[str, int], int]] = []  # (the line's SKU's units, qty)
    for line in lines:
        units = stock.get(line.sku)
        if units is None:
            return "unknown_sku"
        levels.append((units, line.qty))
    if pickup_store is not None:
        if all(free(ln.sku, pickup_store) >= ln.qty for ln in lines):
            return [(pickup_store, ln.sku, ln.qty) for ln in lines]
        return "pickup_unavailable"
    for loc in candidates:  # the hot loop of the cross-slot path: no call per line
        floor = floors.get(loc, 0) if floors else 0
        for units, qty in levels:
            if units.get(loc, 0) - floor < qty:
                break
        else:
            return [(loc, ln.sku, ln.qty) for ln in lines]
    if fewest:
        return _split_fewest(lines, candidates, free)
    return _split_nearest(lines, candidates, free)


def _split_nearest(
    lines: list[Line], candidates: list[str], free: Callable[[str, str], int]
) -> list[Allocation] | str:
    """Each line from the candidates nearest first, as much as each has (a line may split)."""
    taken: list[Allocation] = []
    for line in lines:
        need = line.qty
        for loc in candidates:
            have = free(line.sku, loc)
            if have > 0:
                take = min(have, need)
                taken.append((loc, line.sku, take))
                need -= take
                if need == 0:
                    break
        if need:
            return "sold_out"
    # Group by location, nearest first, so shipments read in route order.
    rank = {loc: i for i, loc in enumerate(candidates)}
    taken.sort(key=lambda a: rank[a[0]])
    return taken


def _split_fewest(
    lines: list[Line], candidates: list[str], free: Callable[[str, str], int]
) -> list[Allocation] | str:
    """Again and again the location that can ship the most of what is missing (ties: the
    better ranked), all it can, until nothing is missing."""
    need = {ln.sku: ln.qty for ln in lines}
    used: set[str] = set()
    taken: list[Allocation] = []
    while any(need.values()):
        best, best_units = None, 0
        for loc in candidates:
            if loc in used:
                continue
            units = sum(min(max(free(sku, loc), 0), q) for sku, q in need.items())
            if units > best_units:
                best, best_units = loc, units
        if best is None:
            return "sold_out"
        used.add(best)
        for ln in lines:
            q = min(max(free(ln.sku, best), 0), need[ln.sku])
            if q:
                taken.append((best, ln.sku, q))
                need[ln.sku] -= q
    rank = {loc: i for i, loc in enumerate(candidates)}
    taken.sort(key=lambda a: rank[a[0]])
    return taken
