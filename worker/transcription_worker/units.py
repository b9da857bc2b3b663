"""How sizes and durations read in the worker's messages (breaker 46 F2).

Every message that prints a size or a duration, alone or against a limit, goes through
here, so they all read alike:

- sizes are in MiB (1,048,576 bytes: every `WORKER_*_MB` setting counts in these), never
  "MB" for a MiB count;
- a figure has one decimal with trailing zeros dropped (`30.3 s`, `60 MiB`);
- a limit reads as it is, in its own shortest decimal form (`0.04 s`, `4.15 s`, `30 s`,
  `60 MiB`: `exact`, `seconds_limit`, `mib_limit`), never rounded (breaker 47 F10: a 4.15 s
  limit read "4.2 s", a 0.04 s one "0 s");
- a figure shown against a limit has the limit's decimals (one at least) and is rounded to
  the nearest unless that would put it on the limit or across it: then it is rounded away
  from the limit (up when over it, down when under it), with more decimals when that is not
  enough to tell them apart, so a value over the limit never reads as equal to it ("the
  audio is 30.3 s long, over the 30 s limit", not "30 s ... over the 30 s limit"; "4.21 s
  long, over the 4.15 s limit") and one under it never reads as reaching it ("59.99 MiB used"
  of 60, not "60 MiB used").

A count of bytes a message gives exactly (a part's size beside the upload's declared bytes)
is printed as the integer it is, never rounded.
"""

from __future__ import annotations

import decimal
import math

MIB = 1024 * 1024
_MOST_DIGITS = 9  # 1 byte is 0.00000095 MiB: 7 decimals tell any two byte counts apart
_SAME = 1e-12  # numbers this close (relative) differ by float noise alone


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


def _plain(value: float) -> str:
    """The shortest decimal that reads back as `value` (Python's repr), never in exponent form."""
    text = format(decimal.Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _as_set(limit: float) -> str | None:
    """`limit` as it was set: its shortest decimal form of at most _MOST_DIGITS decimals
    (0.04 -> "0.04", 4.15 -> "4.15", 30.0 -> "30"), also when arithmetic left float noise
    on it (60 - 59.96 -> "0.04"); None when it has no such form (a count of bytes in MiB like
    16.000123977661133: a figure then)."""
    for digits in range(_MOST_DIGITS + 1):
        text = _text(limit, digits)
        if math.isclose(float(text), limit, rel_tol=_SAME, abs_tol=0):
            return text
    return None


def exact(limit: float) -> str:
    """A limit as it is (`_as_set`: "0.04", "4.15", "30"), never rounded to one decimal
    (breaker 47 F10: a 4.15 s limit read "4.2 s", a 0.04 s one "0 s"); a figure when it has no
    short decimal form."""
    shown = _as_set(limit)
    return figure(limit) if shown is None else shown


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def against(value: float, limit: float, limit_is_set: bool = True) -> tuple[str, str]:
    """(`value`, `limit`) as texts that compare as the numbers do, never equal unless the
    numbers are (to float noise, and never for a value over the limit) nor across: the limit as it is (`exact`: "4.15", "0.04",
    "30"); the value to the nearest with as many decimals as the limit (one at least, trailing
    zeros dropped), rounded away from the limit instead (up when over it, down when under it)
    when the nearest would read as the limit or across it, and more decimals when that is not
    enough; a nonzero figure never reads as 0. 30.2999 against 30 -> ("30.3", "30"); 30.01
    against 30 -> ("30.01", "30"); 59.99 against 60 -> ("59.99", "60"); 4.21 against 4.15 ->
    ("4.21", "4.15"); 4.21 against 0.04 -> ("4.21", "0.04"). A limit with no short decimal
    form (an amount left, in MiB of odd bytes) is shown as a figure, to the nearest with the
    value's decimals; so is one that is not a limit as set (`limit_is_set` False: what is left
    of one, which has a short decimal form by chance: "42.813375 s left" read as set, breaker
    57 F7)."""
    if not (math.isfinite(value) and math.isfinite(limit)):  # no rounding to do (breaker 49 F9)
        return str(value), str(limit)
    limit_set = _as_set(limit) if limit_is_set else None
    if math.isclose(value, limit, rel_tol=_SAME, abs_tol=_SAME):
        if value > limit:  # refused by an exact comparison: both as they are (breaker 48 F6: "4.21 s over
            return _plain(value), _plain(limit)  # the 4.21 s limit" for a 4.2099999999999 s one)
        same = limit_set if limit_set is not None else figure(value)  # float noise under it is no difference
        return same, same
    over = value > limit
    rounding = "up" if over else "down"

    def reads_right(shown: str, limit_shown: str) -> bool:
        if value and float(shown) == 0:
            return False
        return float(shown) > float(limit_shown) if over else float(shown) < float(limit_shown)

    first = max(1, _decimals(limit_set)) if limit_set is not None else 1
    for digits in range(first, _MOST_DIGITS + 1):
        limit_shown = limit_set if limit_set is not None else _text(limit, digits)
        if limit and float(limit_shown) == 0:  # nor does a nonzero limit
            continue
        # the nearest first; rounded away from the limit only once one more decimal did not tell
        # them apart (0.1285 left of 0.1004 read "0.2", a whole step away: breaker 48 F6)
        tries = (_text(value, digits),) + ((_text(value, digits, rounding),) if digits > first else ())
        for shown in tries:
            if reads_right(shown, limit_shown):
                return shown, limit_shown
    return _plain(value), limit_set if limit_set is not None else _plain(limit)


def mib(size: int | float) -> str:
    """`size` bytes in MiB: mib(8 * MIB) -> "8 MiB", mib(20 * MIB + 1) -> "20 MiB"; for a
    size shown beside a limit use `mib_against`."""
    return f"{figure(size / MIB)} MiB"


def mib_against(size: int | float, limit: int | float, limit_is_set: bool = True) -> tuple[str, str]:
    """(`size`, `limit`), both bytes, in MiB as texts that compare as the byte counts do
    (`against`; `limit_is_set` False for what is left of a limit): mib_against(60 * MIB - 1,
    60 * MIB) -> ("59.99 MiB", "60 MiB"), mib_against(8 * MIB + 1, 8 * MIB) -> ("8.01 MiB", "8 MiB")."""
    shown, limit_shown = against(size / MIB, limit / MIB, limit_is_set)
    return f"{shown} MiB", f"{limit_shown} MiB"


def mib_limit(size: int | float) -> str:
    """A limit of `size` bytes in MiB, as it is (`exact`): mib_limit(2.75 * MIB) -> "2.75 MiB"."""
    return f"{exact(size / MIB)} MiB"


def seconds(duration: float) -> str:
    """A duration in seconds: seconds(1.0) -> "1 s", seconds(30.25) -> "30.2 s"; for one
    shown beside a limit use `seconds_against`."""
    return f"{figure(duration)} s"


def seconds_limit(duration: float) -> str:
    """A limit in seconds, as it is (`exact`): seconds_limit(4.15) -> "4.15 s" (not "4.2 s")."""
    return f"{exact(duration)} s"


def seconds_against(duration: float, limit: float, limit_is_set: bool = True) -> tuple[str, str]:
    """(`duration`, `limit`), both seconds, as texts that compare as the numbers do
    (`against`; `limit_is_set` False for what is left of a limit): seconds_against(30.28, 30)
    -> ("30.3 s", "30 s"), seconds_against(62.599875, 42.813375, False) -> ("62.6 s", "42.8 s")."""
    shown, limit_shown = against(duration, limit, limit_is_set)
    return f"{shown} s", f"{limit_shown} s"
