"""The decoder: every raw event is exactly one of valid, invalid (record) or dead letter."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onestock.domain import events
from tests.helpers import order

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=200))
def test_any_bytes_decode_to_exactly_one_outcome(raw: bytes) -> None:
    d = events.decode(raw)
    assert isinstance(d, events.Valid | events.Invalid | events.Dead)
    if isinstance(d, events.Dead):
        assert d.reason and isinstance(d.raw, str)


@given(json_values)
def test_json_without_a_usable_order_id_is_a_dead_letter(value: object) -> None:
    if isinstance(value, dict):
        value.pop("order_id", None)
    d = events.decode(json.dumps(value).encode())
    assert isinstance(d, events.Dead)


@given(
    st.text(min_size=1, max_size=40).filter(str.isprintable),
    st.dictionaries(
        st.sampled_from(["channel", "customer", "lines", "paid_at", "delivery"]), json_values
    ),
)
def test_a_usable_order_id_always_ends_as_a_record(oid: str, fields: dict[str, object]) -> None:
    d = events.decode(json.dumps({**fields, "order_id": oid}).encode())
    assert isinstance(d, events.Valid | events.Invalid)
    if isinstance(d, events.Invalid):
        assert d.order_id == oid and d.detail


@given(
    st.builds(
        order,
        st.text(min_size=1, max_size=20).filter(str.isprintable),
        st.tuples(st.text(min_size=1, max_size=10).filter(str.isprintable), st.integers(1, 100)),
        lat=st.floats(-90, 90),
        lon=st.floats(-180, 180),
    )
)
def test_well_formed_orders_decode_valid_and_round_trip(o: dict[str, object]) -> None:
    d = events.decode(orjson.dumps(o))
    assert isinstance(d, events.Valid)
    assert d.order.order_id == o["order_id"]


@given(
    st.sampled_from(["channel", "customer.id", "lines[0].sku", "delivery.store"]),
    st.text(min_size=1, max_size=20).filter(lambda t: not t.isprintable()),
)
def test_an_unprintable_text_field_is_invalid_naming_the_field(path: str, bad: str) -> None:
    o = order("u1", ("SKU", 1), pickup="st-1")
    where, _, leaf = path.partition(".")
    if path == "lines[0].sku":
        o["lines"][0]["sku"] = bad  # type: ignore[index]
    elif leaf:
        o[where][leaf] = bad  # type: ignore[index]
    else:
        o[where] = bad
    d = events.decode(orjson.dumps(o))
    assert isinstance(d, events.Invalid), d
    assert d.detail.startswith(f"{path}: ") and f"`$.{path}`" in d.detail
    assert d.detail.isprintable()


@pytest.mark.parametrize(
    "paid_at",
    ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1999-12-31T23:59:59.999Z",
     "2062-11-11T00:00:00Z"],
)  # fmt: skip
def test_a_paid_at_outside_the_window_is_invalid(paid_at: str) -> None:
    o = {**order("w1", ("SKU", 1)), "paid_at": paid_at}
    d = events.decode(orjson.dumps(o), now_ms=1_794_355_200_000)  # 2026-11-11
    assert isinstance(d, events.Invalid)
    assert "outside the accepted window" in d.detail and "`$.paid_at`" in d.detail


def test_a_paid_at_up_to_a_day_ahead_is_still_valid() -> None:
    o = {**order("w2", ("SKU", 1)), "paid_at": "2026-11-11T23:59:59Z"}
    assert isinstance(events.decode(orjson.dumps(o), now_ms=1_794_355_200_000), events.Valid)


@pytest.mark.parametrize("oid", [r"a\ud800", r"a\u001fb", r"\u2028"])
def test_an_unprintable_order_id_is_a_dead_letter_and_has_no_shard_key(oid: str) -> None:
    raw = b'{"order_id": "' + oid.encode() + b'", "channel": "tmall"}'
    assert isinstance(events.decode(raw), events.Dead)
    assert events.order_id_of(raw) is None


GOOD = order("g1", ("SKU", 1))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not an object"),
        (b"42", "not an object"),
        (b'"order"', "not an object"),
        (b"null", "not an object"),
        (b"{}", "no order_id"),
        (b'{"order_id": null}', "no order_id"),
        (b'{"order_id": 7}', "order_id is not a string"),
        (b'{"order_id": ""}', "order_id must be"),
        (orjson.dumps({"order_id": "x" * 300}), "order_id must be"),
        (b'{"order_id": "a\\u0000b"}', "control characters"),
        (
            b'{"type": "return", "order_id": "g1"}',
            "not a return: Object missing required field `lines`",
        ),
        (b'{"type": "refund", "order_id": "g1"}', "unsupported event type 'refund'"),
    ],
)
def test_garbage_becomes_a_dead_letter_with_its_reason(raw: bytes, reason: str) -> None:
    d = events.decode(raw)
    assert isinstance(d, events.Dead)
    assert reason in d.reason


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"lines": []}, "$.lines"),
        ({"lines": [{"sku": "A", "qty": 0}]}, "$.lines[0].qty"),
        ({"lines": [{"sku": "A", "qty": "1"}]}, "$.lines[0].qty"),
        ({"lines": [{"qty": 1}]}, "$.lines[0]"),
        ({"channel": 5}, "$.channel"),
        ({"customer": None}, "$.customer"),
        ({"customer": {"id": "c", "lat": 91, "lon": 0}}, "$.customer.lat"),
        ({"customer": {"id": "c", "lat": 30}}, "$.customer"),
        ({"paid_at": "yesterday"}, "$.paid_at"),
        ({"paid_at": "2026-11-11T00:00:00"}, "$.paid_at"),
        ({"delivery": {"mode": "teleport"}}, "$.delivery.mode"),
        ({"delivery": {"mode": "pickup"}}, "$.delivery.store"),
    ],
)
def test_invalid_orders_are_rejected_with_a_detail_naming_the_field(
    change: dict, where: str
) -> None:  # type: ignore[type-arg]
    d = events.decode(orjson.dumps({**GOOD, **change}))
    assert isinstance(d, events.Invalid), d
    assert d.order_id == "g1"
    assert where in d.detail, d.detail


def test_unknown_fields_are_ignored() -> None:
    d = events.decode(orjson.dumps({**GOOD, "coupon": "X", "customer": {"id": "c", "tier": 3}}))
    assert isinstance(d, events.Valid)


def test_infinity_is_not_json_so_the_event_is_a_dead_letter() -> None:
    d = events.decode(b'{"order_id": "i1", "channel": Infinity}')
    assert isinstance(d, events.Dead) and "not JSON" in d.reason


def test_integers_beyond_64_bits_still_leave_a_usable_order_id() -> None:
    d = events.decode(b'{"order_id": "big", "channel": 123456789012345678901234567890}')
    assert isinstance(d, events.Invalid) and "$.channel" in d.detail


def test_paid_at_is_parsed_once_per_text_and_judged_the_same_every_time() -> None:
    """paid_at texts are cached (a peak shares a few); a cached answer, valid or not, is
    the parse's, and the cache stays bounded."""
    for text, ms in [
        ("2026-11-11T00:00:01+08:00", 1794326401000),  # 2026-11-10T16:00:01Z
        ("1969-12-31T23:59:59Z", None),  # a time, but outside the accepted window
        ("2026-11-11T00:00:01", None),  # no offset
        ("yesterday", None),
    ]:
        for _ in range(2):
            d = events.decode(orjson.dumps(order("p1", ("SNEAKER", 1), paid_at=text)))
            if ms is None:
                assert isinstance(d, events.Invalid) and d.detail.startswith("paid_at: ")
            else:
                assert isinstance(d, events.Valid) and d.paid_ms == ms
    for i in range(events.PAID_CACHE + 10):
        events.decode(orjson.dumps(order("p", ("S", 1), paid_at=f"2026-11-11T00:00:00.{i:06d}Z")))
    assert len(events._paid_ms) <= events.PAID_CACHE


