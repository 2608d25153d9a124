"""Metric tags: how a decided batch's counts reach the shard's counters hash.

The decider tags each record it hands to ``emit.lua`` with ``<received bucket><paid
bucket><status>``; the script counts the tags of the records it writes now (so a replay
after a crash counts nothing twice) under fields ``m<tag>``. ``onestock.metrics`` reads
them back as Prometheus counters and histograms.
"""

from __future__ import annotations

from bisect import bisect_left

# Latency histogram bounds (inclusive upper bounds, ms); the last bucket is +Inf.
BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000,
             3_600_000)  # fmt: skip
CHARS = "abcdefghijklmnop"  # bucket index -> one character (len(BOUNDS_MS) + 1 of them)
NONE = "-"  # no observation (an order without a usable paid_at; not an order at all)
ACCEPTED, REJECTED, CANCELLED = "A", "R", "C"  # order decisions ("R" + reason)
CANCELLATION, RETURN = "X", "T"  # after-sale records


def bucket(ms: int) -> str:
    """The bucket character of a latency in ms (le semantics: 5 ms falls in "le 0.005")."""
    return CHARS[bisect_left(BOUNDS_MS, ms)]


def index(char: str) -> int | None:
    return None if char == NONE else CHARS.index(char)
