"""Cancellations and returns of a shard batch (docs/intake.md "Cancellations", "Returns").

Both arrive on the order's shard (the shard follows the order id), so one worker applies
them in arrival order, after the batch's orders are decided and before its outputs are
written: a crash in between replays them, and every step is idempotent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from dataflows.gifts import Settler
from onestock.domain import events
from onestock.domain.protocol import RS, SEP, Code, ProtocolError, code_of
from onestock.domain.records import allocations, pack
from state import keys
from state.conn import Waiter, parse_id
from state.keys import public
from state.store import Store

# The state a return finds its order in when no order of that id came before it: not a
# stored code (the other states are outcomes and registry values: ``Code``).
UNKNOWN_ORDER = "?"
# what a return of an order in this state is refused for (its first letter)
_REFUSALS = {
    UNKNOWN_ORDER: "no such order",
    Code.REJECTED: "the order was rejected",
    Code.CAMPAIGN_REJECTED: "the order was rejected",
    Code.CANCELLED: "the order was cancelled",
    Code.RESERVED: "the order is not paid",
    Code.EXPIRED: "the order expired unpaid",
}
# Per line of a return, return_units.lua answers (state/lua/return_units.lua):
APPLIED_BEFORE = 0  # the return was applied before: nothing changes
APPLIED = 1  # applied now: the units are back
CANCELLED_BEFORE = 2  # refused: a cancel gave the order's units of the SKU back
MORE_THAN_SHIPPED = 3  # refused: the SKU would get back more than shipped
REFUSED_WITH = 4  # refused: another line of the same return was
_HELD = Code.HELD.encode()  # a registry value's first byte while its record is held
# undo_units.lua's `returned` of another bucket's allocation of a hot SKU (placed, not given)
_ANOTHER_BUCKET = -1
_RESTOCK_CODES = {APPLIED_BEFORE, APPLIED, CANCELLED_BEFORE, MORE_THAN_SHIPPED, REFUSED_WITH}

# (SKU, order id, return digest, location, qty, units of the SKU shipped): one line of a
# return_units.lua call
_Line = tuple[str, str, str, str, int, int]
# where each line of a return went in the calls: (slot, index in its call, line of the return)
_Refs = list[tuple[int, int, int]]


class _Checked(NamedTuple):
    """A return whose order may take it back, as far as the order's state tells."""

    eid: str
    raw: bytes
    ret: events.Return
    shipped: dict[str, int]  # units shipped per SKU (a hot SKU's buckets count as the SKU)
    digest: str


class _Sent(NamedTuple):
    """A return sent to return_units.lua."""

    eid: str
    raw: bytes
    ret: events.Return
    digest: str
    refs: _Refs


class _Counted(NamedTuple):
    """The returns judged on the counts read (``Aftersale._counted``)."""

    sent: list[_Sent]
    lines: dict[int, list[_Line]]  # per slot: the lines of its return_units.lua call
    copies: list[tuple[str, bytes, str]]  # (entry id, raw, digest) of a copy in the batch


def _digest(r: events.Return) -> str:
    """A return's identity: its ``return_id`` when it has one, else the same order, location
    and lines are the same return."""
    key = SEP.join([r.order_id, r.location, *(f"{ln.sku}:{ln.qty}" for ln in r.lines)])
    if r.return_id is not None:  # (RS: no line can hold it, so no return without one matches)
        key = f"{key}{RS}{r.return_id}"
    return hashlib.sha1(key.encode()).hexdigest()[:24]


def _unheld(value: str) -> str:
    """A registry value's outcome: a campaign order's (``Code.HELD``, or ``CANDIDATE`` once
    released) as any other's."""
    return value[1:] if value[:1] in (Code.HELD, Code.CANDIDATE) else value


def _as_accepted(outcome: str) -> str:
    """An order's outcome as it was when it was accepted: a cancelled one that kept its
    allocations ("C" + allocations) reads as accepted with them."""
    if outcome[:1] == Code.CANCELLED and len(outcome) > 1:
        return Code.ACCEPTED + outcome[1:]
    return outcome


