"""Flash sale: quiet, then a surge at T0 to the target rate, held, then decaying.

    locust -f loadtest/flash_sale.py --headless -u 1 -t 60s -H http://127.0.0.1:8080 \\
        --target-rate 2000 --onestock-redis "$ONESTOCK_REDIS_URL" HttpBuyers

or ``onestock loadtest flash_sale --rate 2000 --seconds 60`` (starts everything it needs).
Of a run of D seconds: the first 20% at 5% of the target, a jump to the target at T0, held
for 40%, then an exponential decay (time constant 10% of D).
"""

from __future__ import annotations

import math
from typing import Any

from loadtest import gate
from loadtest.common import Orders
from loadtest.users import buyers
from onestock import burst


def rate(t: float, opts: Any) -> float:
    d = float(getattr(opts, "run_time", None) or 30)
    peak = opts.target_rate
    t0, hold = 0.2 * d, 0.4 * d
    if t < t0:
        return 0.05 * peak
    if t < t0 + hold:
        return peak
    return peak * math.exp(-(t - t0 - hold) / (0.1 * d))


def orders() -> Orders:
    return Orders(
        [("SNEAKER-42", 0.75), ("SNEAKER-43", 0.1), ("TEE-M", 0.1), ("JACKET-L", 0.05)],
        [("tmall", 0.4), ("jd", 0.3), ("douyin", 0.2), ("app", 0.1)],
        basket_share=0.2,
    )


SCENARIO = gate.Scenario("flash_sale", burst.demo_catalog, rate, 500.0, 30)
gate.install(SCENARIO)


HttpBuyers, StreamBuyers = buyers(rate, orders, __name__)
