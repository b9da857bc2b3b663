"""`opsctl health`: the health sweep's front door. Parses, calls opsctl.health, renders.

Exit codes follow the Nagios plugin convention (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)
for the sweep's verdict. Bad usage still exits 2 with one `opsctl: error:` line on stderr,
as everywhere in opsctl: a monitoring system can tell the two apart by that line (and by
`--json`, whose document only exists when a sweep ran).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, environment

if TYPE_CHECKING:
    from rich.text import Text


class Mode(str, enum.Enum):
    once = "once"
    continuous = "continuous"
    scheduled = "scheduled"


_STYLE = {"OK": "green", "WARNING": "yellow", "CRITICAL": "bold red", "UNKNOWN": "magenta"}


def _rows(result) -> list[tuple[str, str, str, str, str]]:
    """Per check: name, status, value with its unit ('-' for none), message, duration in ms;
    control characters in a name or message shown as escapes (output.visible), as measured."""
    from opsctl.output import visible

    return [(visible(r.name), r.status.name, "-" if r.value is None else f"{r.value:g} {r.unit}".strip(),
             visible(r.message), f"{r.duration_ms:.0f}") for r in result.results]


def _table(result, title: str | None = None):
    """Readable at 80 columns and without a TTY: names, statuses and figures keep their full
    width (no_wrap); only the message wraps onto more lines."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = _rows(result)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 0))
    for i, header in enumerate(("check", "status", "value")):
        table.add_column(header, no_wrap=True, overflow="ignore",
                         min_width=max([len(header), *(len(row[i]) for row in rows)]))
    table.add_column("message", overflow="fold", ratio=1)
    table.add_column("ms", justify="right", no_wrap=True, overflow="ignore",
                     min_width=max([2, *(len(row[4]) for row in rows)]))
    for name, status, value, message, ms in rows:  # Text: a '[' in a message is not Rich markup
        table.add_row(Text(name), Text(status, style=_STYLE[status]), Text(value), Text(message), Text(ms))
    return table


def _title(result) -> "Text":
    from rich.text import Text

    return Text.assemble(f"{result.env}: ", (result.status.name, _STYLE[result.status.name]),
                         f" ({len(result.results)} checks in {result.duration_ms:.0f} ms, "
                         f"{result.started_at:%H:%M:%S} UTC)")


