"""First-N gift settlement: ranks settled in Lua, gift units taken, held records released.

For each campaign SKU, one worker at a time (a lease in the SKU's slot):

1. ``settle.lua`` gives the next ranks to the candidates the campaign's watermark has passed
   (paid_at order, ties by order id) and lists every settled entry not yet acknowledged.
   The watermark is event time, per input shard (``Settler.watermark``): each worker
   reports, per shard, the greatest paid_at it has read and whether the shard has more to
   read; the slowest shard still reading holds the watermark back, so processing skew, a
   backlog or a restart cannot change who wins;
2. for the winners (rank <= first_n, campaign not ended), ``gift.lua`` takes one unit of the
   gift SKU each, in rank order, from the order's shipping location if it has one, else the
   nearest that has; at most once per winner (a retry gets the first answer); the first
   winner that finds none ends the campaign, and no later rank gets a gift;
3. ``release_held.lua`` writes each settled order's held record with its gift, on the
   order's shard (an order whose batch is not emitted yet waits for the next round);
4. ``settled_ack.lua`` moves the released entries to the campaign's ranks stream.

Every step is idempotent, so a crash anywhere repeats at most the steps after the last one
that took effect, with the same answers.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

from onestock.domain.protocol import GS, SEP, ProtocolError
from onestock.domain.sharding import shard_of_id
from onestock.domain.types import Campaign, Catalog
from state import keys
from state.store import Store

LEASE_MS = 3000  # a crashed holder blocks settling this long at most
EVERY_S = 0.1  # how often a worker settles while batches flow
BUDGET_S = 0.2  # at most this long per round (a round comes back for the rest)
MAX = 5000  # settle.lua's most entries per call
FRESH_MS = 2000  # a shard's progress report older than this no longer counts as idle
# release_held.lua's answer per order: its batch is not emitted yet (ask again later), its
# record released now, or before, or the order was cancelled (its record says so)
NOT_EMITTED, RELEASED, RELEASED_BEFORE, CANCELLED_SINCE = range(4)
_RELEASE_CODES = frozenset({NOT_EMITTED, RELEASED, RELEASED_BEFORE, CANCELLED_SINCE})


class _Settled(NamedTuple):
    """A settled entry of settle.lua: "<campaign> SEP <order id> SEP <rank> SEP <late 0/1>
    SEP <paid_at ms>"."""

    entry: str
    camp: str
    oid: str
    rank: int
    late: bool

    @classmethod
    def parse(cls, entry: str) -> _Settled:
        camp, rest = entry.split(SEP, 1)
        oid, rank, late, _paid = rest.rsplit(SEP, 3)
        return cls(entry, camp, oid, int(rank), late == "1")


