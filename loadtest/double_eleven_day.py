"""A Double-Eleven day, compressed: ``--scale`` of a 20-million-order day replayed in the
run's duration, with its shape: the midnight rush (the first ten minutes of the day take 70%
of hour 0, which takes about 18% of the day), a quiet night, a working day, and the evening peak.

The rate follows from the scale and the duration, not from ``--target-rate``: 20,000,000 x
scale orders over the run (``onestock loadtest double_eleven_day --scale 0.0005 --seconds 60``
replays 10,000 orders in a minute, peaking near 3,000/s in its first 4 seconds). Times in
the orders are the real send times.
"""

from __future__ import annotations

from typing import Any

from loadtest import gate
from loadtest.common import Orders
from loadtest.users import buyers
from onestock import burst

DAY = 20_000_000
# share of the day's orders per hour (Tmall-like: midnight rush, night, day, evening peak)
HOURS = [
    0.18, 0.06, 0.03, 0.015, 0.01, 0.01, 0.012, 0.018, 0.025, 0.035, 0.038, 0.04,
    0.04, 0.038, 0.035, 0.034, 0.034, 0.036, 0.042, 0.048, 0.06, 0.065, 0.06, 0.05,
]  # fmt: skip
RUSH = 0.7  # of hour 0's orders, in its first ten minutes


def density(x: float) -> float:
    """Orders per unit of day (integrates to 1 over [0, 1))."""
    if not 0 <= x < 1:
        return 0.0
    total = sum(HOURS)
    hour = int(x * 24)
    per_hour = HOURS[hour] / total * 24  # density if flat within the hour
    if hour == 0:
        within = (x * 24) % 1
        return per_hour * (RUSH * 6 if within < 1 / 6 else (1 - RUSH) * 6 / 5)
    return per_hour


def rate(t: float, opts: Any) -> float:
    d = float(getattr(opts, "run_time", None) or 60)
    return DAY * opts.scale * density(t / d) / d


def orders() -> Orders:
    return Orders(
        [("SNEAKER-42", 0.5), ("SNEAKER-43", 0.2), ("TEE-M", 0.2), ("JACKET-L", 0.1)],
        [("tmall", 0.45), ("jd", 0.25), ("douyin", 0.2), ("app", 0.1)],
        basket_share=0.15,
    )  # fmt: skip


SCENARIO = gate.Scenario("double_eleven_day", burst.demo_catalog, rate, 0.0, 60)
gate.install(SCENARIO)


HttpBuyers, StreamBuyers = buyers(rate, orders, __name__)
