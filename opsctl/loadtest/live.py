"""What a person watching sees: a live view on stderr while the load runs, then tables.

On a terminal the live view redraws in place (rich Live, refreshed from the run's own loop,
never from a thread: the run lives in gevent without monkey patching). Without a terminal
(CI logs) it prints one plain line every 10 seconds instead of control sequences.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.table import Table

from opsctl.loadtest.compare import Comparison
from opsctl.loadtest.runner import Tick
from opsctl.loadtest.summary import RunSummary

LINE_EVERY_S = 10.0


def _ms(value: float) -> str:
    return f"{value:,.0f}"


def _view(tick: Tick, title: str) -> Table:
    t = Table(title=title, title_justify="left", box=None)
    for col in ("elapsed", "users", "RPS", "p50 ms", "p95 ms", "p99 ms", "requests", "failures"):
        t.add_column(col, justify="right")
    fail = f"[red]{tick.failures}[/red]" if tick.failures else "0"
    t.add_row(f"{tick.elapsed_s:.0f}/{tick.duration_s:.0f} s", str(tick.users), f"{tick.rps:.1f}",
              _ms(tick.p50_ms), _ms(tick.p95_ms), _ms(tick.p99_ms), str(tick.requests), fail)
    return t


@contextmanager
def live_view(console: Console, title: str, quiet: bool = False) -> Iterator[Callable[[Tick], None]]:
    """Yields on_tick for runner.run."""
    if quiet:
        yield lambda tick: None
        return
    if not console.is_terminal:
        last = [-LINE_EVERY_S]

        def line(tick: Tick) -> None:
            if tick.elapsed_s - last[0] >= LINE_EVERY_S:
                last[0] = tick.elapsed_s
                console.print(f"{title}: {tick.elapsed_s:.0f}/{tick.duration_s:.0f} s, {tick.users} users, "
                              f"{tick.rps:.1f} rps, p50/p95/p99 {tick.p50_ms:.0f}/{tick.p95_ms:.0f}/"
                              f"{tick.p99_ms:.0f} ms, {tick.requests} requests, {tick.failures} failures",
                              markup=False, highlight=False)
        yield line
        return
    from rich.live import Live

    live = Live(console=console, auto_refresh=False, transient=False)
    live.start()
    try:
        yield lambda tick: live.update(_view(tick, title), refresh=True)
    finally:
        live.stop()


def render_run(summary: RunSummary, console: Console) -> None:
    t = Table(title=f"run {summary.id}: {summary.profile} on {summary.host}", title_justify="left")
    t.add_column("endpoint", no_wrap=True, min_width=24)
    for col in ("requests", "failures", "RPS", "p50", "p95", "p99", "max"):
        t.add_column(col, justify="right", no_wrap=True)
    for e in [*summary.endpoints, summary.total]:
        t.add_row(e.key, str(e.requests), f"{e.failures} ({e.error_rate:.1f}%)" if e.failures else "0",
                  f"{e.rps:.2f}", _ms(e.p50_ms), _ms(e.p95_ms), _ms(e.p99_ms), _ms(e.max_ms),
                  style="bold" if e is summary.total else None)
    console.print(t)
    if summary.worker_counts:
        parts = ", ".join(f"{w.requests_sent}" for w in summary.worker_counts)
        console.print(f"workers: {parts} requests = {sum(w.requests_sent for w in summary.worker_counts)} "
                      f"(master total {summary.total.requests})")
    if summary.gates:
        g = Table("SLO gate", "observed", "result", title="SLO gates", title_justify="left")
        for r in summary.gates:
            seen = "-" if r.observed is None else (f"{r.observed:.2f}%" if r.unit == "%" else
                                                   f"{r.observed:,.0f} ms" if r.unit == "ms" else f"{r.observed:.2f}")
            g.add_row(r.gate, seen, "[green]pass[/green]" if r.passed else "[red]BREACHED[/red]")
        console.print(g)
    if summary.aborted_by == "interrupted":
        console.print(f"[red]interrupted after {summary.run_seconds:.0f} s: the figures cover that time only[/red]")
    elif summary.aborted_by:
        console.print(f"[red]stopped early after {summary.run_seconds:.0f} s: gate {summary.aborted_by} was lost[/red]")
    for kind, path in summary.reports.items():
        console.print(f"{kind}: {path}", highlight=False)
    verdict = "[green]passed[/green]" if summary.passed else "[red]failed[/red]"
    console.print(f"{verdict}: {summary.total.requests} requests, {summary.total.failures} failures in "
                  f"{summary.run_seconds:.0f} s; saved as {summary.id}")


def render_list(rows: list[RunSummary], console: Console) -> None:
    t = Table(box=None)
    t.add_column("id", no_wrap=True, min_width=26)
    for col in ("env", "users", "requests", "err %", "p95 ms", "RPS", "SLO"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("env", "SLO") else "right")
    for s in rows:
        t.add_row(s.id, s.env, f"{s.users}" + (f"/{s.workers}w" if s.workers else ""), str(s.total.requests),
                  f"{s.total.error_rate:.1f}", _ms(s.total.p95_ms), f"{s.total.rps:.2f}",
                  "[green]pass[/green]" if s.passed else "[red]fail[/red]")
    console.print(t if rows else "no load test runs saved yet; 'opsctl loadtest run' makes one")


def _change(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:+.1f}{unit}"


def render_comparison(cmp: Comparison, console: Console) -> None:
    t = Table("endpoint", "p50", "p95", "p99", "err", "RPS", "verdict",
              title=f"{cmp.base} -> {cmp.head}", title_justify="left")
    for r in cmp.rows:
        if r.base is None or r.head is None:
            t.add_row(r.endpoint, "", "", "", "", "", "only in " + ("head" if r.base is None else "base"))
            continue
        c = r.changes
        t.add_row(r.endpoint, _change(c["p50_ms"], "%"), _change(c["p95_ms"], "%"), _change(c["p99_ms"], "%"),
                  _change(c["error_rate"], "pp"), _change(c["rps"], "%"),
                  "[red]REGRESSION[/red]" if r.regressions else "[green]ok[/green]")
    console.print(t)
    for line in cmp.regressions:
        console.print(f"[red]regression[/red] {line}", highlight=False)
    if not cmp.regressions:
        console.print("no regressions beyond the thresholds")