def _accepted(outcome: str) -> bool:
    """Whether an order's outcome (or registry value, unheld) is accepted; an unknown code
    raises."""
    code = code_of(outcome)
    if code is Code.ACCEPTED or code is Code.RESERVED:  # (a reserved order holds units too)
        return True
    if code in (Code.REJECTED, Code.CAMPAIGN_REJECTED, Code.CANCELLED, Code.EXPIRED):
        return False
    raise ProtocolError(f"an order's outcome {outcome[:40]!r}")


def _refusal(state: str) -> str | None:
    """Why a return of an order in ``state`` (its outcome, or UNKNOWN_ORDER) is refused;
    None: the order was accepted."""
    reason = _REFUSALS.get(state[:1])
    if reason is None and code_of(state) is not Code.ACCEPTED:
        raise ProtocolError(f"a return's order in state {state[:40]!r}")
    return reason


def _shipped(outcome: str) -> dict[str, int]:
    """Units per SKU of an accepted outcome (a hot SKU's bucket counts as the SKU)."""
    f = outcome.split(SEP)
    shipped: dict[str, int] = {}
    for i in range(1, len(f) - 2, 3):
        sku = public(f[i + 1])
        shipped[sku] = shipped.get(sku, 0) + int(f[i + 2])
    return shipped


def _not_shipped(r: events.Return, shipped: dict[str, int]) -> str | None:
    """Why ``r`` is refused for a line of a SKU its order did not ship, if it has one."""
    for j, ln in enumerate(r.lines):
        if ln.sku not in shipped:
            return f"{ln.sku!r} was not shipped in this order - at `$.lines[{j}].sku`"
    return None


def _new_lines(
    r: events.Return,
    shipped: dict[str, int],
    answers: Iterator[tuple[bytes | None, bytes | None]],
    so_far: dict[tuple[str, str], int],
) -> tuple[list[tuple[int, str, int]], str | None]:
    """The lines (index, SKU, qty) of ``r`` not applied before, and why they would give back
    more than shipped (None: they would not). ``answers``: per line, the units of its SKU
    back before and whether the return was applied; ``so_far``: units back per (order id,
    SKU), read or counted in this batch."""
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
    return lines, refused


def _script_refusal(
    r: events.Return, refs: _Refs, codes: dict[int, list[Any]], lines: dict[int, list[_Line]]
) -> str | None:
    """Why return_units.lua refused ``r`` (its lines at ``refs``), None: it did not."""
    for slot, i, j in refs:
        code = int(codes[slot][i])
        if code == CANCELLED_BEFORE:
            return "the order was cancelled"
        if code == MORE_THAN_SHIPPED:
            shipped = lines[slot][i][5]
            return (
                f"{r.lines[j].sku}: more would come back than the {shipped} shipped"
                f" - at `$.lines[{j}].qty`"
            )
        if code not in _RESTOCK_CODES:
            raise ProtocolError(f"return_units.lua answered {code} for {r.order_id!r}")
    return None


