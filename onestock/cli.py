"""The ``onestock`` command (Typer). User mistakes print one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Annotated

import msgspec
import redis
import typer
from rich.console import Console
from rich.table import Table

from onestock import cli_perf
from onestock.domain.errors import OnestockError
from onestock.domain.events import rfc3339_ms
from onestock.domain.settings import DEFAULT_WORKERS, Settings
from onestock.ops import services as ops
from state.server import stop_embedded

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="One inventory for every sales channel, decided at flash-sale peaks.",
)
catalog_app = typer.Typer(no_args_is_help=True, help="Catalog: channels, locations, SKUs, stock.")
orders_app = typer.Typer(no_args_is_help=True, help="Order events onto the input stream.")
redis_app = typer.Typer(no_args_is_help=True, help="The embedded Redis server under ONESTOCK_HOME.")
app.add_typer(catalog_app, name="catalog")
app.add_typer(orders_app, name="orders")
app.add_typer(redis_app, name="redis")
err = Console(stderr=True)

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="ONESTOCK_REDIS_URL",
        help="Redis (or Redis Cluster node) URL; default: the embedded server.",
    ),
]
Out = Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")]


def _settings(redis_url: str | None, **kw: object) -> Settings:
    return Settings.from_env(redis_url=redis_url, **kw)


@contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    try:
        with path.open("wb") as fh:
            yield fh
    except OSError as exc:
        raise OnestockError(f"{path}: cannot write: {exc.strerror}") from None


@catalog_app.command("load")
def catalog_load(path: Path, redis_url: RedisUrl = None) -> None:
    """Validate the whole catalog, then load it (SKUs it names get their stock replaced)."""
    store = ops.open_store(_settings(redis_url))
    cat = ops.load_catalog(store, path)
    err.print(
        f"loaded {path}: {len(cat.skus)} SKUs, {len(cat.locations)} locations, "
        f"{len(cat.channels)} channels"
    )


@orders_app.command("push")
def orders_push(
    path: Annotated[str, typer.Argument(help="JSON Lines file, or - for stdin.")],
    redis_url: RedisUrl = None,
    shards: Annotated[
        int | None, typer.Option(help="Input shards K (fixed by the first push).")
    ] = None,
) -> None:
    """Append order events, as-is, one per line (blank lines are skipped)."""
    settings = _settings(redis_url)
    store = ops.open_store(settings)
    if path == "-":
        n = ops.push(store, ops.read_lines(sys.stdin.buffer), shards, settings.shards)
    else:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise OnestockError(f"{path}: cannot read: {exc.strerror}") from None
        with fh:
            n = ops.push(store, ops.read_lines(fh), shards, settings.shards)
    err.print(f"pushed {n} events")


@app.command("run")
def run(
    redis_url: RedisUrl = None,
    until_drained: Annotated[
        bool, typer.Option(help="Exit 0 once every pushed event has its outcome.")
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 2).")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Bytewax's dataflow API (/metrics, /dataflow) on this port + worker index "
            "[env ONESTOCK_DATAFLOW_METRICS_PORT; default off].",
        ),
    ] = None,
    process_id: Annotated[
        int | None, typer.Option(help="This process's index in --addresses (0-based).")
    ] = None,
    addresses: Annotated[
        str | None,
        typer.Option(
            help="host:port of every process of a multi-machine cluster, ';'-separated, the "
            "same list everywhere; with --process-id this invocation runs only its process.",
        ),
    ] = None,
    feed: Annotated[
        bool,
        typer.Option(help="Also run the availability change feed (`onestock feed`) beside it."),
    ] = True,
) -> None:
    """Run the Bytewax dataflow (recovery on: a killed run resumes without loss or duplicates)."""
    from dataflows.runner import run as run_flow
    from onestock import feed_run

    cluster = [a.strip() for a in addresses.split(";") if a.strip()] if addresses else None
    if (cluster is None) != (process_id is None):
        raise OnestockError("--process-id and --addresses go together")
    if cluster is not None:
        if not 0 <= process_id < len(cluster):  # type: ignore[operator]
            raise OnestockError(
                f"--process-id {process_id} is not an index of the {len(cluster)} --addresses"
            )
        if workers is not None and workers != len(cluster):
            raise OnestockError("--workers is the number of --addresses in a cluster run")
        workers = len(cluster)
    settings = _settings(redis_url, workers=workers, metrics_port=metrics_port)
    if settings.workers < 1 or settings.workers > 64:
        raise OnestockError(f"--workers must be 1..64, not {settings.workers}")
    url = ops.resolve_url(settings)
    store = ops.Store.connect(url)
    settings = replace(settings, redis_url=url, shards=ops.fix_shards(store, None, settings.shards))
    if settings.workers > settings.shards:
        raise OnestockError(
            f"--workers {settings.workers} exceeds the {settings.shards} input shards"
        )
    uneven = uneven_shares(settings.shards, settings.workers)
    if uneven:
        print(f"onestock: {uneven}", file=sys.stderr, flush=True)
    child = feed_run.start(url) if feed else None
    try:
        rc = run_flow(
            url, ops.instance_id(store), settings, until_drained=until_drained,
            process_id=process_id, cluster=cluster,
        )  # fmt: skip
    finally:
        if child is not None:
            feed_run.finish(child)
    raise typer.Exit(rc if rc >= 0 else 1)


def uneven_shares(shards: int, workers: int) -> str:
    """A notice when the shards cannot be shared evenly by the workers ("" when they can):
    Bytewax gives each shard to the worker with the fewest so far, so some read one more."""
    more = shards % workers
    if not more:
        return ""
    least = shards // workers
    return (
        f"{shards} input shards over {workers} workers: {more} read {least + 1} shards, "
        f"{workers - more} read {least} (an uneven share of the work); a shard count that "
        "is a multiple of the workers shares evenly (ONESTOCK_SHARDS, before the first push)"
    )


@app.command("feed")
def feed_cmd(redis_url: RedisUrl = None) -> None:
    """The availability change feed: publish every status change of a (SKU, channel) as a
    transition (`onestock availability --follow`) and deliver them to the catalog's
    subscribers. `onestock run` starts one; run more for failover (one publishes at a time).
    Runs until SIGTERM or Ctrl-C."""
    from onestock import feed_run

    raise typer.Exit(feed_run.main(ops.resolve_url(_settings(redis_url))))


@app.command("deliveries")
def deliveries_cmd(
    redis_url: RedisUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    undelivered: Annotated[
        bool,
        typer.Option(
            "--undelivered",
            help="The transitions given up after the retry budget, as JSON Lines "
            '{"subscriber", "seq", "transition", "attempts", "error", "given_up_at"}.',
        ),
    ] = False,
) -> None:
    """The webhook deliveries, per subscriber: URL, channels, the seq every transition is
    delivered (or given up) up to, lag behind the feed, delivered, retrying now, given up;
    then the record subscribers (locations, lag of the oldest record not yet done). Tuned by
    ONESTOCK_DELIVERY_* (README)."""
    from onestock.ops import deliveries

    store = ops.open_store(_settings(redis_url))
    if undelivered:
        for line in deliveries.undelivered(store):
            sys.stdout.buffer.write(line + b"\n")
        return
    doc = deliveries.view(store)
    if as_json:
        sys.stdout.buffer.write(msgspec.json.encode(doc) + b"\n")
        return
    state = "delivering" if doc.delivering else "no deliverer running (onestock feed)"
    table = Table(title=f"webhook deliveries: feed at seq {doc.last_seq}, {state}")
    cols = ("subscriber", "url", "channels", "progress", "lag", "delivered", "retrying",
            "given up", "last error")  # fmt: skip
    for col in cols:
        table.add_column(col)
    for sub in doc.subscribers:
        table.add_row(
            sub.id, sub.url, ", ".join(sub.channels), str(sub.progress), str(sub.lag),
            str(sub.delivered), str(sub.retrying), str(sub.given_up), sub.last_error or "",
        )  # fmt: skip
    for rsub in doc.record_subscribers:  # progress: shards done, lag: the oldest record's age
        table.add_row(
            rsub.id, rsub.url, "records: " + (", ".join(rsub.locations) or "all"),
            f"{len(rsub.progress)} shards", f"{rsub.lag_ms} ms", str(rsub.delivered),
            str(rsub.retrying), str(rsub.given_up), rsub.last_error or "",
        )  # fmt: skip
    Console().print(table)


@app.command("serve")
def serve(
    redis_url: RedisUrl = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(help="Server processes (one port, shared).")] = 1,
    ops_host: Annotated[
        str, typer.Option(envvar="ONESTOCK_OPS_HOST", help="The ops listener's address.")
    ] = "127.0.0.1",
    ops_port: Annotated[
        int | None,
        typer.Option(
            envvar="ONESTOCK_OPS_PORT",
            help="A second listener for the ops endpoints (dashboard, /metrics, /availability, "
            "/movements), which then answer only there [default: none, one port].",
        ),
    ] = None,
) -> None:
    """Webhook intake: POST /webhooks/shopify, /webhooks/woocommerce, /orders (signed);
    GET /healthz, /readyz. An event is acknowledged (202) only once stored. Ops: the live
    dashboard at /, Prometheus metrics at /metrics, GET /availability, POST /movements
    (on --ops-port when given; bearer tokens: ONESTOCK_OPS_TOKENS)."""
    from intake import access

    if workers < 1 or workers > 64:
        raise OnestockError(f"--workers must be 1..64, not {workers}")
    if ops_port is not None and (ops_port, ops_host) == (port, host):
        raise OnestockError("--ops-port must differ from --port")
    try:
        tokens = access.parse_tokens(os.environ.get("ONESTOCK_OPS_TOKENS"))
    except access.AccessError as exc:
        raise OnestockError(str(exc)) from None
    settings = _settings(redis_url)
    url = ops.resolve_url(settings)
    shards = ops.fix_shards(ops.Store.connect(url), None, settings.shards)
    os.environ["ONESTOCK_INTAKE_REDIS_URL"] = url
    os.environ["ONESTOCK_INTAKE_SHARDS"] = str(shards)
    enabled = [
        path
        for path, var in (
            ("/webhooks/shopify", "ONESTOCK_SHOPIFY_SECRET"),
            ("/webhooks/woocommerce", "ONESTOCK_WOO_SECRET"),
            ("/orders", "ONESTOCK_ORDERS_SECRET"),
        )
        if os.environ.get(var)
    ]
    intakes = ", ".join(enabled) or (
        "no intake: set ONESTOCK_SHOPIFY_SECRET, ONESTOCK_WOO_SECRET or ONESTOCK_ORDERS_SECRET"
    )
    ops_at = f"http://{ops_host}:{ops_port}" if ops_port is not None else f"http://{host}:{port}"
    guard = f"tokens for {', '.join(t.consumer for t in tokens)}" if tokens else "no tokens"
    print(f"onestock serve on http://{host}:{port}: {intakes}; ops (dashboard /, /metrics, "
          f"/availability, /movements) on {ops_at}, {guard}; Redis {url}", flush=True)  # fmt: skip
    if ops_port is None and not tokens and host not in ("127.0.0.1", "::1", "localhost"):
        err.print(f"onestock: warning: the ops endpoints answer anyone who reaches "
                  f"{host}:{port} (stock, metrics): give --ops-port or ONESTOCK_OPS_TOKENS "
                  "(docs/ops.md)")  # fmt: skip
    if ops_port is not None:
        os.environ["ONESTOCK_INTAKE_OPS_PORT"] = str(ops_port)
    _uvicorn(host, port, workers, (ops_host, ops_port) if ops_port is not None else None)


def _uvicorn(host: str, port: int, workers: int, ops: tuple[str, int] | None) -> None:
    """The intake app on its listener (and the ops listener), in ``workers`` processes."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    def config(h: str, p: int) -> uvicorn.Config:
        return uvicorn.Config(
            "intake.app:create_app", factory=True, host=h, port=p, workers=workers,
            loop="uvloop", http="httptools", lifespan="on", access_log=False,
            log_level="warning", timeout_graceful_shutdown=30,
        )  # fmt: skip

    main = config(host, port)
    try:
        sockets = [main.bind_socket()] + ([config(*ops).bind_socket()] if ops else [])
    except SystemExit:  # uvicorn says why (the port is taken) and exits
        raise OnestockError(
            f"cannot listen on {host}:{port}" + (f" and {ops[0]}:{ops[1]}" if ops else "")
        ) from None
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully: end with status 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    if workers > 1:
        Multiprocess(main, sockets=sockets).run()
    else:
        uvicorn.Server(main).run(sockets=sockets)


