"""The measuring commands of ``onestock``: ``loadtest``, ``bench``, ``bench-scale``,
``bench-intake``, ``bench-availability``, ``bench-feed``, ``bench-memory`` and
``bench-scripts`` (registered on the main app by ``onestock.cli``).
Each imports its engine only when it runs, so the everyday commands start without Locust, wrk
or the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onestock.domain.errors import OnestockError
from onestock.domain.settings import DEFAULT_WORKERS


def _check_orders(orders: int) -> None:
    """The benchmarks drain at least 1,000 orders (fewer measure start-up, not throughput)."""
    if orders < 1000:
        raise OnestockError(f"--orders must be at least 1000, not {orders}")


def loadtest(
    scenario: Annotated[str, typer.Argument(help="A scenario file of loadtest/ (no .py).")],
    rate: Annotated[
        float | None, typer.Option(help="Peak orders/s (default: the scenario's).")
    ] = None,
    seconds: Annotated[int | None, typer.Option(help="Run time (default: the scenario's).")] = None,
    processes: Annotated[int, typer.Option(help="Locust processes (--processes).")] = 1,
    users: Annotated[int | None, typer.Option(help="Locust users (default: docs/ops.md).")] = None,
    model: Annotated[
        str, typer.Option(help="open (arrival rate) or closed (users wait).")
    ] = "open",
    via: Annotated[str, typer.Option(help="http (the intake) or stream (XADD, no HTTP).")] = "http",
    scale: Annotated[float, typer.Option(help="double_eleven_day: share of 20M orders.")] = 0.0005,
    max_p99_ms: Annotated[float, typer.Option(help="Gate: p99 bound, ms.")] = 2000.0,
    max_failure_ratio: Annotated[float, typer.Option(help="Gate: failure ratio bound.")] = 0.01,
    workers: Annotated[int, typer.Option(help="Dataflow worker processes.")] = DEFAULT_WORKERS,
    stall_ms: Annotated[
        int, typer.Option(help="Pause Redis writes this long half-way through (a stall).")
    ] = 0,
    out: Annotated[Path, typer.Option(help="Directory of the reports.")] = Path("loadtest-results"),
) -> None:
    """A Double-Eleven load scenario with Locust against a pipeline it starts (fresh Redis,
    serve, run); prints the results and the gate's verdict (exit 1 if it failed)."""
    from onestock.loadtest_run import run_loadtest

    if model not in ("open", "closed") or via not in ("http", "stream"):
        raise OnestockError("--model is open or closed; --via is http or stream")
    raise typer.Exit(
        run_loadtest(
            scenario,
            rate=rate,
            seconds=seconds,
            processes=processes,
            users=users,
            model=model,
            via=via,
            out=out,
            scale=scale,
            max_p99_ms=max_p99_ms,
            max_failure_ratio=max_failure_ratio,
            workers=workers,
            stall_ms=stall_ms,
        )  # fmt: skip
    )


def bench(
    orders: Annotated[int, typer.Option("--orders", help="Orders to drain.")] = 1_000_000,
    workers: Annotated[int, typer.Option(help="Dataflow worker processes.")] = DEFAULT_WORKERS,
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
    rules: Annotated[
        bool, typer.Option(help="Also drain them with every allocation rule on every SKU.")
    ] = True,
    gifts: Annotated[
        bool, typer.Option(help="Also drain them with a first-N gift campaign on the hot SKU.")
    ] = True,
    accepted: Annotated[
        bool,
        typer.Option(
            help="Also drain them with 1000 x the stock (every order accepted) and with no "
            "stock (every order refused): what each costs."
        ),
    ] = True,
    repeat: Annotated[
        int,
        typer.Option(
            help="Alternate the bare loop, the dataflow and the rules run this often (medians)."
        ),
    ] = 1,
) -> None:
    """Drain N pre-pushed orders through a bare loop, the dataflow, the dataflow with every
    rule on, with every order accepted, refused and with a gift campaign; print the rates, ratios,
    fulfilment latencies and Redis's and the dataflow's time per order."""
    from onestock.bench import run_bench

    _check_orders(orders)
    if not 1 <= repeat <= 20:
        raise OnestockError(f"--repeat must be 1..20, not {repeat}")
    run_bench(orders, workers, out, rules, gifts, repeat, accepted)


