"""Metric tags: how a decided batch's counts reach the shard's counters hash.

The decider tags each record it hands to ``emit.lua`` with ``<received bucket><paid
bucket><status>``; the script counts the tags of the records it writes now (so a replay
after a crash counts nothing twice) under fields ``m<tag>``. ``onestock.ops.metrics`` reads
them back as Prometheus counters and histograms.
"""

from __future__ import annotations

from bisect import bisect_left

from onestock.domain.protocol import SEP, Code

# Latency histogram bounds (inclusive upper bounds, ms); the last bucket is +Inf.
BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000,
             3_600_000)  # fmt: skip
CHARS = "abcdefghijklmnop"  # bucket index -> one character (len(BOUNDS_MS) + 1 of them)
NONE = "-"  # no observation (an order without a usable paid_at; not an order at all)
FIELD = "m"  # a tag's field in the shard's counters hash: FIELD + tag
ACCEPTED, REJECTED, CANCELLED = Code.ACCEPTED, Code.REJECTED, Code.CANCELLED  # (+ reason)
CANCELLATION, RETURN = Code.CANCELLATION, Code.RETURN  # after-sale records
PAID, EXPIRED = Code.PAID, Code.EXPIRED  # a reserved order's later versions


def bucket(ms: int) -> str:
    """The bucket character of a latency in ms (le semantics: 5 ms falls in "le 0.005")."""
    return CHARS[bisect_left(BOUNDS_MS, ms)]


class Tagger:
    """The metric tags of one batch's records, decided at ``now`` (epoch ms): one call per
    record, with the buckets of the latencies and the status of an outcome cached (a batch's
    records share a few of each)."""

    def __init__(self, now: int) -> None:
        self.now = now
        self._buckets: dict[int, str] = {}
        self._reasons: dict[str, str] = {}  # rejected outcome -> its status

    def __call__(self, received_ms: int, paid_ms: int | None, outcome: str) -> str:
        """``<received bucket><paid bucket or NONE><status>``; status: the outcome's kind
        (``Code.ACCEPTED``, ...), or ``REJECTED`` and the reason of a rejection (an outcome
        ``REJECTED`` SEP reason [SEP detail])."""
        cache = self._buckets
        lat = self.now - received_ms
        r = cache.get(lat) or cache.setdefault(lat, bucket(lat))
        p = NONE
        if paid_ms is not None:
            lat = self.now - paid_ms
            p = cache.get(lat) or cache.setdefault(lat, bucket(lat))
        status = outcome[0]
        if status == REJECTED:
            status = self._reasons.get(outcome) or self._reasons.setdefault(
                outcome, REJECTED + outcome.split(SEP, 2)[1]
            )
        return r + p + status


def index(char: str) -> int | None:
    return None if char == NONE else CHARS.index(char)
