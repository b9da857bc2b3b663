"""Where output goes: results on stdout (rich or one JSON document), logs on stderr.

Keeping the two streams apart is what lets `opsctl ... --json | jq` work while progress
and logs still reach a person watching the terminal.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def is_interactive() -> bool:
    """True when a person can answer a prompt: a TTY on stdin and not in CI."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        return False
    return sys.stdin.isatty()


def confirm(question: str, yes: bool) -> None:
    """Approval for a change; kept for callers of the old name (see opsctl.approval)."""
    from opsctl.approval import confirm as ask

    ask(question, yes)


def to_jsonable(value: Any) -> Any:
    """Turn results (dataclasses, pydantic models, paths, enums, datetimes) into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return to_jsonable(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def emit(result: Any, as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    """Print a command's result: one JSON document, or the rich rendering for people."""
    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(result), indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()
    elif render is not None:
        render(stdout)
    else:
        stdout.print(to_jsonable(result))


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log shippers and CI log parsers."""

    def format(self, record: logging.LogRecord) -> str:
        """`{"time" (ISO 8601 UTC), "level", "logger", "message", **record.fields,
        "exception"?}` as one line."""
        doc = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, val in getattr(record, "fields", {}).items():
            doc[key] = to_jsonable(val)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(log_format: str = "text", debug: bool = False) -> None:
    """Send opsctl's logs to stderr, as rich text for people or JSON lines for machines."""
    level = logging.DEBUG if debug else logging.INFO
    root = logging.getLogger("opsctl")
    root.handlers.clear()
    if log_format == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
    else:
        from rich.logging import RichHandler

        handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
