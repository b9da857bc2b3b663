"""Gatus-style conditions on an HTTP answer: `[STATUS] == 200`, `[BODY].status == ready`.

Kept to Gatus's syntax and meaning, so a team that knows Gatus reads opsctl.yaml without a
manual: placeholders [STATUS], [RESPONSE_TIME] (whole ms), [BODY] (with .field and [index]),
[CONNECTED]; len(...) on the left; on the right a value, any(a, b) or pat(glob). As in Gatus,
`==` and `!=` compare text (`[BODY].version == 1.10` is not met by "1.1"), `<`, `>`, `<=`, `>=`
numbers; `== any(a, b)` is met by one of them and `!=` is the negation of `==` (so
`!= any(500, 503)` fails on either); pat is Go's filepath.Match, as Gatus's pattern.Match
calls it, with '/' removed from both sides: `*`, `?`, `[...]` and `[^...]` classes, `\`
escapes. Parsed when opsctl.yaml is loaded, so a typo, a malformed pattern or a function
opsctl does not evaluate is a configuration error, not a check that always passes (breaker
53 F3: `!= pat(*failing*)` was compared as the text "pat(*failing*)"; breaker 54 F1: `!=
any(...)` and Python's fnmatch classes passed where Gatus fails).
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from typing import Any

# the orderings, on numbers; `==` compares text and `!=` is its negation (Condition.evaluate)
_ORDER = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_SYNTAX = re.compile(r"^\s*(len\()?\[(STATUS|RESPONSE_TIME|BODY|CONNECTED)\]((?:\.[\w-]+|\[\d+\])*)(\))?"
                     r"\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


def _glob(glob: str) -> re.Pattern:
    """Go's filepath.Match pattern (path/filepath, match.go) as a regular expression, '/'
    already removed: `*` any run, `?` one character, `[...]` a class of characters and lo-hi
    ranges (`[^...]` its complement; `]` and `-` only escaped in it), `\\c` the character c.
    ValueError for what Go calls ErrBadPattern. Written here: Python's fnmatch reads `[!...]`
    as the complement, `^` and `\\` as plain characters, and no library does Go's grammar."""
    out, i, n = [], 0, len(glob)

    def char(j: int) -> tuple[str, int]:  # one character of a class, escapes read
        if j >= n:
            raise ValueError("a class is not closed")
        if glob[j] == "\\":
            if j + 1 >= n:
                raise ValueError("it ends in '\\'")
            return glob[j + 1], j + 2
        if glob[j] in "-]":
            raise ValueError(f"'{glob[j]}' in a class must be escaped")
        return glob[j], j + 1

    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i >= n:
                raise ValueError("it ends in '\\'")
            out.append(re.escape(glob[i]))
            i += 1
        elif c == "[":
            negated = i < n and glob[i] == "^"
            i += negated
            items: list[str] = []
            first = True
            while first or i >= n or glob[i] != "]":
                first = False
                lo, i = char(i)
                if i < n and glob[i] == "-":
                    hi, i = char(i + 1)
                    if lo <= hi:  # Go: a range with lo > hi matches nothing
                        items.append(f"{re.escape(lo)}-{re.escape(hi)}")
                else:
                    items.append(re.escape(lo))
            i += 1  # the ']'
            if items:
                out.append(f"[{'^' if negated else ''}{''.join(items)}]")
            else:
                out.append("." if negated else "(?!)")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class Pattern:
    """The right side `pat(glob)`: matched as Gatus's pattern.Match does (Go's filepath.Match,
    '/' removed from the glob and the value, case kept)."""
    glob: str

    def __post_init__(self) -> None:
        _glob(self.glob.replace("/", ""))  # ValueError now, when opsctl.yaml is read

    def matches(self, value: Any) -> bool:
        return self.glob == "*" or _glob(self.glob.replace("/", "")).fullmatch(_text(value).replace("/", "")) is not None


