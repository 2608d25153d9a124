"""Hot-SKU buckets in Redis: one SKU's stock split over B stock hashes on different hash slots.

Bucket 0 is the SKU's own keys, bucket b > 0 the internal SKU ``keys.bucket(sku, b)``; each is
decided like any SKU by ``decide.lua``, so one hot SKU's decisions spread over B slots (B
Redis cores on a cluster). Units move between buckets by a transfer in two one-slot steps:
``lend.lua`` takes them out of the lender and keeps them under a transfer id until
``receive.lua`` has put them into the recipient (once, by a mark in the recipient's slot);
a crash between the two leaves the transfer in flight, counted by ``in_flight`` and finished
by ``reconcile``. Moves of one SKU take turns under a lease (``keys.lend_lock``), so a bucket
that took everything the others could lend holds every lendable unit of the SKU.

Safety stock lives in bucket 0 only (all units of a location with safety stock start there,
and bucket 0 keeps the floor when it lends): the other buckets hold no units that an online
channel may not take.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any, NamedTuple

import redis
from redis.lock import Lock

from onestock.domain.protocol import SEP
from onestock.domain.types import Sku
from state import keys, wire
from state.stock import Alone, fields, read_alone

LEASE_S = 5.0  # a crashed mover's lease ends after this; a move takes a few round trips
WAIT_S = 30.0  # one wait for the lease (the caller waits again while it is held)
_UP, _VERSION = keys.STOCK_UP.encode(), keys.RULES_VERSION.encode()


class Whole(NamedTuple):
    """``Buckets.read_whole``: per SKU its buckets' names, and the first round's replies."""

    names: list[tuple[str, list[str]]]
    got: list[Any]


def split(sku: Sku, floors: dict[str, int]) -> list[dict[str, int]]:
    """The stock of each bucket at a catalog load: every location's units spread evenly
    (the first buckets get the remainder); a location with safety stock stays in bucket 0."""
    n = sku.buckets
    out: list[dict[str, int]] = [{} for _ in range(n)]
    for loc, qty in sku.stock.items():
        if floors.get(loc, 0) > 0:
            out[0][loc] = qty
            continue
        for b in range(n):
            out[b][loc] = qty // n + (1 if b < qty % n else 0)
    return out


class Lease(Lock):
    """redis-py's Lock, which a lost reply does not keep out: when the reply to its SET NX is
    lost, the client sends it again and finds the key taken, by this very token. Without
    this check the mover waited for its own lease to expire (LEASE_S) before moving."""

    def do_acquire(self, token: str) -> bool:
        return super().do_acquire(token) or self.redis.get(self.name) == token


class Buckets:
    """Moves and reads of bucketed SKUs' stock (a part of ``state.store.Store``)."""

    def __init__(self, client: Any, lend: Any, receive: Any) -> None:
        self.r = client
        self._lend = lend
        self._receive = receive

    def lease(self, sku: str) -> Any:
        """The SKU's mover lease (redis-py's Lock: a token, an expiry, released by script)."""
        return self.r.lock(
            keys.lend_lock(sku), timeout=LEASE_S, sleep=0.002, blocking_timeout=WAIT_S,
            lock_class=Lease,
        )  # fmt: skip

    def borrow(
        self,
        targets: list[tuple[str, int, int, list[str]]],
        everything: bool,
        floors: dict[str, int],
        version: int,
    ) -> list[int] | None:
        """For each (SKU, its bucket count, bucket ``into``, locations): move units of the SKU
        from its other buckets into bucket ``into``: half of what each may lend at each of the
        locations, or (``everything``) all of it; bucket 0 keeps the safety stock
        (``floors``). Call it holding the SKUs' leases. Returns the units moved per target;
        None when a lender's rules come from a catalog newer than ``version`` (the plan of
        buckets is stale: it lent nothing). All lenders are asked in one round trip (on one
        server). First the transfers of the targets' SKUs a mover left in flight are
        finished (a crash, or a try of this very move cut by a lost connection and retried
        by the caller: no live mover holds one while the lease is held)."""
        for sku, count in {t[0]: t[1] for t in targets}.items():
            self.reconcile(sku, count)
        base = uuid.uuid4().hex
        mode = "all" if everything else "half"
        calls = []
        for t, (sku, count, into, locations) in enumerate(targets):
            for b in range(count):
                if b == into:
                    continue
                name = keys.bucket(sku, b)
                args: list[Any] = [f"{base}.{t}.{b}", into, mode, version]
                for loc in locations:
                    args += [loc, floors.get(loc, 0) if b == 0 else 0]
                calls.append((t, name, [keys.stock(name), keys.lent(name)], args))
        got = self._run(self._lend, [(ks, a) for _, _, ks, a in calls])
        moved: dict[int, list[tuple[str, str, list[Any]]]] = defaultdict(list)
        stale = False
        for (t, name, _, a), reply in zip(calls, got, strict=True):
            if isinstance(reply, bytes):  # (STALE)
                stale = True
            elif reply:
                moved[t].append((name, a[0], reply))
        done = []
        for t, lent in moved.items():
            sku, _, into, _ = targets[t]
            recipient = keys.bucket(sku, into)
            self._finish(recipient, [(tid, _pairs(flat)) for _, tid, flat in lent])
            done += [(name, tid) for name, tid, _ in lent]
        self._forget(done)
        if stale:
            return None
        return [
            sum(int(q) for _, _, flat in moved.get(t, []) for q in flat[1::2])
            for t in range(len(targets))
        ]

    def reconcile(self, sku: str, count: int) -> int:
        """Finish every transfer of ``sku`` left in flight (a crash between lending and
        receiving). Idempotent. Returns the transfers finished now."""
        pending = self._pending(sku, count)
        by_recipient: dict[int, list[tuple[str, list[tuple[str, int]]]]] = defaultdict(list)
        for _, tid, into, pairs in pending:
            by_recipient[into].append((tid, pairs))
        done = 0
        for into, transfers in by_recipient.items():
            done += self._finish(keys.bucket(sku, into), transfers)
        self._forget([(name, tid) for name, tid, _, _ in pending])
        return done

    def in_flight(self, sku: str, count: int) -> dict[str, int]:
        """Units of ``sku`` lent by one bucket and not yet received by another, per location."""
        pending = self._pending(sku, count)
        if not pending:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for _, tid, into, _ in pending:
            pipe.exists(keys.received(keys.bucket(sku, into), tid))
        out: dict[str, int] = defaultdict(int)
        for (_, _, _, pairs), there in zip(pending, pipe.execute(), strict=True):
            if not there:
                for loc, qty in pairs:
                    out[loc] += qty
        return dict(out)

    def pool(self, sku: str, count: int, state: dict[str, Any]) -> dict[str, int]:
        """Units per location of all of ``sku``'s buckets and its units in flight; ``state``
        holds each bucket's (levels, locks) read by name (the buckets b > 0 are taken out)."""
        levels = dict(state[sku][0])
        parts = [state.pop(keys.bucket(sku, b), ({}, []))[0] for b in range(1, count)]
        for part in [*parts, self.in_flight(sku, count)]:
            for loc, qty in part.items():
                levels[loc] = levels.get(loc, 0) + qty
        return levels

    def snapshot(self, counts: dict[str, int], version: int) -> dict[str, list[Alone]]:
        """Per bucketed SKU (``counts``: its bucket count), each bucket's stock hash as
        ``read_alone`` reads it, bucket 0 first, holding at least the units every bucket
        held at one moment, with none in flight then; a SKU left out cannot be told so (a
        transfer in flight, units that came in during the read, a bucket missing, its rules
        written by a catalog newer than ``version``).

        Two round trips (``read_whole``, then ``confirm``): every bucket's stock hash and
        its transfers in flight, then, once all of those are answered, every bucket's count
        again (``keys.STOCK_UP``: moved by every script that gives a bucket units or lends
        its units; lib_stock.lua ``add_units``). Between its two reads a bucket whose count
        did not move could only lose units (sales), so at the moment between the rounds it
        held at most what was read; and no transfer was in flight then (a lend moves the
        lender's count, one lent before the first read still shows in flight unless it was
        received, which moves the recipient's count). No lease, no script: a sold-out hot
        SKU's orders are refused on this read like any other SKU's (dataflows/refusals.py),
        while the other buckets keep selling."""
        return self.confirm(self.read_whole(counts), version)

    def read_whole(self, counts: dict[str, int]) -> Whole:
        """``snapshot``'s first round trip."""
        names = [(sku, [keys.bucket(sku, b) for b in range(n)]) for sku, n in counts.items()]
        first: list[tuple[Any, ...]] = []
        for _, buckets in names:
            first += [("HGETALL", keys.stock(b)) for b in buckets]
            first += [("HLEN", keys.lent(b)) for b in buckets]
        return Whole(names, wire.reads(self.r, first))

    def confirm(self, whole: Whole, version: int) -> dict[str, list[Alone]]:
        """``snapshot``'s second round trip (after ``read_whole`` answered) and its answer."""
        names, got = whole
        up = [("HGET", keys.stock(b), keys.STOCK_UP) for _, buckets in names for b in buckets]
        again = iter(wire.reads(self.r, up))
        out: dict[str, list[Alone]] = {}
        at = 0
        for sku, buckets in names:
            n = len(buckets)
            hashes, lent = got[at : at + n], got[at + n : at + 2 * n]
            at += 2 * n
            after = [next(again) for _ in buckets]
            if any(lent) or not all(hashes):
                continue
            flat = [fields(h) for h in hashes]
            if any(f.get(_UP) != a or int(f.get(_VERSION, 0)) > version
                   for f, a in zip(flat, after, strict=True)):  # fmt: skip
                continue
            parts = [read_alone(f) for f in flat]
            if all(parts):
                out[sku] = parts  # type: ignore[assignment]
        return out

    def gathered(
        self, counts: dict[str, int], where: dict[str, set[str]]
    ) -> dict[str, list[str]] | None:
        """Per SKU of ``where`` (``counts``: its bucket count), the change counts
        (``keys.STOCK_UP``) of its buckets b > 0, read in one round trip; None unless none of
        them holds a unit at the SKU's locations in ``where`` and no bucket has units in
        flight (a count's guard, dataflows/movements.py: gather again first)."""
        commands: list[tuple[Any, ...]] = []
        for sku, locations in where.items():
            names = [keys.bucket(sku, b) for b in range(counts[sku])]
            commands += [("HMGET", keys.stock(b), keys.STOCK_UP, *sorted(locations))
                         for b in names[1:]]  # fmt: skip
            commands += [("HLEN", keys.lent(b)) for b in names]
        got = iter(wire.reads(self.r, commands))
        out: dict[str, list[str]] = {}
        for sku in where:
            n = counts[sku]
            reads = [next(got) for _ in range(n - 1)]
            lent = [next(got) for _ in range(n)]
            if any(lent) or any(int(u or 0) for r in reads for u in r[1:]):
                return None
            out[sku] = [_up(r[0]) for r in reads]
        return out

    def change_counts(self, counts: dict[str, int], skus: list[str]) -> dict[str, list[str]]:
        """Per SKU, the change counts (``keys.STOCK_UP``) of its buckets b > 0."""
        commands = [("HGET", keys.stock(keys.bucket(sku, b)), keys.STOCK_UP)
                    for sku in skus for b in range(1, counts[sku])]  # fmt: skip
        got = iter(wire.reads(self.r, commands))
        return {sku: [_up(next(got)) for _ in range(1, counts[sku])] for sku in skus}

    def clear_in_flight(self, sku: str, count: int) -> None:
        """Forget transfers in flight (a catalog load replaces the stock they came from)."""
        self.r.delete(*(keys.lent(keys.bucket(sku, b)) for b in range(count)))

    # -- helpers ---------------------------------------------------------------------------

    def _pending(self, sku: str, count: int) -> list[tuple[str, str, int, list[tuple[str, int]]]]:
        names = [keys.bucket(sku, b) for b in range(count)]
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.lent(name))
        out = []
        for name, entries in zip(names, pipe.execute(), strict=True):
            for tid, value in entries.items():
                into, _, rest = value.decode().partition(SEP)
                out.append((name, tid.decode(), int(into), _pairs(rest.split(SEP))))
        return out

    def _finish(self, recipient: str, transfers: list[tuple[str, list[tuple[str, int]]]]) -> int:
        ks = [keys.stock(recipient), *(keys.received(recipient, tid) for tid, _ in transfers)]
        args: list[Any] = [len(transfers)]
        for _, pairs in transfers:
            args.append(len(pairs))
            for loc, qty in pairs:
                args += [loc, qty]
        return int(self._receive(keys=ks, args=args))

    def _forget(self, items: list[tuple[str, str]]) -> None:
        """The lenders forget these received transfers (lender, transfer id); the marks of
        them stay (receive.lua): a late finisher of the same transfer finds them."""
        if items:
            pipe = self.r.pipeline(transaction=False)
            for name, tid in items:
                pipe.hdel(keys.lent(name), tid)
            pipe.execute()

    def _run(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One-slot script calls: pipelined on one server, one by one on a cluster."""
        if not isinstance(self.r, redis.Redis):
            return [script(keys=ks, args=a) for ks, a in calls]
        pipe = self.r.pipeline(transaction=False)
        for ks, a in calls:
            script(keys=ks, args=a, client=pipe)
        return pipe.execute()  # type: ignore[no-any-return]


def _pairs(flat: list[Any]) -> list[tuple[str, int]]:
    """[loc, qty, loc, qty, ...] (bytes or str) -> [(loc, qty), ...]"""

    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    return [(text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _up(value: bytes | str | None) -> str:
    """A change count as read ("" for a bucket without a stock hash)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