def health(
    ctx: typer.Context,
    env: EnvOpt = "local",
    mode: Annotated[Mode, typer.Option("--mode", help="once: one sweep; continuous: every --interval; "
                                                      "scheduled: on --cron, with a JSONL history.")] = Mode.once,
    interval: Annotated[Optional[float], typer.Option("--interval", help="Seconds between sweeps (continuous; default health.interval).")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help="Cron expression (scheduled; default health.cron).")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="Stop after N sweeps (continuous, scheduled).")] = None,
    check: Annotated[Optional[list[str]], typer.Option("--check", help="Only these checks (name or kind, glob; repeatable).")] = None,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", help="Leave out these checks (name or kind, glob; repeatable).")] = None,
    junit: Annotated[Optional[str], typer.Option("--junit", metavar="FILE", help="Also write the (last) sweep as JUnit XML.")] = None,
    history: Annotated[Optional[str], typer.Option("--history", metavar="FILE", help="Append each sweep to this JSONL file (scheduled: default health.history).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve check results as Prometheus metrics on 127.0.0.1:PORT.")] = None,
    beat: Annotated[Optional[str], typer.Option("--beat", help="Record a beat of heartbeat NAME (end of a nightly job) and exit.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the sweep as one JSON document on stdout; "
                                                         "continuous and scheduled: one per sweep, a line each (JSON Lines).")] = False,
) -> None:
    """Health sweeps: every check at once, each with a timeout. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

    `opsctl health silence --check NAME --for 30m` holds a check's alerts for a while."""
    if ctx.invoked_subcommand is not None:
        return
    from opsctl.health import monitor
    from opsctl.output import emit, stderr

    project, envcfg = environment(env)
    if beat is not None:
        return _beat(project, envcfg, beat, as_json)
    options = dict(interval=interval, cron=cron, iterations=iterations, only=check, skip=skip, junit=junit,
                   history=history, metrics_port=metrics_port)
    if mode is Mode.once:
        result = monitor.run(project, envcfg, mode.value, strict=True, **options).last
        doc, code = result.to_dict(), int(result.status)
        if result.not_written:  # the verdict printed, each report not written one line, never exit 0
            from opsctl.health.model import Status

            code = code or int(Status.UNKNOWN)
            doc.update(code=code, status=Status(code).name, not_written=result.not_written)
        emit(doc, as_json, lambda c: _print(c, result))
        if result.not_written:
            import sys

            from opsctl.output import visible

            sys.stdout.flush()
            for fault in result.not_written:
                sys.stderr.write(f"opsctl: error: {visible(fault)}\n")
        raise typer.Exit(code)
    from opsctl.errors import Interrupted
    from opsctl.signals import sigterm_as_interrupt

    view = _SweepView(as_json)
    try:  # SIGTERM (systemd, Kubernetes, CI) stops it as Ctrl-C does: alerts queued are sent first
        with sigterm_as_interrupt():
            outcome = monitor.run(project, envcfg, mode.value, on_sweep=view.show, **options)
    except KeyboardInterrupt:
        raise Interrupted(f"health monitor of {envcfg.name} stopped (Ctrl-C or SIGTERM); the alerts it had "
                          "queued were delivered first") from None
    finally:
        view.stop()
    failed = [d for d in outcome.deliveries if not d["ok"]]
    if failed:
        stderr.print(f"{len(failed)} alert deliveries failed (see the log above)")
    raise typer.Exit(int(outcome.last.status) if outcome.last else 0)


def _print(console, result) -> None:
    """The sweep as a table; as `name: value` blocks when the table can't fit the console
    without splitting a word of a message (a path, an object name: what gets copied)."""
    from opsctl.cli.tables import longest_word

    rows = _rows(result)
    fixed = sum(max([len(header), *(len(row[i]) for row in rows)])
                for i, header in ((0, "check"), (1, "status"), (2, "value"), (4, "ms")))
    if fixed + max(len("message"), longest_word(row[3] for row in rows)) + 4 <= console.width:  # 4 separators
        console.print(_table(result, _title(result)))
    else:
        from rich.text import Text

        from opsctl.cli.tables import print_blocks

        console.print(_title(result))
        print_blocks(console, ["check", "status", "value", "message", "ms"],
                     [[Text(cell, style=_STYLE[cell] if i == 1 else "") for i, cell in enumerate(row)]
                      for row in rows])
    for line in _silence_lines(result):
        console.print(line, markup=False, highlight=False)


def _silence_lines(result) -> list[str]:
    """One line per silence in force: its pattern, end, reason and the checks of this sweep it holds."""
    import fnmatch

    lines = []
    for s in sorted(result.silences, key=lambda s: s["until"]):
        held = [r.name for r in result.results if r.name in result.silenced
                and (fnmatch.fnmatch(r.name, s["check"]) or fnmatch.fnmatch(r.kind, s["check"]))]
        why = f" ({s['reason']})" if s["reason"] else ""
        holds = f": holds {', '.join(held)}" if held and held != [s["check"]] else "" if held else ": holds no check of this sweep"
        lines.append(f"silenced: {s['check']} until {_when(s['until'])}{why}{holds}")
    return lines


def _when(iso: str) -> str:
    import datetime as dt

    return f"{dt.datetime.fromisoformat(iso):%Y-%m-%d %H:%M:%S} UTC"


