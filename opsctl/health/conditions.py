"""Gatus-style conditions on an HTTP answer: `[STATUS] == 200`, `[BODY].status == ready`.

Kept to Gatus's syntax so a team that knows Gatus reads opsctl.yaml without a manual:
placeholders [STATUS], [RESPONSE_TIME], [BODY] (with .field and [index]), [CONNECTED];
len(...) on the left; any(a, b) and pat(glob) on the right (pat: Gatus's pattern.Match, a
glob of `*`, `?` and `[...]` with '/' removed from both sides). Parsed when opsctl.yaml is
loaded, so a typo, or a function opsctl does not evaluate, is a configuration error, not a
check that always passes (breaker 53 F3: `!= pat(*failing*)` was compared as the text
"pat(*failing*)", so it never failed).
"""

from __future__ import annotations

import fnmatch
import operator
import re
from dataclasses import dataclass
from typing import Any

_OPS = {"==": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge,
        "<": operator.lt, ">": operator.gt}
_SYNTAX = re.compile(r"^\s*(len\()?\[(STATUS|RESPONSE_TIME|BODY|CONNECTED)\]((?:\.[\w-]+|\[\d+\])*)(\))?"
                     r"\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Pattern:
    """The right side `pat(glob)`: matched as Gatus's pattern.Match does (fnmatch, case kept)."""
    glob: str

    def matches(self, value: Any) -> bool:
        return self.glob == "*" or fnmatch.fnmatchcase(str(value).replace("/", ""), self.glob.replace("/", ""))


@dataclass(frozen=True)
class Condition:
    """One parsed Gatus condition: the placeholder it reads, the body path for [BODY], whether
    len() is applied, the operator and the accepted values (several only for any(...))."""
    text: str
    placeholder: str
    path: tuple[str | int, ...]
    length: bool
    op: str
    expected: tuple[Any, ...]  # several only for `any(a, b)`

    def evaluate(self, status: int | None, response_ms: float | None, body: Any,
                 connected: bool) -> tuple[bool, str]:
        """(passed, the condition with the value it saw, as Gatus shows it)."""
        actual = {"STATUS": status, "RESPONSE_TIME": response_ms, "CONNECTED": connected}.get(
            self.placeholder, _dig(body, self.path))
        if self.length:
            actual = len(actual) if hasattr(actual, "__len__") else None
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
    if op not in ("==", "!=") and not all(isinstance(v, (int, float)) for v in expected):
        raise ValueError(f"condition {text!r}: {op} needs a number on the right")
    return Condition(text.strip(), placeholder, path, bool(length), op, expected)


def _value(text: str, raw: str) -> Any:
    """One value of a condition's right side: pat(glob), else a literal; ValueError for any
    other function (Gatus has more; taken as text, it would compare against "name(...)")."""
    pattern = re.fullmatch(r"\s*pat\((.*)\)\s*", raw)
    if pattern:
        return Pattern(pattern.group(1).strip())
    function = re.fullmatch(r"\s*([A-Za-z_]\w*)\(.*\)\s*", raw)
    if function:
        raise ValueError(f"condition {text!r}: {function.group(1)}(...) is not evaluated here; the right side is a "
                         "value, any(a, b) or pat(glob)")
    return _literal(raw)


def _literal(raw: str) -> Any:
    raw = raw.strip().strip('"').strip("'")
    if raw in ("true", "false"):
        return raw == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _dig(body: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        try:
            body = body[part]
        except (KeyError, IndexError, TypeError):
            return None
    return body


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if actual is None:
        return op == "!=" and expected is not None
    if isinstance(expected, Pattern):
        return expected.matches(str(actual).lower() if isinstance(actual, bool) else actual) == (op == "==")
    if isinstance(expected, bool) or isinstance(actual, bool):
        return _OPS[op](str(actual).lower(), str(expected).lower())
    if isinstance(expected, (int, float)):
        try:
            return _OPS[op](float(actual), float(expected))
        except (TypeError, ValueError):
            return op == "!="
    return _OPS[op](str(actual), str(expected))
