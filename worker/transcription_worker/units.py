"""How sizes and durations read in the worker's messages (breaker 46 F2).

Every message that prints a size or a duration, alone or against a limit, goes through
here, so they all read alike:

- sizes are in MiB (1,048,576 bytes: every `WORKER_*_MB` setting counts in these), never
  "MB" for a MiB count;
- a figure has one decimal with trailing zeros dropped (`30.3 s`, `60 MiB`);
- a figure shown against a limit is rounded to the nearest unless that would put it on the
  limit or across it: then it is rounded away from the limit (up when over it, down when
  under it), with more decimals when one is not enough to tell them apart, so a value over
  the limit never reads as equal to it ("the audio is 30.3 s long, over the 30 s limit", not
  "30 s ... over the 30 s limit") and one under it never reads as reaching it ("59.9 MiB
  used" of 60, not "60 MiB used").

A count of bytes a message gives exactly (a part's size beside the upload's declared bytes)
is printed as the integer it is, never rounded.
"""

from __future__ import annotations

import math

MIB = 1024 * 1024
_MOST_DIGITS = 9  # 1 byte is 0.00000095 MiB: 7 decimals tell any two byte counts apart


def _text(value: float, digits: int, rounding: str = "nearest") -> str:
    """`value` with at most `digits` decimals (trailing zeros and point dropped), rounded
    `up`, `down` or to the `nearest`."""
    scale = 10 ** digits
    scaled = value * scale
    # a float like 30.3 * 10 = 302.99999999999997 must not round down below what it is
    if rounding == "up":
        scaled = math.ceil(round(scaled, 6))
    elif rounding == "down":
        scaled = math.floor(round(scaled, 6))
    else:
        scaled = round(scaled)
    text = f"{scaled / scale:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def figure(value: float) -> str:
    """`value` with one decimal, trailing zeros dropped: 30 -> "30", 30.25 -> "30.2"
    (nearest), 0.04 -> "0.04" (a nonzero value never reads as 0: more decimals then)."""
    digits = 1
    while value and digits < _MOST_DIGITS and float(_text(value, digits)) == 0:
        digits += 1
    return _text(value, digits)


def against(value: float, limit: float) -> tuple[str, str]:
    """(`value`, `limit`) as texts that compare as the numbers do: both to the nearest with
    one decimal (trailing zeros dropped), `value` rounded away from `limit` instead (up when
    over it, down when under it) when the nearest would read as the limit or across it, and
    more decimals when one is not enough. 30.28 against 30 -> ("30.3", "30"); 30.01 against
    30 -> ("30.1", "30"); 59.99 against 60 -> ("59.9", "60"); 15.97 against 15.96 ->
    ("15.97", "15.96")."""
    if math.isclose(value, limit, rel_tol=1e-12, abs_tol=1e-12):  # float noise is not a difference
        same = figure(value)
        return same, same
    over = value > limit
    rounding = "up" if over else "down"

    def reads_right(shown: str, limit_shown: str) -> bool:
        return float(shown) > float(limit_shown) if over else float(shown) < float(limit_shown)

    for digits in range(1, _MOST_DIGITS + 1):
        limit_shown = _text(limit, digits)
        for shown in (_text(value, digits), _text(value, digits, rounding)):
            if reads_right(shown, limit_shown):
                return shown, limit_shown
    return repr(value), repr(limit)


def mib(size: int | float) -> str:
    """`size` bytes in MiB: mib(8 * MIB) -> "8 MiB", mib(20 * MIB + 1) -> "20 MiB"; for a
    size shown beside a limit use `mib_against`."""
    return f"{figure(size / MIB)} MiB"


def mib_against(size: int | float, limit: int | float) -> tuple[str, str]:
    """(`size`, `limit`), both bytes, in MiB as texts that compare as the byte counts do
    (`against`): mib_against(60 * MIB - 1, 60 * MIB) -> ("59.9 MiB", "60 MiB"),
    mib_against(8 * MIB + 1, 8 * MIB) -> ("8.1 MiB", "8 MiB")."""
    shown, limit_shown = against(size / MIB, limit / MIB)
    return f"{shown} MiB", f"{limit_shown} MiB"


def seconds(duration: float) -> str:
    """A duration in seconds: seconds(1.0) -> "1 s", seconds(30.25) -> "30.2 s"; for one
    shown beside a limit use `seconds_against`."""
    return f"{figure(duration)} s"


def seconds_against(duration: float, limit: float) -> tuple[str, str]:
    """(`duration`, `limit`), both seconds, as texts that compare as the numbers do
    (`against`): seconds_against(30.28, 30) -> ("30.3 s", "30 s")."""
    shown, limit_shown = against(duration, limit)
    return f"{shown} s", f"{limit_shown} s"