@app.command("fulfilments")
def fulfilments(
    redis_url: RedisUrl = None,
    out: Out = None,
    follow: Annotated[
        bool,
        typer.Option(
            help="Every record (every version) as JSON Lines as it is written, until Ctrl-C."
        ),
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            help="With --follow: read in this consumer group: each record acknowledged once "
            "written, at least once across crashes (docs/downstream.md)."
        ),
    ] = None,
    consumer: Annotated[
        str | None,
        typer.Option(help="This consumer's name in --group (default: hostname-pid)."),
    ] = None,
    location: Annotated[
        list[str] | None,
        typer.Option(
            "--location", help="With --follow: only records with a shipment here; repeatable."
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="With --follow: start, now or after an entry id (default: now; a new "
            "--group: start).",
        ),
    ] = None,
    claim_idle: Annotated[
        float,
        typer.Option(
            help="With --group: take over other consumers' records pending this long (s)."
        ),
    ] = 30.0,
    mark_exported: Annotated[
        bool,
        typer.Option(
            help="With --out: once the file is written, the records in it may be trimmed "
            "where no consumer group or record subscriber reads them (docs/memory.md)."
        ),
    ] = False,
) -> None:
    """Every final fulfilment record as JSON Lines, exactly one per order id (its latest
    version). --follow: every record as it is written instead."""
    if not follow:
        if group or consumer or location or from_:
            raise OnestockError("--group, --consumer, --location and --from go with --follow")
        if mark_exported and out is None:
            raise OnestockError("--mark-exported goes with --out")
        store = ops.open_store(_settings(redis_url))
        k = _shards(store)
        last = ops.last_record_ids(store, k)  # (what comes meanwhile is written, not marked)
        with _output(out) as fh:
            ops.write_records(store, k, fh)
            if mark_exported:  # (on disk before the records may go)
                fh.flush()
                os.fsync(fh.fileno())
        if mark_exported:
            ops.mark_exported(store, last)
        return
    if mark_exported:
        raise OnestockError("--mark-exported goes with --out, not --follow")
    if claim_idle < 0:
        raise OnestockError("--claim-idle: want 0 or more seconds")
    _follow_records(redis_url, out, group, consumer, location, from_, int(claim_idle * 1000))


