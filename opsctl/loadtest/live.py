"""What a person watching sees: a live view on stderr while the load runs, then tables.

On a terminal the live view redraws in place (rich Live, refreshed from the run's own loop,
never from a thread: the run lives in gevent without monkey patching). Without a terminal
(CI logs) it prints one plain line every 10 seconds instead of control sequences.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from opsctl.loadtest.compare import Comparison
from opsctl.loadtest.runner import Tick
from opsctl.loadtest.slo import fmt
from opsctl.loadtest.summary import RunSummary

LINE_EVERY_S = 10.0


def _ms(value: float) -> str:
    return f"{value:,.0f}"


def _view(tick: Tick, title: str) -> Table:
    t = Table(title=title, title_justify="left", box=None)
    for col in ("elapsed", "users", "RPS", "p50 ms", "p95 ms", "p99 ms", "requests", "failures"):
        t.add_column(col, justify="right")
    fail = Text(str(tick.failures), style="red") if tick.failures else "0"
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


def _lat(value: float | None) -> str:
    """A stored latency in full (ms, exact); '-' when no request succeeded."""
    return "-" if value is None else fmt(value, "")


def _table(*columns: str, title: str | None = None, first: str = "endpoint", fold_first: bool = True) -> Table:
    """Figures, ids and statuses never wrap (right-aligned, one space between columns); only a
    first column holding a name (an endpoint, a gate) wraps, between words."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
              padding=(0, 0))
    if fold_first:
        t.add_column(first, overflow="fold", ratio=1)
    else:
        t.add_column(first, no_wrap=True, overflow="ignore")
    for col in columns:
        t.add_column(col, justify="right", no_wrap=True, overflow="ignore")
    return t


def _print(console: Console, first: str, columns: list[str], rows: list[list[str | Text]], *,
           title: str | None = None, fold_first: bool = True, styles: list[str | None] | None = None) -> None:
    """Print `rows` (cells under `first` then `columns`) with no value cut at the console's
    width (80 in CI logs): every figure column gets its whole width; the first column, when it
    folds, takes the rest and breaks a name only between its pieces (blanks, after a '/':
    cli.tables.wrap_name), so `/v1/audio/transcriptions` is never split inside a word (breaker
    41 Q10). When even its widest piece does not fit, the table gives way to one `name: value`
    block per row (cli.tables.print_blocks). `styles`: one row style each (None: plain)."""
    from rich.cells import cell_len

    from opsctl.cli.tables import name_pieces, print_blocks, wrap_name
    from opsctl.output import visible

    rows = [[cell if isinstance(cell, Text) else Text(visible(cell)) for cell in row] for row in rows]
    names = [first, *columns]
    widths = [max([cell_len(names[i])] + [cell_len(r[i].plain) for r in rows]) for i in range(len(names))]
    room = console.width - sum(widths[1:]) - (len(names) - 1)  # one cell between columns
    if fold_first:
        widest_piece = max(cell_len(p) for cell in [first, *(r[0].plain for r in rows)] for p in name_pieces(cell))
        if widest_piece <= room:
            widths[0] = min(widths[0], room)
            for r in rows:
                r[0] = Text(wrap_name(r[0].plain, widths[0]), style=r[0].style)
    if sum(widths) + len(names) - 1 > console.width:
        if title:
            console.print(Text(title, style="bold"))
        print_blocks(console, names, rows)
        return
    t = _table(*columns, title=title, first=first, fold_first=fold_first)
    for column, width in zip(t.columns, widths):
        column.min_width = column.max_width = width
    for row, style in zip(rows, styles or [None] * len(rows)):
        t.add_row(*row, style=style)
    console.print(t)


