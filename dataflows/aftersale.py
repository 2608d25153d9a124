"""Cancellations and returns of a shard batch (README "Cancellations", "Returns").

Both arrive on the order's shard (the shard follows the order id), so one worker applies
them in arrival order, after the batch's orders are decided and before its outputs are
written: a crash in between replays them, and every step is idempotent.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dataflows.gifts import Settler
from onestock.domain import events
from onestock.domain.records import pack
from state import keys
from state.conn import Waiter, parse_id
from state.keys import public, sku_slot
from state.store import Store

# what a return of an order in this state is refused for (registry value's first letter)
_REFUSALS = {
    "?": "no such order",
    "R": "the order was rejected",
    "r": "the order was rejected",
    "C": "the order was cancelled",
}


def _digest(r: events.Return) -> str:
    """A return's identity: the same order, location and lines are the same return."""
    key = "\x1f".join([r.order_id, r.location, *(f"{ln.sku}:{ln.qty}" for ln in r.lines)])
    return hashlib.sha1(key.encode()).hexdigest()[:24]


class Aftersale:
    def __init__(self, store: Store, wait: Waiter, settler: Settler) -> None:
        self.store = store
        self.wait = wait
        self.settler = settler

    def cancel(
        self,
        shard: int,
        cancels: dict[str, str],
        firsts: dict[str, tuple[str, events.Decoded]],
        outcome: dict[str, str],
        held_ids: set[str],
        decided: str,
    ) -> list[str]:
        """Apply the batch's cancels; returns registry triples for emit.lua. An order of this
        batch is cancelled before its record is written (its record says cancelled); an
        earlier one gets a second record that supersedes the first; an unknown one is
        remembered so it is never decided."""
        earlier = [oid for oid in cancels if oid not in firsts]
        state = self.wait.call(
            self.store.registry, shard, [f for oid in earlier for f in (oid, keys.REG_CANCEL + oid)]
        )
        undo: list[tuple[str, str]] = []  # (order id, its accepted outcome)
        out: list[str] = []
        for oid in cancels:
            if oid in firsts:
                res = outcome.get(oid, "")
                if res[:1] == "A":
                    undo.append((oid, res))
                    outcome[oid] = "C" + res[1:]
                    held_ids.discard(oid)
        for i, oid in enumerate(earlier):
            value, cancelled = state[2 * i], state[2 * i + 1]
            if cancelled is not None:
                continue  # cancelled before: nothing more to do
            if value is None:
                out += [keys.REG_EARLY_CANCEL + oid, "P", ""]  # its order has not come yet
                continue
            text = value.decode()
            if text[0] in "HG":  # a campaign order: its gift, if any, goes back too
                text = text[1:]
            if text[0] != "A":
                continue  # rejected: there is nothing to give back
            undo.append((oid, text))
            received = cancels[oid].partition("-")[0]
            rec = pack(oid, "", "", "ship", received, decided, "C" + text[1:])
            out += [keys.REG_CANCEL + oid, "C", rec]
        if undo:  # before anything is given back: a settler that meets keys.REG_CANCELLING
            # releases no gift for the order (and puts back one it took)
            self.wait.call(self.store.mark_cancelling, shard, [oid for oid, _ in undo])
        removed = self._undo(undo) if undo else {}
        self._return_gifts([(oid, res) for oid, res in undo if removed.get(oid, 0) == 0])
        return out

    def returns(
        self,
        shard: int,
        returns: list[tuple[str, bytes, events.Return]],
        firsts: dict[str, tuple[str, events.Decoded]],
        outcome: dict[str, str],
        decided: str,
        dead: list[list[Any]],
        locations: set[str],
    ) -> list[str]:
        """Apply the batch's returns in arrival order: units back at the named location, only
        for accepted orders, never more per SKU than shipped, each return once. Refused
        returns become dead letters with the reason; accepted ones, return records. A copy of
        a return whose record was written changes nothing and has no outcome of its own
        (whatever happened to the order since: that record is its outcome)."""
        written = self.wait.call(
            self.store.registry, shard, [keys.REG_RETURN + _digest(r) for _, _, r in returns]
        )
        returns = [ret for ret, rec in zip(returns, written, strict=True) if rec is None]
        earlier = list({r.order_id for _, _, r in returns if r.order_id not in firsts})
        got = self.wait.call(
            self.store.registry,
            shard,
            [f for o in earlier for f in (o, keys.REG_CANCEL + o, keys.REG_CANCELLING + o)],
        )
        state = {o: got[3 * i : 3 * i + 3] for i, o in enumerate(earlier)}
        todo: list[tuple[str, bytes, events.Return, dict[str, int], str]] = []
        for eid, raw, r in returns:
            oid = r.order_id
            if oid in firsts:  # (an order later in the batch had not come yet for it)
                before = parse_id(firsts[oid][0]) < parse_id(eid)
                text = outcome.get(oid, "R") if before else "?"
            else:
                value, x, k = state[oid]
                text = "?" if value is None else ("C" if x or k else value.decode().lstrip("HG"))
            reason = _REFUSALS.get(text[:1])
            if reason is None and r.location not in locations:
                reason = f"unknown location {r.location!r} - at `$.location`"
            shipped: dict[str, int] = {}
            if reason is None:
                f = text.split("\x1f")
                for i in range(1, len(f) - 2, 3):  # a hot SKU's bucket counts as the SKU
                    sku = public(f[i + 1])
                    shipped[sku] = shipped.get(sku, 0) + int(f[i + 2])
                for j, ln in enumerate(r.lines):
                    if ln.sku not in shipped:
                        reason = f"{ln.sku!r} was not shipped in this order - at `$.lines[{j}].sku`"
                        break
            if reason is not None:
                dead.append([eid, events.text_of(raw), f"return refused: {reason}"])
                continue
            todo.append((eid, raw, r, shipped, _digest(r)))
        if not todo:
            return []
        # what each SKU of each order got back before, and which returns were applied
        wanted = [(ln.sku, [keys.DEC_RETURNED + r.order_id, keys.DEC_RETURN + digest])
                  for _, _, r, _, digest in todo for ln in r.lines]  # fmt: skip
        answers = iter(self.wait.call(self.store.sku_fields, wanted))
        so_far: dict[tuple[str, str], int] = {}
        apply: dict[int, list[tuple[str, str, str, str, int, int]]] = {}
        sent: list[tuple[str, bytes, events.Return, str, list[tuple[int, int, int]]]] = []
        in_batch: set[str] = set()  # returns applied in this batch (a copy changes nothing)
        copies: list[tuple[str, bytes, str]] = []
        for eid, raw, r, shipped, digest in todo:
            if digest in in_batch:
                for _ in r.lines:
                    next(answers)
                copies.append((eid, raw, digest))
                continue
            lines = []
            refused = None
            want: dict[str, int] = {}  # units of each SKU this return gives back
            for j, ln in enumerate(r.lines):
                before, applied = next(answers)
                k = (r.order_id, ln.sku)
                so_far.setdefault(k, int(before or 0))
                if applied is None:
                    want[ln.sku] = want.get(ln.sku, 0) + ln.qty
                    if so_far[k] + want[ln.sku] > shipped[ln.sku] and refused is None:
                        refused = (
                            f"{ln.sku}: {want[ln.sku]} more would exceed the {shipped[ln.sku]}"
                            f" shipped ({so_far[k]} back already) - at `$.lines[{j}].qty`"
                        )
                    lines.append((j, ln.sku, ln.qty))
            if refused is not None:
                dead.append([eid, events.text_of(raw), f"return refused: {refused}"])
                continue
            in_batch.add(digest)
            refs = []
            for j, sku, qty in lines:
                so_far[(r.order_id, sku)] += qty
                part = apply.setdefault(sku_slot(sku), [])
                refs.append((sku_slot(sku), len(part), j))
                part.append((sku, r.order_id, digest, r.location, qty, shipped[sku]))
            sent.append((eid, raw, r, digest, refs))
        calls = []
        for part in apply.values():
            names: dict[str, int] = {}
            for sku, *_ in part:
                names.setdefault(sku, len(names) + 1)
            args: list[Any] = [len(names), *names, len(part)]
            for sku, oid, digest, loc, qty, shipped_qty in part:
                args += [names[sku], oid, digest, loc, qty, shipped_qty]
            calls.append((list(names), args))
        codes = dict(zip(apply, self.wait.call(self.store.return_units, calls) if calls else [],
                         strict=True))  # fmt: skip
        out: list[str] = []
        refused_now: dict[str, str] = {}
        for eid, raw, r, digest, refs in sent:
            # the script's atomic check (an order cancelled, or more back than shipped, since
            # the reads above): the return changes nothing and is refused
            why = next((self._refused(r, j, int(codes[slot][i]), apply[slot][i][5])
                        for slot, i, j in refs if int(codes[slot][i]) in (2, 3)), None)  # fmt: skip
            if why is not None:
                refused_now[digest] = f"return refused: {why}"
                dead.append([eid, events.text_of(raw), refused_now[digest]])
                continue
            body = "\x1f".join(f"{r.location}\x1f{ln.sku}\x1f{ln.qty}" for ln in r.lines)
            rec = pack(r.order_id, "", "", "return", eid.partition("-")[0], decided, "T\x1f" + body)
            out += [keys.REG_RETURN + digest, "T", rec]
        for eid, raw, digest in copies:  # a copy of a refused return is refused too
            if digest in refused_now:
                dead.append([eid, events.text_of(raw), refused_now[digest]])
        return out

    @staticmethod
    def _refused(r: events.Return, j: int, code: int, shipped: int) -> str:
        """The reason for return_units.lua's refusal ``code`` of line ``j`` of ``r``."""
        if code == 2:
            return "the order was cancelled"
        sku = r.lines[j].sku
        return f"{sku}: more would come back than the {shipped} shipped - at `$.lines[{j}].qty`"

    def _undo(self, orders: list[tuple[str, str]]) -> dict[str, int]:
        """Give the units of accepted outcomes back (undo_units.lua per slot), per SKU only
        what is still out: the allocations minus the units returned before (keys.DEC_RETURNED <order
        id>'), taken off the last allocations first. Returns per order the first-N
        candidacies removed.

        A hot-SKU bucket b > 0 keeps its allocations in its own slot, while the SKU's returns
        land in its own keys (bucket 0, with keys.DEC_RETURNED): a first phase marks the order
        undone there (keys.DEC_UNDONE: no return lands after it) and reads the count in the same
        call; the second gives the bucket back the rest. A crash in between replays both
        (idempotent; the count cannot change once marked)."""
        allocs: list[tuple[str, list[tuple[str, str, int]]]] = []
        marks: list[tuple[str, list[tuple[str, str, int, int]]]] = []
        for oid, res in orders:
            f = res.split("\x1f")
            part = [(f[i + 1], f[i], int(f[i + 2])) for i in range(1, len(f) - 2, 3)]
            allocs.append((oid, part))
            hot = {public(sku) for sku, _, _ in part if sku != public(sku)}
            if hot:
                marks.append((oid, [(sku, "", 0, 0) for sku in sorted(hot)]))
        back: dict[tuple[str, str], int] = {}  # (order id, SKU) -> units returned before
        for oid, skus, got in self._undo_calls(marks):
            for sku, n in zip(skus, got[1:], strict=True):
                back[(oid, sku)] = int(n)
        quads = [
            (oid, [(sku, loc, qty, back.get((oid, public(sku)), 0) if sku != public(sku) else 0)
                   for sku, loc, qty in part])
            for oid, part in allocs
        ]  # fmt: skip
        removed: dict[str, int] = {}
        for oid, _, got in self._undo_calls(quads):
            removed[oid] = removed.get(oid, 0) + int(got[0])
        return removed

    def _undo_calls(
        self, orders: list[tuple[str, list[tuple[str, str, int, int]]]]
    ) -> list[tuple[str, list[str], list[Any]]]:
        """undo_units.lua, one call per slot, for orders' (SKU, location, qty, returned)
        quadruples; per order and slot: (order id, its SKUs there, the script's answer)."""
        by_slot: dict[int, list[tuple[str, list[tuple[str, str, int, int]]]]] = {}
        for oid, part in orders:
            per_slot: dict[int, list[tuple[str, str, int, int]]] = {}
            for q in part:
                per_slot.setdefault(sku_slot(q[0]), []).append(q)
            for slot, quads in per_slot.items():
                by_slot.setdefault(slot, []).append((oid, quads))
        calls = []
        for batch in by_slot.values():
            names: dict[str, int] = {}
            for _, quads in batch:
                for sku, *_ in quads:
                    names.setdefault(sku, len(names) + 1)
            args: list[Any] = [len(names), *names, len(batch)]
            for oid, quads in batch:
                args += [oid, len(quads)]
                for sku, loc, qty, returned in quads:
                    args += [names[sku], loc, qty, returned]
            calls.append((list(names), args))
        if not calls:
            return []
        out = []
        for batch, res in zip(by_slot.values(), self.wait.call(self.store.undo_units, calls),
                              strict=True):  # fmt: skip
            for (oid, quads), r in zip(batch, res, strict=True):
                out.append((oid, list(dict.fromkeys(q[0] for q in quads)), r))
        return out

    def _return_gifts(self, orders: list[tuple[str, str]]) -> None:
        """Cancelled orders (id, accepted outcome) of a campaign SKU that were no longer
        candidates: a gift taken for them goes back (a gift not taken yet is given back by
        the settler when it meets the cancellation)."""
        by_sku = self.settler.by_sku
        by_gift: dict[str, list[str]] = {}
        for oid, res in orders:
            skus = set(res.split("\x1f")[2::3])
            for sku in skus & by_sku.keys():
                for c in by_sku[sku]:
                    by_gift.setdefault(c.gift_sku, []).append(f"{c.id}\x1f{oid}")
        for gift_sku, keys_ in by_gift.items():
            self.wait.call(self.store.campaigns.return_gifts, gift_sku, keys_)