def _follow_records(
    redis_url: str | None, out: Path | None, group: str | None, consumer: str | None,
    locations: list[str] | None, start: str | None, claim_idle_ms: int,
) -> None:  # fmt: skip
    """``onestock fulfilments --follow``: records as JSON Lines until SIGTERM/Ctrl-C."""
    from onestock.ops import downstream

    opts = downstream.Follow(group, consumer, frozenset(locations or ()), start, claim_idle_ms)
    store = ops.open_store(_settings(redis_url))
    _, cat = store.catalog()
    for loc in sorted(opts.locations - {loc.id for loc in cat.locations} if cat else set()):
        raise OnestockError(f"--location: unknown location {loc!r}")
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _f: stopped.append(signum))

    def say(message: str) -> None:
        print(f"onestock fulfilments: {message}", file=sys.stderr, flush=True)

    try:  # (--out is appended to: what an earlier run of a group wrote there stays)
        fh = out.open("ab") if out is not None else sys.stdout.buffer
    except OSError as exc:
        raise OnestockError(f"{out}: cannot write: {exc.strerror}") from None
    try:
        downstream.follow(store, fh, opts, lambda: bool(stopped), say)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # (piped into a reader that stopped reading)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if out is not None:
            fh.close()


@app.command("deadletters")
def deadletters(redis_url: RedisUrl = None, out: Out = None) -> None:
    """Every dead letter as JSON Lines: {"raw": ..., "reason": ...}."""
    store = ops.open_store(_settings(redis_url))
    with _output(out) as fh:
        ops.write_deadletters(store, _shards(store), fh)


