"""Where output goes: results on stdout (rich or one JSON document), logs on stderr.

Keeping the two streams apart is what lets `opsctl ... --json | jq` work while progress
and logs still reach a person watching the terminal. Rendering only: prompts and
approvals are opsctl.approval's.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from rich.console import Console


# C0 and C1 control characters but newline and tab, Unicode's line and paragraph separators
# (U+2028, U+2029: the only characters of its Zl and Zp categories) and its bidirectional marks,
# overrides and isolates (Trojan Source, CVE-2021-42574): what a terminal would act on instead
# of showing, or what a reader splitting lines as str.splitlines() does (VT, FF, CR, FS, GS, RS,
# NEL, U+2028, U+2029: all within these) would take for the start of another line; and every
# other format character (category Cf: soft hyphen, zero-width space and joiners, word joiner,
# BOM, tag characters...) and the blank Hangul fillers, which show as nothing: 'transcribe\u200b'
# printed raw reads as the live database's name (breaker 42 R15). Cf is written out by range, as
# Unicode 15 has it (tests/backup/test_brk42_names.py checks it against unicodedata), since
# building it at import would cost `backup create` its start-up time
_ESCAPED = ("\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160"
            "\u180e\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0"
            "\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
            "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
_CONTROL = re.compile(f"[{_ESCAPED}]")
_ANY_CONTROL = re.compile(f"[\t\n{_ESCAPED}]")
# also drawn as nothing: a combining grapheme joiner, Khmer inherent vowels, Mongolian and other
# variation selectors, the blank Braille pattern; and every blank (\s: spaces of any width)
_BLANK = re.compile(f"[{_ESCAPED}\u034f\u17b4\u17b5\u180b-\u180f\u2800\ufe00-\ufe0f\U000e0100-\U000e01ef\\s]")


def visible(text: str) -> str:
    """`text` with every control character, line or paragraph separator, bidirectional
    override and other invisible format character (Cf, U+00AD, U+200B...) written as its Python escape (ESC as `\\x1b`, CR as `\\r`, U+202E as `\\u202e`): a
    backup label, a check name or a server's answer is shown, never run by the terminal (an
    ESC sequence clears the screen or sets its title; a CR overwrites the line), and one line
    of a log stays one line (a VT, NEL or U+2028 in it no longer starts a forged one).
    Newlines and tabs stay: a message of several lines is printed as several lines."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def without_blanks(text: str) -> str:
    """`text` without what is drawn as nothing: what `visible` escapes (controls, format
    characters), the other default-ignorable characters (combining grapheme joiner, variation
    selectors), the blank Braille pattern and every blank. How a name reads in a listing, and
    a host once IDNA has dropped its ignorables (breakers 47 F6, 48 F2, F4)."""
    return _BLANK.sub("", text)


def first_control(text: str) -> str | None:
    """The first character of `text` that `visible` escapes, or a newline or a tab; None when
    there is none. For a value that must be one line of printable text (a worker setting
    becomes an environment variable, where a newline only ever forges another line)."""
    found = _ANY_CONTROL.search(text)
    return found[0] if found else None


def _console(name: str) -> "Console":
    """`stdout` or `stderr`, the two rich Consoles, made at first use: importing rich.console
    costs ~40 ms of a core, which `backup create` would pay before it can start pg_dump.

    They read no markup (a '[/]' in a path or a transcript is text) and show control
    characters as escapes (`visible`); Rich's own styling and cursor moves are not text and
    pass as they are."""
    if name not in globals():
        from rich.console import Console
        from rich.segment import Segment

        class _Shown(Console):
            def render_str(self, text, **kwargs):  # str printed or put in a table: escaped before layout
                return super().render_str(visible(text), **kwargs)

            def on_broken_pipe(self) -> None:  # Rich's own exits 1, silently: the CLI's exit 141 instead
                raise BrokenPipeError

            def render(self, renderable, options=None):  # the rest (rich Text made elsewhere) as it is sent
                for segment in super().render(renderable, options):
                    if not segment.control and _CONTROL.search(segment.text):
                        segment = Segment(visible(segment.text), segment.style)
                    yield segment

        globals().update(stdout=_Shown(soft_wrap=True, markup=False),
                         stderr=_Shown(stderr=True, soft_wrap=True, markup=False))
    return globals()[name]


def __getattr__(name: str) -> Any:
    """`from opsctl.output import stdout, stderr` works as before (PEP 562)."""
    if name in ("stdout", "stderr"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fallback(value: Any) -> str:
    """What pydantic_core has no JSON form for (a type it does not know) becomes its text,
    so a result always makes one JSON document (the walker before it passed such a value
    through, and `json.dumps` then failed)."""
    return str(value)


def to_jsonable(value: Any) -> Any:
    """`value` as JSON types (dict, list, str, int, float, bool, None).

    pydantic_core's `to_jsonable_python` does the work: dataclasses and pydantic models
    (field names, not aliases) become dicts, enums their values, paths and dates ISO text
    (aware UTC datetimes end in `Z`), sets and tuples lists, dict keys text; non-finite
    floats stay floats. Anything else goes through `_fallback`.
    """
    from pydantic_core import to_jsonable_python  # not at import: `opsctl --help` stays fast

    return to_jsonable_python(value, by_alias=False, fallback=_fallback)


def emit(result: Any, as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    """Print a command's result: one JSON document, or the rich rendering for people."""
    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(result), indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()
    elif render is not None:
        render(_console("stdout"))
    else:
        _console("stdout").print(to_jsonable(result))


def stop_live(live: Any) -> None:
    """Stop a rich Live view. Where its console is no terminal, its last line is ended: Rich
    prints the final view there without a newline, and the next line (an error, or a summary
    on stdout merged into one CI log) was glued onto its last row, out of reach of a
    `grep '^opsctl: error'` (breaker 35 F5)."""
    live.stop()
    if not live.console.is_terminal and not live.transient:
        live.console.line()


class _JsonLogFormatter(logging.Formatter):
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


class _RichLater(logging.Handler):
    """rich's RichHandler on the stderr Console, made at the first record it handles, so a
    command that logs nothing before its work starts loads no rich module for logging.
    Where stderr is no terminal (a CI log, a file, a pipe) a record is one plain line,
    `LEVEL    message`, never wrapped: rich wraps at 80 columns there and folds a long word,
    so a path or an id came out cut in two and could not be copied or searched for."""

    def __init__(self):
        super().__init__()
        self._rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Hand `record` to the RichHandler (filters on this handler have run already), or
        write it as one line where stderr is no terminal."""
        if not _console("stderr").is_terminal:
            try:
                stream = sys.stderr  # at each record: a test runner swaps it per command
                stream.write(f"{record.levelname:<8} {visible(self.format(record))}\n")
                stream.flush()
            except Exception:  # noqa: BLE001 - logging's own rule: a failed log line never fails the caller
                self.handleError(record)
            return
        if self._rich is None:
            from rich.logging import RichHandler

            self._rich = RichHandler(console=_console("stderr"), show_path=False, show_time=False, markup=False)
        self._rich.emit(record)


def setup_logging(log_format: str = "text", debug: bool = False) -> None:
    """Send opsctl's logs to stderr, as rich text for people or JSON lines for machines."""
    level = logging.DEBUG if debug else logging.INFO
    root = logging.getLogger("opsctl")
    root.handlers.clear()
    if log_format == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonLogFormatter())
    else:
        handler = _RichLater()
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
