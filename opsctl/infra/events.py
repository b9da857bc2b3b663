"""Pulumi engine events -> which resources change, how far along they are, what failed.

`Tracker` is the `on_event` callback given to the Automation API (called from its reader
thread, hence the lock); `LiveView` draws the tracker on stderr: a rich live table on a
terminal, one line per finished step otherwise (CI logs stay readable).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

SYMBOLS = {"create": "+", "update": "~", "delete": "-", "replace": "+-", "create-replacement": "+-",
           "delete-replaced": "--", "refresh": "↻", "read": ">", "import": "=", "same": " "}
# Steps that only tell the engine something (no change to a cloud resource).
QUIET_OPS = {"same", "read", "refresh"}


@dataclass
class Step:
    """One resource the engine is changing: its URN, type token, logical name, operation
    (create, update, delete, replace...; see SYMBOLS) and status."""

    urn: str
    type: str
    name: str
    op: str
    status: str = "running"  # running | done | failed


@dataclass
class Tracker:
    """Folds engine events into steps, diagnostics and the final summary."""

    listener: Callable[["Tracker"], None] | None = None
    steps: dict[str, Step] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    unchanged: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, event: Any) -> None:
        with self._lock:
            self._fold(event)
        if self.listener is not None:
            self.listener(self)

    def _fold(self, event: Any) -> None:
        if event.resource_pre_event is not None:
            meta = event.resource_pre_event.metadata
            op = getattr(meta.op, "value", str(meta.op))
            if meta.type == "pulumi:pulumi:Stack":
                return
            if op in QUIET_OPS:
                self.unchanged += 1
                return
            self.steps[meta.urn] = Step(meta.urn, meta.type, meta.urn.rsplit("::", 1)[-1], op)
        elif event.res_outputs_event is not None:
            step = self.steps.get(event.res_outputs_event.metadata.urn)
            if step is not None:
                step.status = "done"
        elif event.res_op_failed_event is not None:
            step = self.steps.get(event.res_op_failed_event.metadata.urn)
            if step is not None:
                step.status = "failed"
        elif event.diagnostic_event is not None:
            diag = event.diagnostic_event
            text = diag.message.strip()
            if diag.severity == "error" and text:
                self.errors.append(f"{diag.urn.rsplit('::', 1)[-1]}: {text}" if diag.urn else text)
            elif diag.severity == "warning" and text:
                self.warnings.append(text)
        elif event.summary_event is not None:
            self.summary = {getattr(k, "value", str(k)): v
                            for k, v in (event.summary_event.resource_changes or {}).items()}

    def snapshot(self) -> list[Step]:
        """Copies of the steps so far, in the engine's order (safe to read from another thread)."""
        with self._lock:
            return [Step(**{k: getattr(s, k) for k in ("urn", "type", "name", "op", "status")})
                    for s in self.steps.values()]

    def counts(self) -> dict[str, int]:
        """Steps per operation so far, e.g. {"create": 3, "update": 1}; unchanged ones not counted."""
        out: dict[str, int] = {}
        for step in self.snapshot():
            out[step.op] = out.get(step.op, 0) + 1
        return out


class LiveView:
    """The tracker drawn on stderr while an operation runs."""

    MAX_ROWS = 18

    def __init__(self, title: str, console=None):
        from opsctl import output

        self.title = title
        self.console = console or output.stderr
        self.live = None
        self._printed: set[str] = set()
        self._started = False

    def __enter__(self) -> "LiveView":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _start(self) -> None:
        """Begin drawing at the first engine event: checks that fail first leave stderr clean."""
        self._started = True
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        else:
            self.console.print(self.title, markup=False, highlight=False)

    def __call__(self, tracker: Tracker) -> None:
        """The view is the listener itself: `with LiveView(t) as listener` (a core operation's `watch`)."""
        self.update(tracker)

    def update(self, tracker: Tracker) -> None:
        """The Tracker's listener: redraw the live table, or print the steps finished since last time."""
        if not self._started:
            self._start()
        if self.live is not None:
            self.live.update(self.render(tracker))
            return
        for step in tracker.snapshot():  # no terminal: one line per finished step
            if step.status != "running" and step.urn not in self._printed:
                self._printed.add(step.urn)
                self.console.print(f"{SYMBOLS.get(step.op, step.op)} {step.type} {step.name}: {step.op} {step.status}",
                                   markup=False, highlight=False)

    def render(self, tracker: Tracker):
        """A rich renderable: a heading with done/total and unchanged counts, then at most
        MAX_ROWS steps, running ones first."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        steps = tracker.snapshot()
        done = sum(s.status == "done" for s in steps)
        table = Table(box=None, show_header=False, pad_edge=False)
        colors = {"running": "yellow", "done": "green", "failed": "red"}
        shown = sorted(steps, key=lambda s: s.status != "running")[: self.MAX_ROWS]
        for s in shown:
            table.add_row(SYMBOLS.get(s.op, s.op), s.type, s.name, Text(f"{s.op} {s.status}", style=colors[s.status]))
        more = f"\n… {len(steps) - len(shown)} more" if len(steps) > len(shown) else ""
        head = Text.assemble((self.title, "bold"), f"  {done}/{len(steps)} changes done, {tracker.unchanged} unchanged")
        return Group(head, table, more) if more else Group(head, table)