def _text(value: Any) -> str:
    """A placeholder's value as Gatus compares it: JSON's spelling of true, false and numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


@dataclass(frozen=True)
class Condition:
    """One parsed Gatus condition: the placeholder it reads, the body path for [BODY], whether
    len() is applied, the operator and the accepted values (several only for any(...))."""
    text: str
    placeholder: str
    path: tuple[str | int, ...]
    length: bool
    op: str
    expected: tuple[Any, ...]  # several only for `any(a, b)`: text, a number (ordering) or a Pattern

    def evaluate(self, status: int | None, response_ms: float | None, body: Any,
                 connected: bool) -> tuple[bool, str]:
        """(passed, the condition with the value it saw, as Gatus shows it)."""
        actual = {"STATUS": status, "RESPONSE_TIME": None if response_ms is None else round(response_ms),
                  "CONNECTED": connected}.get(self.placeholder, _dig(body, self.path))
        if self.length:
            actual = len(actual) if hasattr(actual, "__len__") else None
        if self.op == "!=":  # the negation of `==`: differs from every value of any(...)
            passed = not any(_compare(actual, "==", want) for want in self.expected)
        else:
            passed = any(_compare(actual, self.op, want) for want in self.expected)
        shown = f"{actual:.0f}" if isinstance(actual, float) else actual
        return passed, self.text.replace("]", f"] ({shown})", 1) if not passed else self.text


def parse(text: str) -> Condition:
    """One condition, or ValueError saying what a valid one looks like."""
    match = _SYNTAX.match(text)
    if not match or bool(match.group(1)) != bool(match.group(4)):
        raise ValueError(f"condition {text!r} is not '[STATUS]|[RESPONSE_TIME]|[BODY].path|[CONNECTED] "
                         "<op> value' (ops: == != < <= > >=), e.g. '[STATUS] == 200'")
    length, placeholder, raw_path, _, op, raw = match.groups()
    path = tuple(int(p[1:-1]) if p.startswith("[") else p[1:] for p in re.findall(r"\.[\w-]+|\[\d+\]", raw_path))
    if path and placeholder != "BODY":
        raise ValueError(f"condition {text!r}: only [BODY] has fields")
    inner = re.fullmatch(r"any\((.*)\)", raw)
    values = [v.strip() for v in inner.group(1).split(",")] if inner else [raw]
    if inner and op not in ("==", "!="):
        raise ValueError(f"condition {text!r}: any(...) goes with == or !=")
    expected = tuple(_value(text, v) for v in values)
    if op not in ("==", "!=") and any(isinstance(v, Pattern) for v in expected):
        raise ValueError(f"condition {text!r}: pat(...) goes with == or !=")
    if op not in ("==", "!="):
        numbers = [_number(v) for v in expected]
        if None in numbers:
            raise ValueError(f"condition {text!r}: {op} needs a number on the right")
        expected = tuple(numbers)
    return Condition(text.strip(), placeholder, path, bool(length), op, expected)


def _value(text: str, raw: str) -> Any:
    """One value of a condition's right side: pat(glob), else a literal; ValueError for any
    other function (Gatus has more; taken as text, it would compare against "name(...)")."""
    pattern = re.fullmatch(r"\s*pat\((.*)\)\s*", raw)
    if pattern:
        try:
            return Pattern(pattern.group(1).strip())
        except ValueError as exc:
            raise ValueError(f"condition {text!r}: pat({pattern.group(1).strip()}) is no pattern: {exc}") from None
    function = re.fullmatch(r"\s*([A-Za-z_]\w*)\(.*\)\s*", raw)
    if function:
        raise ValueError(f"condition {text!r}: {function.group(1)}(...) is not evaluated here; the right side is a "
                         "value, any(a, b) or pat(glob)")
    return raw.strip().strip('"').strip("'")


def _number(value: Any) -> float | None:
    """The number an ordering operator compares with, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN orders nothing


def _dig(body: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        try:
            body = body[part]
        except (KeyError, IndexError, TypeError):
            return None
    return body


def _compare(actual: Any, op: str, expected: Any) -> bool:
    """`actual op expected` as Gatus judges it: text for `==` (a Pattern matched), numbers for
    the orderings; a value that is missing or no number meets none of them."""
    if actual is None:
        return False
    if isinstance(expected, Pattern):
        return expected.matches(actual)
    if op == "==":
        return _text(actual) == expected
    number = None if isinstance(actual, bool) else _number(actual)
    return number is not None and _ORDER[op](number, expected)
