"""The headless gate: a pass/fail verdict for a load run, for CI and for people.

It runs in the Locust master (or the single local process) when the run ends: from Locust's
own statistics the failure ratio and the p99 (measured from intended send times in the open
model), then, once the pipeline has drained, invariants read back from Redis: nothing
oversold, no campaign past first_n, every acknowledged order with exactly one outcome, plus
the scenario's own checks. It prints the verdict, writes it as JSON (``--verdict``) and
sets Locust's exit code (1 on a failed check).
"""

from __future__ import annotations

from typing import Any

import msgspec
from locust import events
from locust.runners import LocalRunner, MasterRunner

from loadtest.checks import Check, Outcome, Scenario, Verdict, invariants
from state.store import Store

__all__ = ["Check", "Outcome", "Scenario", "install"]


def judge(scenario: Scenario, stats: Any, opts: Any) -> Verdict:
    total = stats.total
    requests, failures = total.num_requests, total.num_failures
    ratio = failures / requests if requests else 1.0
    p99 = total.get_response_time_percentile(0.99) or 0.0
    checks = [
        Check("requests sent", requests > 0, f"{requests:,}"),
        Check(
            "failure ratio",
            ratio <= opts.max_failure_ratio,
            f"{ratio:.4f} (max {opts.max_failure_ratio})",
        ),  # fmt: skip
        Check(
            "p99 from intended send time",
            p99 <= opts.max_p99_ms,
            f"{p99:,.0f} ms (max {opts.max_p99_ms:,.0f} ms)",
        ),  # fmt: skip
    ]
    if opts.onestock_redis:
        checks += invariants(scenario, Store.connect(opts.onestock_redis), opts.drain_timeout)
    return Verdict(
        scenario=scenario.name, passed=all(c.ok for c in checks), requests=requests,
        failures=failures, rps=round(total.total_rps, 1),
        p50_ms=total.get_response_time_percentile(0.5) or 0.0,
        p95_ms=total.get_response_time_percentile(0.95) or 0.0, p99_ms=p99, checks=checks,
    )  # fmt: skip


def report(v: Verdict) -> str:
    lines = [f"gate {v.scenario}: {'PASS' if v.passed else 'FAIL'}"]
    lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in v.checks]
    return "\n".join(lines)


def install(scenario: Scenario) -> None:
    """Run the gate when the run ends (in the master, or the single local process)."""

    @events.quitting.add_listener
    def _gate(environment: Any, **_: Any) -> None:
        if not isinstance(environment.runner, (MasterRunner, LocalRunner)):
            return
        opts = environment.parsed_options
        verdict = judge(scenario, environment.runner.stats, opts)
        print(report(verdict), flush=True)
        if opts.verdict:
            with open(opts.verdict, "wb") as fh:
                fh.write(msgspec.json.encode(verdict))
        if not verdict.passed:
            environment.process_exit_code = 1
