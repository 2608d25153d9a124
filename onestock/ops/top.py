"""``onestock top``: the dashboard's figures in a terminal (rich), for servers with no browser."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live as RichLive
from rich.table import Table
from rich.text import Text

from onestock.ops.live import Live
from onestock.ops.metrics import Reader
from state.store import Store


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:,.0f} ms"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 3600 else f"{s / 3600:.1f} h"


def _alarm(n: int) -> Text:
    return Text(f"{n:,}", style="bold green" if n == 0 else "bold red")


def _loop_tables(v: dict[str, Any]) -> list[Table]:
    """Movements by kind and outcome, webhook deliveries per subscriber (each when any)."""
    out = []
    if v["movements"]:
        moves = Table(title="stock movements", title_justify="left")
        for col in ("kind", "applied", "refused"):
            moves.add_column(col, justify="left" if col == "kind" else "right")
        for kind, n in v["movements"].items():
            moves.add_row(kind, f"{n['applied']:,}", f"{n['refused']:,}")
        out.append(moves)
    if v["subscribers"]:
        subs = Table(title="webhook subscribers", title_justify="left")
        for col in ("subscriber", "delivered", "retried", "retrying", "given up", "lag"):
            subs.add_column(col, justify="left" if col == "subscriber" else "right")
        for s in v["subscribers"]:
            lag = "-" if s["lag"] is None else f"{s['lag']:,}"
            subs.add_row(s["id"], f"{s['delivered']:,}", f"{s['retried']:,}",
                         f"{s['retrying']:,}", _alarm(s["given_up"]), lag)  # fmt: skip
        out.append(subs)
    return out


def render(v: dict[str, Any], skus: int = 15) -> Group:
    """One frame: the headline figures, decisions, stock with sell-out, movements, webhook
    subscribers, campaigns."""
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    lat = v["latency"]
    over = Text(f"{v['oversold']:,}", style="bold green" if v["oversold"] == 0 else "bold red")
    head.add_row(
        f"orders/s 1 s [bold]{v['rate_1s']:,.0f}[/]",
        f"10 s [bold]{v['rate_10s']:,.0f}[/]",
        f"webhooks/s [bold]{v['intake_rate_1s']:,.0f}[/]",
        f"decided [bold]{v['decided']:,}[/]",
    )
    head.add_row(
        f"p50 [bold]{_ms(lat['p50'])}[/]",
        f"p95 [bold]{_ms(lat['p95'])}[/]",
        f"p99 [bold]{_ms(lat['p99'])}[/]",
        f"backlog [bold]{v['backlog']:,}[/]",
    )
    head.add_row(
        f"dead letters [bold]{v['dead']:,}[/]",
        f"held for gifts [bold]{v['held']:,}[/]",
        f"cancelled [bold]{v['cancelled']:,}[/]",
        Text.assemble("oversold units ", over),
    )
    d = v["deliveries"]
    head.add_row(
        f"movements [bold]{v['movements_applied']:,}[/] applied "
        f"[bold]{v['movements_refused']:,}[/] refused",
        f"transitions [bold]{v['transitions']:,}[/]",
        f"webhooks [bold]{d['delivered']:,}[/] delivered [bold]{d['retrying']:,}[/] retrying",
        Text.assemble("given up ", _alarm(d["given_up"])),
    )
    decisions = Table(title="decisions", title_justify="left", expand=False)
    decisions.add_column("outcome")
    decisions.add_column("orders", justify="right")
    decisions.add_row("accepted", f"{v['accepted']:,}", style="green")
    for reason, n in v["rejected"].items():
        decisions.add_row(f"rejected: {reason}", f"{n:,}", style="red")
    stock = Table(title="stock (nearest sell-out first)", title_justify="left")
    stock.add_column("SKU", no_wrap=True, min_width=10)
    stock.add_column("units", justify="right")
    channels = list(v["stock"][0]["channels"]) if v["stock"] else []
    for c in channels:
        stock.add_column(c, justify="right")
    stock.add_column("sold/s", justify="right")
    stock.add_column("sell-out", justify="right", no_wrap=True)
    for s in v["stock"][:skus]:
        sellout = "sold out" if s["total"] == 0 else _duration(s["sellout_s"])
        stock.add_row(
            s["sku"], f"{s['total']:,}", *(f"{s['channels'][c]:,}" for c in channels),
            f"{s['rate']:,.1f}", sellout,
        )  # fmt: skip
    parts: list[Any] = [head, decisions, stock, *_loop_tables(v)]
    if v["campaigns"]:
        camps = Table(title="first-N gifts", title_justify="left")
        for col in ("campaign", "SKU", "first N", "awarded", "left", "late"):
            camps.add_column(col, justify="left" if col in ("campaign", "SKU") else "right")
        for c in v["campaigns"]:
            camps.add_row(c["id"], c["sku"], f"{c['first_n']:,}", f"{c['awarded']:,}",
                          f"{c['left']:,}", f"{c['late']:,}")  # fmt: skip
        parts.append(camps)
    return Group(*parts)


def run_top(url: str, interval: float = 1.0, frames: int | None = None) -> None:
    """Refresh every ``interval`` seconds; ``frames``: stop after that many (else Ctrl-C)."""
    live = Live(Reader(Store.connect(url)))
    console = Console()
    shown = 0
    if frames is not None and not console.is_terminal:  # plain output for scripts and logs
        while shown < frames:
            started = time.monotonic()
            console.print(render(live.sample()))
            shown += 1
            if shown < frames:
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        return
    with RichLive(render(live.sample()), console=console, screen=False, auto_refresh=False) as rl:
        shown = 1
        try:
            while frames is None or shown < frames:
                time.sleep(interval)
                rl.update(render(live.sample()), refresh=True)
                shown += 1
        except KeyboardInterrupt:
            pass