def bench_scale(
    orders: Annotated[int, typer.Option("--orders", help="Orders to drain each time.")] = 300_000,
    workers: Annotated[
        str, typer.Option(help="Dataflow worker counts, comma-separated.")
    ] = "1,2,3,4",
    masters: Annotated[
        str, typer.Option(help="Redis masters, comma-separated (1: one server; more: a cluster).")
    ] = "1,3",
    buckets: Annotated[
        str, typer.Option(help="Hot-SKU buckets of the hot SKU, comma-separated.")
    ] = "1",
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Orders/s against dataflow processes, Redis masters and hot-SKU buckets (docs/)."""
    from onestock.bench import run_scale

    def counts(text: str, what: str) -> list[int]:
        try:
            got = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            got = []
        if not got or min(got) < 1 or max(got) > 16:
            raise OnestockError(f"--{what} takes counts 1..16 separated by commas, not {text!r}")
        return got

    _check_orders(orders)
    run_scale(
        orders, counts(workers, "workers"), counts(masters, "masters"), out,
        counts(buckets, "buckets"),
    )  # fmt: skip


def bench_intake(
    rate: Annotated[int, typer.Option(help="Open-loop rate for the latency figures.")] = 5000,
    seconds: Annotated[float, typer.Option(help="Length of each phase.")] = 10.0,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 2,
    connections: Annotated[int, typer.Option(help="wrk connections.")] = 64,
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Signed webhooks/s stored and acknowledged (wrk), and acknowledgement latency at a fixed
    rate (open loop), against a fresh Redis and a real `onestock serve`."""
    from intake.bench import run_intake_bench

    run_intake_bench(rate, seconds, workers, connections, out)


def bench_availability(
    skus: Annotated[int, typer.Option(help="SKUs in the catalog.")] = 10_000,
    per_request: Annotated[int, typer.Option(help="SKUs per request.")] = 100,
    rate: Annotated[int, typer.Option(help="Open-loop rate, SKU reads/s.")] = 10_000,
    seconds: Annotated[float, typer.Option(help="Length of each window.")] = 4.0,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 2,
    connections: Annotated[int, typer.Option(help="wrk connections (closed loop).")] = 16,
    orders: Annotated[int, typer.Option("--orders", help="Orders in the burst.")] = 1_200_000,
    run_workers: Annotated[int, typer.Option(help="Dataflow worker processes.")] = DEFAULT_WORKERS,
    replica: Annotated[
        bool, typer.Option(help="Also measure reads of a replica of the deciding Redis.")
    ] = False,
    nice: Annotated[
        int,
        typer.Option(
            help="Then measure the burst again with the dataflow reniced to this (0: not)."
        ),
    ] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """SKU reads/s of GET /availability (wrk, closed loop) and its latency at a fixed rate
    (open loop), idle and while `onestock run` decides a burst, against a fresh Redis and a
    real `onestock serve`."""
    from onestock.bench.availability import run_availability_bench

    _check_orders(orders)
    if not 1 <= per_request <= 1000 or skus < max(per_request, 5) or rate < per_request:
        raise OnestockError(
            "--per-request is 1..1000, --skus at least that (and 5), --rate at least --per-request"
        )
    if not 0 <= nice <= 19:
        raise OnestockError(f"--nice is 0..19, not {nice}")
    run_availability_bench(
        skus, per_request, rate, seconds, workers, connections, orders, run_workers, replica,
        nice, out,
    )  # fmt: skip


def bench_feed(
    rate: Annotated[float, typer.Option(help="Orders/s pushed (open loop).")] = 2000.0,
    seconds: Annotated[float, typer.Option(help="Length of the burst.")] = 20.0,
    skus: Annotated[int, typer.Option(help="SKUs, selling out one after another.")] = 300,
    workers: Annotated[int, typer.Option(help="Dataflow worker processes.")] = DEFAULT_WORKERS,
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Propagation of sold_out: from the decision that sold a SKU's last unit to a webhook
    subscriber receiving the transition, p50/p99 over the SKUs that sell out during a burst
    at --rate (a fresh Redis, the real pipeline, a real HTTP receiver)."""
    import orjson

    from onestock.bench.propagation import run

    if rate < 10 or seconds < 2 or skus < 1:
        raise OnestockError("--rate at least 10, --seconds at least 2, --skus at least 1")
    f = run(rate, seconds, skus, workers)
    print(
        f"pushed {f.orders:,} orders in {f.seconds:.1f} s ({f.rate:,.0f}/s); "
        f"{f.sold_out} SKUs sold out, {f.measured} sold_out received by the subscriber\n"
        f"decision of the last unit -> subscriber received sold_out: "
        f"p50 {f.p50_ms:.0f} ms, p99 {f.p99_ms:.0f} ms, max {f.max_ms:.0f} ms"
    )
    if out is not None:
        out.write_bytes(orjson.dumps(f._asdict(), option=orjson.OPT_INDENT_2))


def bench_memory(
    days: Annotated[int, typer.Option(help="Days, one after another.")] = 3,
    orders: Annotated[int, typer.Option("--orders", help="Orders a day.")] = 200_000,
    day_s: Annotated[
        int,
        typer.Option(help="A day, and the idempotency window, in seconds of real time."),
    ] = 60,
    workers: Annotated[int, typer.Option(help="Dataflow worker processes.")] = DEFAULT_WORKERS,
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Redis memory per day over several days compressed in real time (one Redis; a day
    and the idempotency window are --day-s seconds; each day's orders are pushed at its
    start and drained): used memory, the biggest key families and the days of idempotency
    state held per day, and max / min over days 2..D."""
    from onestock.bench.memory import run_memory

    if not 1 <= days <= 30 or not 100 <= orders <= 50_000_000:
        raise OnestockError("--days is 1..30 and --orders 100..50,000,000")
    if not 10 <= day_s <= 3600 or not 1 <= workers <= 16:
        raise OnestockError("--day-s is 10..3600 and --workers 1..16")
    run_memory(days, orders, day_s, workers, out)


def bench_scripts(
    baseline: Annotated[
        str,
        typer.Option(
            help="The Lua to compare with: a git revision of this checkout or a "
            "directory of .lua files (another checkout's state/lua)."
        ),
    ] = "HEAD",
    orders: Annotated[int, typer.Option(help="Demo orders drained to capture the calls.")] = 50_000,
    rounds: Annotated[int, typer.Option(help="Replays of every call, fresh ids each.")] = 3,
    layout: Annotated[
        str,
        typer.Option(
            help="The drain's dataset layout: 'one' (a basket in one decide.lua call) or "
            "'slots' (baskets slot by slot: reserve_parts.lua's calls)."
        ),
    ] = "one",
    own_calls: Annotated[
        bool,
        typer.Option(
            help="The baseline (a git revision) replays its own code's calls of the same "
            "orders: for a change to what the scripts take."
        ),
    ] = False,
) -> None:
    """decide.lua, reserve_parts.lua and emit.lua of this checkout against a baseline's, call
    for call: the calls of an in-process drain (every order accepted) replayed on two fresh
    Redis servers in lockstep; Redis's time per item on each, their ratio, the calls
    answered differently, and a control row (the baseline against itself)."""
    from onestock.bench.scripts import run_bench_scripts

    _check_orders(orders)
    if not 1 <= rounds <= 20:
        raise OnestockError(f"--rounds must be 1..20, not {rounds}")
    if layout not in ("one", "slots"):
        raise OnestockError(f"--layout must be 'one' or 'slots', not {layout!r}")
    if own_calls and Path(baseline).is_dir():
        raise OnestockError("--own-calls needs a git revision as --baseline, not a directory")
    rows = run_bench_scripts(baseline, orders, rounds, layout, own_calls)
    if any(r.differing for r in rows if r.script.endswith("(control)")):
        raise OnestockError("the control answered differently: the replay is not repeatable")
