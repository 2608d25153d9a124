"""Trimming the output streams (state/ledger.py, docs/memory.md): records every reader is
past go, the audit still adds up, and orders no version can come for any more are settled
into totals, so the records' memory stops growing."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

import state.ledger
from onestock.domain.errors import OnestockError
from onestock.domain.protocol import SEP
from onestock.domain.records import iso_ms
from onestock.ops import services as ops
from state import keys
from state.outbox import Outbox
from state.store import Store
from tests.conftest import load, onestock
from tests.helpers import decide, order, stock
from tests.test_memory import WINDOW_S, catalog, pushed_and_drained, window_env

LOADED = {"TEE": {"wh-sh": 100}}


def _acknowledge_all(box: Outbox, group: str) -> int:
    """A downstream consumer that has handled every record so far."""
    n = 0
    while got := box.read_group(group, "wms-1", dict.fromkeys(range(box.k), ">"), 100):
        box.ack(group, ((e.shard, e.id) for e in got))
        n += len(got)
    return n


def _kept(store: Store) -> list[bytes]:
    return list(store.r.scan_iter(match=f"{keys.PREFIX}:*:kept:*"))


def test_acknowledged_records_are_trimmed_and_settled_and_the_audit_adds_up(
    cli_env: dict[str, str], url: str
) -> None:
    """A dataflow with a window of seconds and a consumer group: what the group acknowledged
    is trimmed (a later cancel of a trimmed order still counts right), and three windows on
    the old orders are settled into totals; the audit's figures stay those of every record."""
    env = window_env(cli_env)
    store = Store.connect(url)
    load(store, catalog())

    def push_and_drain(*evs: dict[str, Any]) -> None:
        pushed_and_drained(env, *evs)

    def now() -> str:
        return iso_ms(int(time.time() * 1000))

    push_and_drain(order("a", ("TEE", 2), paid_at=now()), order("b", ("TEE", 3), paid_at=now()))
    k = store.shards.shard_count()
    box = Outbox(store.r, k)
    box.create_group("wms", ["0-0"] * k)
    assert _acknowledge_all(box, "wms") >= 1
    push_and_drain({"type": "cancel", "order_id": "b"}, order("c", ("TEE", 1), paid_at=now()))
    assert sorted(r.order_id for r in ops.records(store, k)) == ["b", "c"], "a's entry trimmed"
    assert _kept(store), "the trimmed orders are kept, folded"
    audit = ops.audit(store, k, LOADED)
    assert (audit.records, audit.accepted, audit.rejected["cancelled"]) == (3, 2, 1), audit
    assert audit.oversold == 0 and audit.duplicates == 0
    assert stock(store, "TEE") == {"wh-sh": 97}

    g = int(time.time() * 1000) // (WINDOW_S * 1000)  # the dataflow's generation now
    while time.time() * 1000 < (g + 3) * WINDOW_S * 1000 + 300:  # the sweep deletes g + 1
        time.sleep(0.2)
    _acknowledge_all(box, "wms")
    push_and_drain(order("d", ("TEE", 1), paid_at=now()))
    time.sleep(1.1)  # (an entry written within a second of a sweep holds its shard's settling
    onestock("run", "--until-drained", "--workers", "1", env=env, timeout=120)  # one look)
    assert int(store.r.get(keys.GEN_SWEPT) or -1) >= g + 1
    assert not _kept(store) or all(int(k_.rpartition(b":")[2]) > g for k_ in _kept(store)), (
        "three windows on, the old orders are settled"
    )
    assert [r.order_id for r in ops.records(store, k)] == ["d"]
    audit = ops.audit(store, k, LOADED)
    assert (audit.records, audit.accepted, audit.rejected["cancelled"]) == (4, 3, 1), audit
    assert audit.oversold == 0 and audit.duplicates == 0
    assert stock(store, "TEE") == {"wh-sh": 96}
    settled: Counter[str] = Counter()
    for s in range(k):
        raw: Any = store.r.hgetall(keys.settled_totals(s))
        settled.update({f.decode(): int(v) for f, v in raw.items()})
    assert (settled["a"], settled[f"u{SEP}TEE{SEP}wh-sh"]) == (2, 3), "a, b, c settled"