def render_run(summary: RunSummary, console: Console) -> None:
    """The run's table (latencies in ms of successful requests, RPS of successful requests),
    its gates with the figure each judged, reports and the verdict."""
    rows = [[e.key, str(e.requests), f"{e.failures} ({fmt(e.error_rate, '%')})" if e.failures else "0",
             fmt(e.rps, ""), _lat(e.p50_ms), _lat(e.p95_ms), _lat(e.p99_ms), _lat(e.max_ms)]
            for e in _rows(summary)]
    _print(console, "endpoint", ["requests", "failed", "RPS", "p50", "p95", "p99", "max"], rows,
           title=f"run {summary.id}: {summary.profile} on {summary.host} (ms, successful requests)",
           styles=["bold" if e is summary.total or e is summary.judged else None for e in _rows(summary)])
    if summary.judged is not None:
        console.print("latency and RPS gates judge the Transcriptions row: sync /v1/audio/... and whole "
                      "jobs, never health or admin polls", highlight=False, markup=False)
    if summary.failures:
        console.print(f"failures by kind ({len(summary.failures)}):", highlight=False, markup=False)
        for f in summary.failures:
            request = f"{f.method} {f.name}".strip()
            console.print(f"  {f.occurrences} x {request}: {f.error}", highlight=False, markup=False)
    if summary.in_flight:
        console.print(Text(f"{summary.in_flight} requests still in flight {summary.stop_timeout_s:g} s after "
                           "the end: counted as failed (timeouts)", style="red"))
    if summary.worker_counts:
        parts = ", ".join(f"{w.requests_sent}" for w in summary.worker_counts)
        console.print(f"workers: {parts} requests = {sum(w.requests_sent for w in summary.worker_counts)} "
                      f"(master total {summary.total.requests})")
    if summary.gates:
        rows = [[r.gate, r.shown, Text("pass", style="green") if r.passed else Text("BREACHED", style="red")]
                for r in summary.gates]
        _print(console, "SLO gate", ["observed", "result"], rows, title="SLO gates")
        for r in summary.gates:
            if r.basis:
                console.print(f"{r.gate}: judged on {r.basis}", highlight=False, markup=False)
    if summary.aborted_by == "interrupted":
        console.print(Text(f"interrupted after {summary.run_seconds:.0f} s: the figures cover that time only", style="red"))
    elif summary.aborted_by:
        console.print(Text(f"stopped early after {summary.run_seconds:.0f} s: gate {summary.aborted_by} was lost",
                           style="red"))
    for kind, path in summary.reports.items():
        console.print(f"{kind}: {path}", highlight=False)
    verdict = ("passed", "green") if summary.passed else ("failed", "red")
    console.print(Text.assemble(verdict, f": {summary.total.requests} requests, {summary.total.failures} failures in "
                                f"{summary.run_seconds:.0f} s; saved as {summary.id}"))


def _rows(summary: RunSummary) -> list:
    """Each endpoint, then the judged transcription class (when recorded), then the total."""
    return [*summary.endpoints, *([summary.judged] if summary.judged is not None else []), summary.total]


def render_list(rows: list[RunSummary], console: Console) -> None:
    """Past runs: requests and error rate of all requests; p95 and RPS of the transcription
    class, as stored (the figures their gates judged)."""
    if not rows:
        console.print("no load test runs saved yet; 'opsctl loadtest run' makes one")
        return
    cells = [[s.id, s.env, f"{s.users}" + (f"/{s.workers}w" if s.workers else ""), str(s.total.requests),
              fmt(s.total.error_rate, ""), _lat(s.gated.p95_ms), fmt(s.gated.rps, ""),
              Text("pass", style="green") if s.passed else Text("fail", style="red")] for s in rows]
    _print(console, "id", ["env", "users", "requests", "err %", "p95 ms", "RPS", "SLO"], cells, fold_first=False)


def _change(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:+.1f}{unit}"


def render_comparison(cmp: Comparison, console: Console) -> None:
    """Per endpoint: p95 of each run as stored (ms), then the changes of p50/p95/p99, error
    rate and RPS, and the verdict."""
    rows = []
    floor = cmp.thresholds.min_requests
    unjudged = False
    for r in cmp.rows:
        base_p95 = _lat(r.base.p95_ms) if r.base is not None else ""
        head_p95 = _lat(r.head.p95_ms) if r.head is not None else ""
        if r.base is None or r.head is None:
            only = "only in " + ("head" if r.base is None else "base")
            # an endpoint the base measured and the head lost is a regression (compare._row)
            rows.append([r.endpoint, base_p95, head_p95, "", "", "", "", "", "REGRESSION" if r.regressions else only])
            continue
        c = r.changes
        # a base under the noise floor judges nothing: "ok" beside +100pp read as a verdict (breaker 42 R17)
        thin = r.base.requests < floor
        unjudged = unjudged or (thin and not r.regressions)
        rows.append([r.endpoint, base_p95, head_p95, _change(c["p50_ms"], "%"),
                     _change(c["p95_ms"], "%"), _change(c["p99_ms"], "%"), _change(c["error_rate"], "pp"),
                     _change(c["rps"], "%"), "REGRESSION" if r.regressions else "unjudged" if thin else "ok"])
    for row in rows:
        row[-1] = Text(row[-1], style="red" if row[-1] == "REGRESSION" else "green" if row[-1] == "ok" else "yellow"
                       if row[-1] == "unjudged" else "")
    _print(console, "endpoint", ["p95 base", "p95 head", "p50", "p95", "p99", "err", "RPS", "verdict"], rows,
           title=f"{cmp.base} -> {cmp.head}")
    if unjudged:
        console.print(f"unjudged: the base has fewer than {floor} requests of it (--min-requests, the noise floor)",
                      highlight=False, markup=False)
    for line in cmp.differences:
        console.print(Text.assemble(("note", "yellow"), f" the runs differ in {line}: figures compare two setups, "
                                    "not two releases"), highlight=False)
    for line in cmp.regressions:
        console.print(Text.assemble(("regression", "red"), f" {line}"), highlight=False)
    if not cmp.regressions:
        console.print("no regressions beyond the thresholds")