class _SweepView:
    """How a monitor loop shows each sweep: a JSON line (--json), a live table on a terminal
    (started at the first sweep, so a refusal at start-up prints plainly), else a table per sweep."""

    def __init__(self, as_json: bool) -> None:
        from rich.live import Live

        from opsctl.output import stdout

        self.as_json = as_json
        self.live = Live(console=stdout, auto_refresh=False) if stdout.is_terminal and not as_json else None
        self.started = False

    def show(self, result, alerts, next_at) -> None:
        import json
        import sys
        import time

        from rich.console import Group

        from opsctl.output import stderr, stdout

        sent = ", ".join(f"{a.event} {a.check}" for a in alerts)
        if self.as_json:
            doc = result.to_dict()
            doc["alerts"] = [{"event": a.event, "check": a.check, "status": a.status} for a in alerts]
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()
        elif self.live is not None:
            if not self.started:
                self.live.start()
                self.started = True
            footer = f"next sweep at {time.strftime('%H:%M:%S', time.localtime(next_at))}" + (f"; alerts: {sent}" if sent else "")
            held = "".join(f"\n{line}" for line in _silence_lines(result))
            self.live.update(Group(_table(result, _title(result)), footer + held), refresh=True)
        else:
            _print(stdout, result)
        if alerts and not self.as_json:
            stderr.print(f"alerts queued: {sent}")

    def stop(self) -> None:
        if self.started:
            self.live.stop()


def _beat(project, envcfg, name: str, as_json: bool) -> None:
    from opsctl.errors import UsageError
    from opsctl.health.checks import heartbeat
    from opsctl.output import emit

    pushed = [h.name for h in envcfg.health.heartbeats if h.source == "push"]
    if name not in pushed:
        raise UsageError(f"no push heartbeat '{name}' in environments.{envcfg.name}.health.heartbeats "
                         f"(configured: {', '.join(pushed) or 'none'}); add it to opsctl.yaml first")
    when = heartbeat.record(project.state_dir, name)
    emit({"heartbeat": name, "at": when.isoformat()}, as_json, lambda c: c.print(f"beat recorded: {name} at {when:%Y-%m-%d %H:%M:%S} UTC"))


def silence(
    check: Annotated[str, typer.Option("--check", help="Check name or kind to hold (glob, as in 'opsctl health --check').")],
    for_: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1h30m.")],
    env: EnvOpt = "local",
    reason: Annotated[str, typer.Option("--reason", help="Why, shown with the silence.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Hold a check's alerts for a while (a maintenance window); the sweep still runs and shows it."""
    from opsctl.health import silences
    from opsctl.loadtest.profiles import parse_duration
    from opsctl.output import emit

    project, envcfg = environment(env)
    made, warning = silences.silence(project, envcfg, check, parse_duration(for_, "--for", silences.MAX_SECONDS), reason)
    if warning:
        from opsctl.output import visible

        typer.echo(visible(warning), err=True)  # it repeats the pattern given
    emit(made, as_json, lambda c: c.print(
        f"silenced {made.check} in {envcfg.name} until {_when(made.until)}" + (f" ({made.reason})" if made.reason else "")
        + f"; id {made.id}" + (f"; Alertmanager silence {made.alertmanager_id}" if made.alertmanager_id else ""),
        markup=False, highlight=False))


def unsilence(
    check: Annotated[str, typer.Option("--check", help="The silenced pattern (as given to 'silence') or its id.")],
    env: EnvOpt = "local",
    as_json: JsonOpt = False,
) -> None:
    """End a silence before its time."""
    from opsctl.health import silences
    from opsctl.output import emit

    project, envcfg = environment(env)
    gone = silences.remove(project, envcfg.name, check, alertmanager=envcfg.monitoring.alertmanager_url)
    emit(gone, as_json, lambda c: c.print(f"ended {len(gone)} silence(s) of {check} in {envcfg.name}",
                                          markup=False, highlight=False))


def register(root: typer.Typer) -> None:
    app = typer.Typer(rich_markup_mode=None, invoke_without_command=True, no_args_is_help=False)
    app.callback(help=health.__doc__)(health)
    app.command("silence")(silence)
    app.command("unsilence")(unsilence)
    root.add_typer(app, name="health")