def test_an_unpaired_surrogate_escape_outside_the_order_id_makes_the_order_invalid() -> None:
    """msgspec refuses the escape; the event still has a usable order id: a record."""
    raw = orjson.dumps(order("s1", ("SKU", 1))).replace(b'"c-s1"', b'"c\\ud800"')
    d = events.decode(raw)
    assert isinstance(d, events.Invalid) and d.order_id == "s1" and d.detail.isprintable()


def test_a_return_with_an_unpaired_surrogate_escape_is_a_dead_letter() -> None:
    raw = b'{"type": "return", "order_id": "r1", "location": "wh\\ud800", "lines": []}'
    d = events.decode(raw)
    assert isinstance(d, events.Dead) and d.reason.startswith("not a return")


_PIECES = {
    "year": st.sampled_from(["1999", "2004", "2026", "2038", "2100", "0000", "20x6"]),
    "date": st.sampled_from(["-11-11", "-02-29", "-13-01", "-11-31", "-01-01"]),
    "sep": st.sampled_from(["T", "t", " ", "x"]),
    "clock": st.sampled_from(["00:00:00", "23:59:59", "23:59:60", "12:34:56", "24:00:00"]),
    "frac": st.one_of(
        st.just(""),
        st.from_regex(r"\A[.,][0-9]{0,8}\Z"),
        st.sampled_from([".12\u0663", ".1\u00b23", ". 12", ".000", ".999"]),
    ),
    "tz": st.sampled_from(
        [
            "Z",
            "z",
            "+08:00",
            "-05:00",
            "+0800",
            "+24:00",
            "",
            "+08:00:30",
            "+08:00:30.5",
            "-00:00",
            "+08",
            "Zx",
        ]
    ),  # fmt: skip
}


# the ends of the exact range; a burst's time; one below it where the float product is off
_MS = [*range(2**40 - 3, 2**40 + 3), *range(2**31 * 1000 - 3, 2**31 * 1000 + 3)]
_MS += [1_763_000_000_123, 1_099_511_427_781]


@given(st.fixed_dictionaries(_PIECES), st.sampled_from(_MS))
def test_paid_at_fast_path_equals_the_full_parse(p: dict[str, str], ms: int) -> None:
    """paid_at_ms (a whole second parsed once, its milliseconds added) answers exactly what
    rfc3339_ms does, for well-formed texts, malformed ones and the ends of its exact range."""
    from datetime import UTC, datetime, timedelta

    text = p["year"] + p["date"] + p["sep"] + p["clock"] + p["frac"] + p["tz"]
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    usual = at.isoformat(timespec="milliseconds").replace("+00:00", p["tz"] or "Z")
    for t in (text, usual):
        for _ in range(2):  # the second time from the cache
            assert events.paid_at_ms(t) == events.rfc3339_ms(t), t


def test_paid_at_parses_each_whole_second_once() -> None:
    events._paid_ms.clear()
    texts = [f"2026-11-11T00:00:01.{i:03d}+08:00" for i in range(1000)]
    assert [events.paid_at_ms(t) for t in texts] == [events.rfc3339_ms(t) for t in texts]
    assert list(events._paid_ms) == ["2026-11-11T00:00:01+08:00"]
    events._utc_s.clear()
    texts = [f"2026-11-11T00:00:01.{i:03d}Z" for i in range(1000)]
    assert [events.paid_at_ms(t) for t in texts] == [events.rfc3339_ms(t) for t in texts]
    assert list(events._utc_s) == ["2026-11-11T00:00:01"]