class Settler:
    def __init__(self, store: Store, say: Callable[[str], None]) -> None:
        self.store = store
        self.say = say
        self.token = uuid.uuid4().hex
        self.last = 0.0
        self.by_sku: dict[str, list[Campaign]] = {}
        self.campaigns: dict[str, Campaign] = {}
        self.nearest: dict[str, list[str]] = {}  # location -> every location, nearest first
        self.shards = 0
        self.said: set[str] = set()  # campaigns whose end was announced by this worker

    def load(self, catalog: Catalog) -> None:
        self.by_sku = defaultdict(list)
        for c in catalog.campaigns:
            self.by_sku[c.sku].append(c)
        self.campaigns = {c.id: c for c in catalog.campaigns}
        coords = {loc.id: (loc.lat, loc.lon) for loc in catalog.locations}

        def km(a: str, b: str) -> float:
            (la1, lo1), (la2, lo2) = coords[a], coords[b]
            if la1 is None or la2 is None or lo1 is None or lo2 is None:
                return math.inf
            p1, p2, dl = math.radians(la1), math.radians(la2), math.radians(lo2 - lo1)
            dp = p2 - p1
            h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
            return 2 * 6371.0088 * math.asin(math.sqrt(min(1.0, h)))

        self.nearest = {a: sorted(coords, key=lambda b: (a != b, km(a, b), b)) for a in coords}

    def due(self) -> bool:
        return bool(self.by_sku) and time.monotonic() - self.last >= EVERY_S

    def run(self, force: bool = False) -> int:
        """One settlement round over every campaign SKU; returns the ranks acknowledged."""
        self.last = time.monotonic()
        if not self.by_sku:
            return 0
        if not self.shards:
            self.shards = self.store.shards.shard_count()
        acked = 0
        watermark, idle = self.watermark()
        for sku in list(self.by_sku):
            while True:
                got = self.store.campaigns.settle(sku, self.token, LEASE_MS, force, watermark, idle)
                if got is None or not got[1]:
                    break
                ended, entries = got
                done = self._finish(sku, ended, entries)
                acked += done
                if len(entries) < MAX or not done or time.monotonic() - self.last > BUDGET_S:
                    break
        return acked

    def watermark(self) -> tuple[int | None, bool]:
        """The input's event-time watermark and whether every shard is idle, from the
        shards' reports (``keys.PROGRESS``).

        A shard still reading (or whose report is older than ``FRESH_MS``: its worker may be
        restarting, lagging or cut off from Redis) holds the watermark at the greatest
        paid_at it has read: its unread orders may have been paid up to lateness_ms before
        that. Shards with nothing left to read do not hold it back; with every shard idle it
        is the greatest paid_at read anywhere (an order arriving now was paid at most
        lateness_ms before it). None: some shard still reading has not said how far."""
        reports = self.store.campaigns.progress()
        now = int(time.time() * 1000)
        reading: list[int | None] = []
        seen: list[int] = []
        for shard in range(self.shards):
            paid, state, wall = reports.get(shard, (None, 0, 0))
            if paid is not None:
                seen.append(paid)
            if state == 0 or (state == 1 and now - wall > FRESH_MS):
                reading.append(paid)
        if reading:
            return (None if None in reading else min(r for r in reading if r is not None)), False
        return (max(seen) if seen else None), True

    def _finish(self, sku: str, ended: set[str], entries: list[str]) -> int:
        """Steps 2 to 4 for settled entries of ``sku``'s campaigns (``ended``: those whose
        gift stock ran out); returns the entries acknowledged."""
        parsed = [_Settled.parse(e) for e in entries]
        gift_of = self._gifts(parsed, ended)
        # entry -> its gift: the location a unit was taken at, keys.GIFT_NONE, or "" (none)
        released = self._release(parsed, gift_of)
        # the entries whose held records are written; gift_of: GIFT_CANCELLED for those of
        # orders cancelled since
        done = [(p.entry, gift_of[p.entry]) for p in parsed if p.entry in released]
        if not done:
            return 0
        return self.store.campaigns.settled_ack(sku, done, head=len(done) == len(parsed))

    def _gifts(self, parsed: list[_Settled], ended: set[str]) -> dict[str, str]:
        """Each entry's gift, in rank order per campaign (entries are in settlement order
        already): a winner's unit of the gift SKU (``take_gifts``), from the order's
        shipping location if it has one, else the nearest that has; "" for the others."""
        ship_from = self._shipping_locations(
            [p.oid for p in parsed
             if p.camp in self.campaigns and p.rank <= self.campaigns[p.camp].first_n]
        )  # fmt: skip
        gift_of: dict[str, str] = {}
        by_gift: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
        winners: dict[str, list[str]] = defaultdict(list)
        for p in parsed:
            c = self.campaigns.get(p.camp)
            if c is None or p.camp in ended or p.rank > c.first_n:
                gift_of[p.entry] = ""
                continue
            loc = ship_from.get(p.oid)
            prefs = self.nearest.get(loc, []) if loc else sorted(self.nearest)
            by_gift[c.gift_sku].append((f"{p.camp}{SEP}{p.oid}", prefs))
            winners[c.gift_sku].append(p.entry)
        for gift_sku, wanted in by_gift.items():
            taken = self.store.campaigns.take_gifts(gift_sku, wanted)
            for e, loc in zip(winners[gift_sku], taken, strict=True):
                gift_of[e] = self._taken(e, loc, ended)
        return gift_of

    def _taken(self, entry: str, loc: str, ended: set[str]) -> str:
        """A winner's gift as ``take_gifts`` answered ``loc``: none once its campaign ended;
        the first winner that finds none left (keys.GIFT_NONE) ends the campaign."""
        camp = entry.split(SEP, 1)[0]
        if camp in ended:
            return ""
        if loc == keys.GIFT_NONE:  # the gift stock ran out here: the campaign ends
            ended.add(camp)
            if camp not in self.said:
                self.said.add(camp)
                at = entry.rsplit(SEP, 3)[1]
                self.say(f"campaign {camp}: gift stock ran out at rank {at}: it ends here")
        return loc

    def _release(self, parsed: list[_Settled], gift_of: dict[str, str]) -> set[str]:
        """Step 3: the held records written with their gifts on their shards; returns the
        entries released (now or before). An order cancelled after its rank was settled
        keeps the rank used; a gift taken for it goes back to the stock."""
        by_shard: dict[int, list[tuple[str, tuple[str, str, str]]]] = defaultdict(list)
        for e, camp, oid, rank, late in parsed:
            loc = gift_of[e]
            c = self.campaigns.get(camp)
            gift = (
                f"{camp}{GS}{c.gift_sku}{GS}{rank}{GS}{loc}"
                if c and loc not in ("", keys.GIFT_NONE)
                else ""
            )
            by_shard[shard_of_id(oid, self.shards)].append((e, (oid, gift, "1" if late else "")))
        released: set[str] = set()
        cancelled: dict[str, list[str]] = defaultdict(list)  # gift SKU -> winner keys
        for shard, items in by_shard.items():
            statuses = self.store.campaigns.release_held(shard, [item for _, item in items])
            for (e, _), status in zip(items, statuses, strict=True):
                if status not in _RELEASE_CODES:
                    raise ProtocolError(f"release_held.lua answered {status!r} for {e!r}")
                if status != NOT_EMITTED:
                    released.add(e)
                if status == CANCELLED_SINCE:  # the rank stays used
                    camp, oid = e.split(SEP, 2)[:2]
                    if gift_of[e] not in ("", keys.GIFT_NONE):
                        cancelled[self.campaigns[camp].gift_sku].append(f"{camp}{SEP}{oid}")
                    gift_of[e] = keys.GIFT_CANCELLED
        for gift_sku, winner_keys in cancelled.items():  # its gift goes back to the stock
            self.store.campaigns.return_gifts(gift_sku, winner_keys)
        return released

    def _shipping_locations(self, order_ids: list[str]) -> dict[str, str]:
        """The first location of each order's allocations (from its shard's registry)."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for oid in order_ids:
            by_shard[shard_of_id(oid, self.shards)].append(oid)
        out: dict[str, str] = {}
        for shard, oids in by_shard.items():
            for oid, value in zip(oids, self.store.shards.registry(shard, oids), strict=True):
                if value:
                    fields = value.decode().split(SEP)
                    if len(fields) > 1:
                        out[oid] = fields[1]
        return out
