"""The live view: the last minute of ``onestock.ops.metrics`` readings turned into what the
dashboard and ``onestock top`` show: rates, windowed latency percentiles, a sell-out
projection per SKU, movements by kind, the change feed and its webhook deliveries."""

from __future__ import annotations

from collections import deque
from typing import Any

from onestock.ops.metrics import DELIVERY_OUTCOMES, FEED_STATUSES, Figures, Reader, quantile


class Live:
    """Readings of the last minute, turned into what the dashboard and ``top`` show."""

    def __init__(self, reader: Reader, keep_s: float = 65.0) -> None:
        self.reader = reader
        self.keep_s = keep_s
        self.history: deque[Figures] = deque()

    def sample(self) -> dict[str, Any]:
        f = self.reader.read()
        self.history.append(f)
        while self.history and f.at - self.history[0].at > self.keep_s:
            self.history.popleft()
        return self.view()

    def _ago(self, seconds: float) -> Figures:
        """The newest reading at least ``seconds`` old (else the oldest one)."""
        last = self.history[-1]
        for f in reversed(self.history):
            if last.at - f.at >= seconds - 0.05:
                return f
        return self.history[0]

    def view(self) -> dict[str, Any]:
        f = self.history[-1]
        one, ten = self._ago(1.0), self._ago(10.0)

        def rate(old: Figures, new: int, was: int) -> float:
            dt = f.at - old.at
            return (new - was) / dt if dt > 0 else 0.0

        window_r = [a - b for a, b in zip(f.received, ten.received, strict=True)]
        window_p = [a - b for a, b in zip(f.paid, ten.paid, strict=True)]
        rejected = {
            k.partition(":")[2]: n for k, n in sorted(f.decisions.items()) if k[:9] == "rejected:"
        }
        stock = []
        for sku, v in f.stock.items():
            old = ten.stock.get(sku)
            sold = rate(ten, old.total, v.total) if old is not None else 0.0  # units/s
            sellout = v.total / sold if sold > 0 else None
            stock.append({
                "sku": sku, "total": v.total, "channels": v.available,
                "rate": round(sold, 2), "sellout_s": round(sellout, 1) if sellout else None,
            })  # fmt: skip
        # nearest sell-out first, then the rest by units left
        stock.sort(key=lambda s: (s["sellout_s"] is None, s["sellout_s"] or 0, s["total"]))
        intake = sum(f.intake_events.values())
        return {
            "at": f.at,
            "decided": f.decided,
            "rate_1s": round(rate(one, f.decided, one.decided), 1),
            "rate_10s": round(rate(ten, f.decided, ten.decided), 1),
            "intake_rate_1s": round(rate(one, intake, sum(one.intake_events.values())), 1),
            "accepted": f.decisions.get("accepted", 0),
            "rejected": rejected,
            "rejected_total": sum(rejected.values()),
            "cancelled": f.decisions.get("cancelled", 0) + f.cancellations,
            "returns": f.returns,
            "dead": f.dead,
            "backlog": sum(f.backlog),
            "held": f.held,
            "trimmed": f.trimmed,
            "oversold": f.oversold,
            "latency": {f"p{int(q * 100)}": quantile(q, window_r) for q in (0.5, 0.95, 0.99)},
            "paid_latency": {f"p{int(q * 100)}": quantile(q, window_p) for q in (0.5, 0.95, 0.99)},
            "stock": stock,
            "campaigns": [
                {
                    "id": c.id,
                    "sku": c.sku,
                    "first_n": c.first_n,
                    "awarded": c.awarded,
                    "left": c.left,
                    "late": c.late,
                }
                for c in f.campaigns
            ],  # fmt: skip
            "intake": dict(sorted(f.intake.items())),
            **_loop(f, ten),
        }


def _loop(f: Figures, ten: Figures) -> dict[str, Any]:
    """The inventory loop: movements by kind and status, transitions of the change feed
    (and their rate over ``ten``'s window), webhook deliveries in all and per subscriber."""
    movements: dict[str, dict[str, int]] = {}
    for label, n in sorted(f.movements.items()):
        kind, _, status = label.partition(":")
        movements.setdefault(kind, {"applied": 0, "refused": 0})[status] = n
    feed, dt = f.feed, f.at - ten.at
    names = sorted(set(feed.lag) | {k.rpartition(":")[0] for k in feed.deliveries})
    subscribers: list[dict[str, Any]] = [
        {"id": sub, **{o: feed.deliveries.get(f"{sub}:{o}", 0) for o in DELIVERY_OUTCOMES},
         "retrying": feed.retrying.get(sub, 0), "lag": feed.lag.get(sub)}
        for sub in names
    ]  # fmt: skip
    deliveries = {o: sum(s[o] for s in subscribers) for o in DELIVERY_OUTCOMES}
    deliveries["retrying"] = sum(s["retrying"] for s in subscribers)
    return {
        "movements": movements,
        "movements_applied": sum(m["applied"] for m in movements.values()),
        "movements_refused": sum(m["refused"] for m in movements.values()),
        "transitions": feed.seq,
        "transitions_by_status": dict.fromkeys(FEED_STATUSES, 0) | feed.transitions,
        "transitions_rate_10s": round((feed.seq - ten.feed.seq) / dt, 1) if dt > 0 else 0.0,
        "deliveries": deliveries,
        "undelivered": feed.undelivered,
        "subscribers": subscribers,
    }