@app.command("returns")
def returns_cmd(redis_url: RedisUrl = None, out: Out = None) -> None:
    """Every accepted return as JSON Lines: order id, location, lines (refused ones are dead
    letters)."""
    store = ops.open_store(_settings(redis_url))
    with _output(out) as fh:
        ops.write_returns(store, _shards(store), fh)


@app.command("movements")
def movements_cmd(redis_url: RedisUrl = None, out: Out = None) -> None:
    """Every stock movement's record as JSON Lines, one per movement id: {"movement_id",
    "status": "applied"|"refused", "reason", "lines": [{"sku", "qty", "on_hand"}], ...}
    (push movements like orders: `onestock orders push`)."""
    store = ops.open_store(_settings(redis_url))
    with _output(out) as fh:
        ops.write_movements(store, _shards(store), fh)


@app.command("alerts")
def alerts(redis_url: RedisUrl = None, out: Out = None) -> None:
    """Low-stock and sold-out alerts as JSON Lines: {"sku", "remaining", "reason", "time"}."""
    store = ops.open_store(_settings(redis_url))
    with _output(out) as fh:
        ops.write_alerts(store, fh)


def _shards(store: ops.Store) -> int:
    try:
        return store.shards.shard_count()
    except OnestockError:
        return 0


@app.command("stock")
def stock(
    redis_url: RedisUrl = None,
    sku: Annotated[str | None, typer.Option(help="Only this SKU.")] = None,
    at: Annotated[
        str | None,
        typer.Option(help="Judge channel locks at this RFC 3339 time (default: now)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The one-inventory view: stock per location, total, what each channel can still sell,
    and the channel locks."""
    at_ms = None
    if at is not None:
        at_ms = rfc3339_ms(at)
        if at_ms is None:
            raise OnestockError(f"--at: not an RFC 3339 time with an offset: {at!r}")
    view = ops.stock_view(ops.open_store(_settings(redis_url)), sku, at_ms)
    if as_json:
        sys.stdout.buffer.write(msgspec.json.encode(view) + b"\n")
        return
    table = Table(title="one inventory")
    for col in ("SKU", "total", "by location", "available by channel", "channel locks"):
        table.add_column(col)
    for name, v in view.items():
        table.add_row(
            name, str(v.total),
            ", ".join(f"{loc} {q}" for loc, q in v.locations.items()),
            ", ".join(f"{ch} {q}" for ch, q in v.available.items()),
            ", ".join(f"{ch} {lk.left}/{lk.qty} until {lk.until}" for ch, lk in v.locks.items()),
        )  # fmt: skip
    Console().print(table)


@app.command("availability")
def availability_cmd(
    redis_url: RedisUrl = None,
    channel: Annotated[
        str | None, typer.Option(help="Only this channel (default: every channel).")
    ] = None,
    sku: Annotated[
        list[str] | None,
        typer.Option("--sku", help="Only this SKU; repeatable (default: every catalog SKU)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The JSON of GET /availability.")] = False,
    follow: Annotated[
        bool,
        typer.Option(
            help="Print every status transition as JSON Lines as it happens (Ctrl-C ends)."
        ),
    ] = False,
    from_seq: Annotated[
        int | None,
        typer.Option("--from", help="With --follow: replay the transitions after this seq first."),
    ] = None,
) -> None:
    """What each channel can sell now of each SKU, and its status (in_stock, low_stock,
    sold_out): the figures of GET /availability. --follow: the change feed instead."""
    from onestock.ops import availability

    if from_seq is not None and (not follow or from_seq < 0):
        raise OnestockError("--from SEQ (0 or more) goes with --follow")
    if follow:
        _follow(redis_url, channel, sku, from_seq)
        return
    doc = availability.read(ops.open_store(_settings(redis_url)), channel, sku or None)
    if as_json:
        sys.stdout.buffer.write(availability.encode(doc) + b"\n")
        return
    table = Table(title="available to sell")
    for col in ("SKU", "channel", "available", "status"):
        table.add_column(col, justify="right" if col == "available" else "left")
    for name, ch, figures in availability.rows(doc):
        table.add_row(name, ch, str(figures["available"]), figures["status"])
    Console().print(table)


def _follow(
    redis_url: str | None, channel: str | None, skus: list[str] | None, after: int | None
) -> None:
    """``onestock availability --follow``: transitions as JSON Lines until SIGTERM/Ctrl-C."""
    from onestock.ops import feed

    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _f: stopped.append(signum))
    wanted = set(skus) if skus else None
    out = sys.stdout.buffer
    try:
        feed.follow(ops.open_store(_settings(redis_url)), out, after, lambda: bool(stopped),
                    lambda t: (channel is None or t.channel == channel)
                    and (wanted is None or t.sku in wanted))  # fmt: skip
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # (piped into a reader that stopped reading)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@app.command("demo")
def demo(
    orders: Annotated[int, typer.Option("--orders", help="Orders in the burst.")] = 200_000,
    workers: Annotated[int, typer.Option(help="Dataflow worker processes.")] = DEFAULT_WORKERS,
) -> None:
    """Self-contained: own Redis, demo catalog, a flash-sale burst through the real pipeline."""
    from onestock.demo_run import run_demo

    raise typer.Exit(run_demo(orders, workers))


@app.command("top")
def top(
    redis_url: RedisUrl = None,
    interval: Annotated[float, typer.Option(help="Seconds between readings.")] = 1.0,
    frames: Annotated[
        int | None, typer.Option(help="Stop after this many readings (default: until Ctrl-C).")
    ] = None,
) -> None:
    """The live dashboard's figures in the terminal: rates, latency, stock, gifts, oversell."""
    from onestock.ops.top import run_top

    if interval <= 0 or (frames is not None and frames < 1):
        raise OnestockError("--interval must be > 0 and --frames >= 1")
    run_top(ops.resolve_url(_settings(redis_url)), interval, frames)


@app.command("gifts")
def gifts(
    campaign: Annotated[str, typer.Argument(help="Campaign id from the catalog.")],
    redis_url: RedisUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """A first-N campaign's winners in rank order: order id, rank, paid_at."""
    view = ops.gifts(ops.open_store(_settings(redis_url)), campaign)
    if as_json:
        sys.stdout.buffer.write(msgspec.json.encode(view) + b"\n")
        return
    table = Table(
        title=f"{view.campaign}: first {view.first_n} buyers of {view.sku} get {view.gift_sku}"
    )
    for col in ("rank", "order id", "paid_at", "gift from"):
        table.add_column(col)
    for w in view.winners:
        table.add_row(
            str(w.rank), w.order_id, w.paid_at, w.location + (" (late)" if w.late else "")
        )
    console = Console()
    console.print(table)
    console.print(
        f"{len(view.winners)} gifts, {view.settled} ranks settled ({view.late} late),"
        f" {view.pending} pending"
    )
    if view.ended_early_at is not None:
        console.print(f"ended early: the gift stock ran out at rank {view.ended_early_at}")


# the measuring commands (onestock/cli_perf.py)
app.command("loadtest")(cli_perf.loadtest)
app.command("bench")(cli_perf.bench)
app.command("bench-scale")(cli_perf.bench_scale)
app.command("bench-intake")(cli_perf.bench_intake)
app.command("bench-availability")(cli_perf.bench_availability)
app.command("bench-feed")(cli_perf.bench_feed)
app.command("bench-memory")(cli_perf.bench_memory)
app.command("bench-scripts")(cli_perf.bench_scripts)


@redis_app.command("url")
def redis_url_cmd() -> None:
    """Start the embedded server if needed and print its URL."""
    print(ops.resolve_url(Settings.from_env()))


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the embedded server (its AOF stays under ONESTOCK_HOME)."""
    stopped = stop_embedded(Settings.from_env().home)
    err.print("stopped" if stopped else "not running")


def main() -> None:
    try:
        app()
    except OnestockError as exc:
        print(f"onestock: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"onestock: error: Redis unreachable: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