def test_folding_is_exact_when_two_processes_race_and_settling_counts_each_order_once(
    store: Store,
) -> None:
    """A fold that read a mark another process moved writes nothing; a settle run twice
    (two processes) adds each order once; the audit of the folded, trimmed stream is the
    audit of the whole one."""
    load(store, catalog())
    ops.fix_shards(store, 1)
    decide(store, [order("a", ("TEE", 2)), order("b", ("TEE", 3))])
    decide(store, [{"type": "cancel", "order_id": "b"}, order("c", ("TEE", 1))])
    whole = ops.audit(store, 1, LOADED)
    ledger = store.ledger
    assert ledger.fold(0, entries=1) == 2  # the first batch
    mark: Any = store.r.hget(keys.tally(0), "mark")
    assert ledger.fold(0, entries=1) == 2  # the second
    now = store.r.hgetall(keys.tally(0))
    # a process that read the first mark folds the second batch again: its compare fails
    assert ledger._fold(keys=[keys.tally(0)], args=[mark, "9-9", 2, 0, 1, 1, 0, 0]) == 0
    assert store.r.hgetall(keys.tally(0)) == now
    assert ledger.trim(0, f"{2**63}-0") == 2
    assert ops.audit(store, 1, LOADED).oversold == 0
    hi = int(store.r.hget(keys.tally(0), "hi") or -1)
    store.sweeper.mark(hi, 1)  # (as if the generation were swept)
    assert ledger.settle(1) is False and ledger.settle(1) is False  # all settled, once
    raw: Any = store.r.hgetall(keys.settled_totals(0))
    assert {f.decode(): int(v) for f, v in raw.items()} == {
        "a": 2, f"u{SEP}TEE{SEP}wh-sh": 3, f"r{SEP}cancelled": 1}  # fmt: skip
    after = ops.audit(store, 1, LOADED)
    for f in ("records", "accepted", "rejected", "duplicates", "oversold", "gifts"):
        assert getattr(after, f) == getattr(whole, f), f
    assert not _kept(store)


def test_records_exported_to_a_file_are_trimmed_where_no_reader_is_configured(
    cli_env: dict[str, str], url: str, tmp_path: Path
) -> None:
    """No consumer group, no subscriber: a plain export trims nothing; one with
    --mark-exported lets the next run trim what the file holds (and only that)."""
    store = Store.connect(url)
    load(store, catalog())
    onestock("orders", "push", "-", input=orjson.dumps(order("a", ("TEE", 2))), env=cli_env)
    onestock("run", "--until-drained", "--workers", "1", env=cli_env, timeout=120)
    onestock("fulfilments", "--out", str(tmp_path / "plain.jsonl"), env=cli_env)
    bad = onestock("fulfilments", "--mark-exported", env=cli_env, check=False)
    assert bad.returncode != 0 and b"--mark-exported goes with --out" in bad.stderr
    onestock("fulfilments", "--out", str(tmp_path / "day1.jsonl"), "--mark-exported", env=cli_env)
    assert [orjson.loads(x)["order_id"] for x in (tmp_path / "day1.jsonl").read_bytes().split()]
    onestock("orders", "push", "-", input=orjson.dumps(order("b", ("TEE", 1))), env=cli_env)
    onestock("run", "--until-drained", "--workers", "1", env=cli_env, timeout=120)
    k = store.shards.shard_count()
    assert [r.order_id for r in ops.records(store, k)] == ["b"], "a, exported, is trimmed"
    audit = ops.audit(store, k, LOADED)
    assert (audit.records, audit.accepted, audit.oversold) == (2, 2, 0), audit


def test_a_process_with_another_window_does_not_fold(store: Store) -> None:
    """The kept generations are numbered by the first folder's window: another window
    (a changed ONESTOCK_IDEMPOTENCY_DAYS) is refused in one line, nothing written."""
    load(store, catalog())
    ops.fix_shards(store, 1)
    decide(store, [order("a", ("TEE", 2))])
    store.r.set(keys.LEDGER_WINDOW, 86_400_000)  # a one-day window folded first
    with pytest.raises(OnestockError, match="idempotency window of 86400000 ms"):
        store.ledger.fold(0)
    assert not _kept(store) and not store.r.exists(keys.tally(0))


def test_an_audit_read_while_a_settle_is_half_way_counts_each_order_once(
    store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process settles part of a generation between the audit's read of the totals
    and its read of the kept orders: the settle moves the tally on, the audit reads again."""
    load(store, catalog())
    ops.fix_shards(store, 1)
    decide(store, [order("a", ("TEE", 2)), order("b", ("TEE", 3))])
    ledger = store.ledger
    ledger.fold_all(0)
    ledger.trim(0, f"{2**63}-0")
    store.sweeper.mark(int(store.r.hget(keys.tally(0), "hi") or -1), 1)
    whole = ops.audit(store, 1, LOADED)
    monkeypatch.setattr(state.ledger, "SETTLE_CHUNK", 1)  # one order per settle call
    other = Store.connect(url).ledger
    first = other._settle_call

    def half_way(ks: list[str], args: list[Any]) -> int:
        if args[1] == "1":  # (the generation's last call: not made yet)
            raise KeyboardInterrupt
        return first(ks, args)

    monkeypatch.setattr(other, "_settle_call", half_way)
    scan = ledger._scan

    def racing(key: str) -> Any:
        monkeypatch.setattr(ledger, "_scan", scan)
        with pytest.raises(KeyboardInterrupt):
            other.settle(1)
        return scan(key)

    monkeypatch.setattr(ledger, "_scan", racing)
    got = ops.audit(store, 1, LOADED)
    assert (got.records, got.accepted, got.oversold) == (whole.records, whole.accepted, 0)