def _refused(eid: str, raw: bytes, reason: str) -> list[Any]:
    """The dead letter of a refused return."""
    return [eid, events.text_of(raw), f"return refused: {reason}"]


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
            self.store.shards.registry,
            shard,
            [f for oid in earlier for f in (oid, keys.REG_CANCEL + oid, keys.REG_STATE + oid)],
        )
        undo: list[tuple[str, str]] = []  # (order id, its accepted outcome)
        out: list[str] = []
        # earlier orders to cancel: (order id, outcome, received ms, their latest version)
        later: list[tuple[str, str, str, int]] = []
        for oid in cancels:
            if oid in firsts:
                res = outcome.get(oid, "")
                if res[:1] == Code.ACCEPTED or res[:1] == Code.RESERVED:
                    undo.append((oid, res))
                    outcome[oid] = Code.CANCELLED + res[1:]
                    held_ids.discard(oid)
        for i, oid in enumerate(earlier):
            value, cancelled, version = state[3 * i : 3 * i + 3]
            if cancelled is not None:
                continue  # cancelled before: nothing more to do
            if value is None:  # its order has not come yet
                out += [keys.REG_EARLY_CANCEL + oid, Code.EARLY_CANCEL, ""]
                continue
            text = _unheld(value.decode())  # a campaign order: its gift, if any, goes back too
            if not _accepted(text):
                continue  # rejected (or cancelled): there is nothing to give back
            undo.append((oid, text))
            received = cancels[oid].partition("-")[0]
            later.append((oid, text, received, int(version) if version is not None else 1))
        if undo:  # before anything is given back: a settler that meets keys.REG_CANCELLING
            # releases no gift for the order (and puts back one it took)
            now = self.wait.call(self.store.shards.mark_cancelling, shard, [o for o, _ in undo])
            held = {oid for (oid, _), v in zip(undo, now, strict=True) if v and v[:1] == _HELD}
            for oid, text, received, version in later:
                # a record still held (never written: the cancel drops it) is replaced by
                # the cancellation, under its version; a written one is followed by it
                after = str(version if oid in held else version + 1)
                rec = pack(oid, "", "", "ship", received, decided, Code.CANCELLED + text[1:], after)
                out += [keys.REG_CANCEL + oid, Code.CANCELLED, rec]
        removed = self.undo(undo) if undo else {}
        self.return_gifts([(oid, res) for oid, res in undo if removed.get(oid, 0) == 0])
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
        (whatever happened to the order since: that record is its outcome). A replay of a
        return whose dead letter was written (a part of a batch written before a crash in a
        later part) is skipped too: judged again it could find an order that came after it,
        its record written in the meantime (the refusal is its outcome)."""
        marks = [(keys.REG_RETURN + _digest(r), keys.REG_DEAD + eid) for eid, _, r in returns]
        got = self.wait.call(self.store.shards.registry, shard, [f for m in marks for f in m])
        returns = [ret for i, ret in enumerate(returns) if got[2 * i : 2 * i + 2] == [None, None]]
        states = self._order_states(shard, returns, firsts, outcome, self._applied(returns))
        # per return: its order's outcome as the return finds it, or UNKNOWN_ORDER
        todo = _checked(returns, states, dead, locations)
        # [_Checked]: the returns their orders' states and shipments do not refuse
        if not todo:
            return []
        counted = self._counted(todo, dead)
        # _Counted: the returns the counts read do not refuse, their lines per slot
        restocked = self.wait.call(self.store.skus.return_units, list(counted.lines.values()))
        codes = dict(zip(counted.lines, restocked, strict=True))
        return _recorded(counted, codes, decided, dead)

    def _applied(self, returns: list[tuple[str, bytes, events.Return]]) -> set[str]:
        """The digests of the returns whose units an attempt that crashed before its records
        were written already put back (``keys.DEC_RETURN`` in a SKU's decision hash)."""
        wanted = [(ln.sku, r.order_id, _digest(r)) for _, _, r in returns for ln in r.lines]
        got = self.wait.call(self.store.skus.returned, wanted) if wanted else []
        return {w[2] for w, (_, done) in zip(wanted, got, strict=True) if done is not None}

    def _order_states(
        self,
        shard: int,
        returns: list[tuple[str, bytes, events.Return]],
        firsts: dict[str, tuple[str, events.Decoded]],
        outcome: dict[str, str],
        applied: set[str],
    ) -> list[str]:
        """Per return, its order's outcome as the return finds it: from this batch if the
        order came before it, else from the registry (cancelled if a cancel is recorded or
        under way); UNKNOWN_ORDER if none came before it. A return ``applied`` before (by an
        attempt that crashed) finds its order as it was then, accepted: its outcome must not
        change with the batching of its replay (a cancel now in the same batch is decided
        first, and gives back only what the return did not)."""
        earlier = list({r.order_id for _, _, r in returns if r.order_id not in firsts})
        got = self.wait.call(
            self.store.shards.registry,
            shard,
            [f for o in earlier for f in (o, keys.REG_CANCEL + o, keys.REG_CANCELLING + o)],
        )
        state = {o: got[3 * i : 3 * i + 3] for i, o in enumerate(earlier)}
        states: list[str] = []
        for eid, _, r in returns:
            oid = r.order_id
            done = _digest(r) in applied
            if oid in firsts:  # (an order later in the batch had not come yet for it)
                before = parse_id(firsts[oid][0]) < parse_id(eid)
                got = outcome.get(oid, Code.REJECTED) if before or done else UNKNOWN_ORDER
                states.append(_as_accepted(got) if done else got)
                continue
            value, x, k = state[oid]
            if value is None:
                states.append(UNKNOWN_ORDER)
            elif done:
                states.append(_as_accepted(_unheld(value.decode())))
            else:
                states.append(Code.CANCELLED if x or k else _unheld(value.decode()))
        return states

    def _counted(self, todo: list[_Checked], dead: list[list[Any]]) -> _Counted:
        """The returns judged on what each SKU of each order got back before (read) and on
        the returns before them in the batch: one that would give back more than shipped is
        refused; a copy of one applied in the batch changes nothing."""
        # what each SKU of each order got back before, and which returns were applied
        wanted = [(ln.sku, r.order_id, digest) for _, _, r, _, digest in todo for ln in r.lines]
        answers = iter(self.wait.call(self.store.skus.returned, wanted))
        so_far: dict[tuple[str, str], int] = {}
        apply: dict[int, list[_Line]] = {}
        sent: list[_Sent] = []
        in_batch: set[str] = set()  # returns applied in this batch (a copy changes nothing)
        copies: list[tuple[str, bytes, str]] = []
        for eid, raw, r, shipped, digest in todo:
            if digest in in_batch:
                for _ in r.lines:
                    next(answers)
                copies.append((eid, raw, digest))
                continue
            lines, refused = _new_lines(r, shipped, answers, so_far)
            if refused is not None:
                dead.append(_refused(eid, raw, refused))
                continue
            in_batch.add(digest)
            refs = []
            for j, sku, qty in lines:
                so_far[(r.order_id, sku)] += qty
                slot = self.store.slot(sku)
                part = apply.setdefault(slot, [])
                refs.append((slot, len(part), j))
                part.append((sku, r.order_id, digest, r.location, qty, shipped[sku]))
            sent.append(_Sent(eid, raw, r, digest, refs))
        return _Counted(sent, apply, copies)

    def undo(
        self, orders: list[tuple[str, str]], void: frozenset[str] = frozenset()
    ) -> dict[str, int]:
        """Give the units of accepted outcomes back (undo_units.lua per slot), per SKU only
        what is still out: the allocations minus the units returned before
        (keys.DEC_RETURNED <order id>), taken off the last allocations first, in the record's
        order (``records.allocations``); for the orders in ``void`` (rejected after their
        decision) what the decision took of the rules too. Returns per order the first-N
        candidacies removed.

        A hot-SKU bucket b > 0 keeps its allocations in its own slot, while the SKU's returns
        land in its own keys (bucket 0, with keys.DEC_RETURNED): a first phase there marks the
        order undone (keys.DEC_UNDONE: no return lands after it), reads the count in the same
        call, gives bucket 0's own allocations back and says how many returned units fall on
        each other bucket's (all of the SKU's allocations in the record's order, the last
        first); the second gives each bucket b the rest. A crash in between replays both
        (idempotent; the count cannot change once marked)."""
        allocs: list[tuple[str, list[tuple[str, str, int]], set[str]]] = []
        marks: list[tuple[str, list[tuple[str, str, int, int]]]] = []
        others: dict[tuple[str, str], list[str]] = {}  # (order, SKU) -> other buckets' names
        for oid, res in orders:
            part = [(sku, loc, qty) for loc, sku, qty in allocations(res)]  # the record's order
            hot = sorted({public(sku) for sku, _, _ in part if sku != public(sku)})
            allocs.append((oid, part, set(hot)))
            mark: list[tuple[str, str, int, int]] = []
            for h in hot:  # bucket 0 gives its own back and places the other buckets'
                mine = [(sku, loc, qty) for sku, loc, qty in part if public(sku) == h]
                mark += [
                    (h, loc, qty, 0 if sku == h else _ANOTHER_BUCKET) for sku, loc, qty in mine
                ]
                others[(oid, h)] = [sku for sku, _, _ in mine if sku != h]
            if mark:
                marks.append((oid, mark))
        back: dict[tuple[str, str], int] = {}  # (order id, bucket) -> its returned units
        for oid, skus, got in self.wait.call(self.store.skus.undo_units, marks, void):
            names = [name for sku in skus for name in others[(oid, sku)]]
            for name, n in zip(names, got[1 + len(skus) :], strict=True):
                back[(oid, name)] = back.get((oid, name), 0) + int(n)
        quads = [
            (oid, [(sku, loc, qty, back.get((oid, sku), 0)) for sku, loc, qty in part
                   if sku not in hot])  # (bucket 0's given back in the first phase)
            for oid, part, hot in allocs
        ]  # fmt: skip
        removed: dict[str, int] = {}
        for oid, _, got in self.wait.call(self.store.skus.undo_units, quads, void):
            removed[oid] = removed.get(oid, 0) + int(got[0])
        return removed

    def return_gifts(self, orders: list[tuple[str, str]]) -> None:
        """Cancelled orders (id, accepted outcome) of a campaign SKU that were no longer
        candidates: a gift taken for them goes back (a gift not taken yet is given back by
        the settler when it meets the cancellation)."""
        by_sku = self.settler.by_sku
        by_gift: dict[str, list[str]] = {}
        for oid, res in orders:
            skus = set(res.split(SEP)[2::3])
            for sku in skus & by_sku.keys():
                for c in by_sku[sku]:
                    by_gift.setdefault(c.gift_sku, []).append(f"{c.id}{SEP}{oid}")
        for gift_sku, keys_ in by_gift.items():
            self.wait.call(self.store.campaigns.return_gifts, gift_sku, keys_)


def _checked(
    returns: list[tuple[str, bytes, events.Return]],
    states: list[str],
    dead: list[list[Any]],
    locations: set[str],
) -> list[_Checked]:
    """The returns their order's state (``states``), the location and the order's
    shipments do not refuse; the refused ones become dead letters."""
    todo: list[_Checked] = []
    for (eid, raw, r), state in zip(returns, states, strict=True):
        reason = _refusal(state)
        if reason is None and r.location not in locations:
            reason = f"unknown location {r.location!r} - at `$.location`"
        shipped: dict[str, int] = {}
        if reason is None:
            shipped = _shipped(state)
            reason = _not_shipped(r, shipped)
        if reason is not None:
            dead.append(_refused(eid, raw, reason))
            continue
        todo.append(_Checked(eid, raw, r, shipped, _digest(r)))
    return todo


def _recorded(
    counted: _Counted, codes: dict[int, list[Any]], decided: str, dead: list[list[Any]]
) -> list[str]:
    """Registry triples of the returns return_units.lua applied; the ones its atomic check
    refused (an order cancelled, or more back than shipped, since the reads), and their
    copies in the batch, become dead letters: such a return changes nothing."""
    out: list[str] = []
    refused_now: dict[str, list[Any]] = {}  # digest -> the return's dead letter
    for eid, raw, r, digest, refs in counted.sent:
        why = _script_refusal(r, refs, codes, counted.lines)
        if why is not None:
            refused_now[digest] = letter = _refused(eid, raw, why)
            dead.append(letter)
            continue
        body = SEP.join(f"{r.location}{SEP}{ln.sku}{SEP}{ln.qty}" for ln in r.lines)
        outcome = f"{Code.RETURN}{SEP}{body}"
        rec = pack(r.order_id, "", "", "return", eid.partition("-")[0], decided, outcome)
        out += [keys.REG_RETURN + digest, Code.RETURN, rec]
    for eid, raw, digest in counted.copies:  # a copy of a refused return is refused too
        if digest in refused_now:
            dead.append([eid, events.text_of(raw), refused_now[digest][2]])
    return out
