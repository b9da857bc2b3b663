"""SLO gates: "p95<2000ms,error_rate<5%,rps>=10" parsed into typed gates, judged on
Locust's own statistics (its StatsEntry: percentiles, fail ratio, RPS).

Locust has no declarative thresholds (locust#2668, #560, #1789); this is k6's `thresholds`
and Artillery's `ensure` for it. A malformed term is a UsageError naming that term, so a
typo in CI fails the step before any load is sent.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

from opsctl.errors import UsageError

EXAMPLE = "p95<2000ms,error_rate<5%,rps>=10"
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_TERM = re.compile(r"(?P<metric>[a-z_][a-z0-9_.]*)\s*(?P<op><=|>=|<|>)\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%|/s)?")
_LATENCY = {"avg", "min", "max", "median"}
_COUNTS = {"requests", "failures"}


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str          # p95, avg, max, error_rate, rps, requests, failures...
    op: str
    threshold: float     # ms for latencies, percent for error_rate
    unit: str

    @property
    def final_only(self) -> bool:
        """Lower bounds on rps/requests grow while the test runs: judge them only at the end."""
        return self.metric in ("rps", "requests") and self.op in (">", ">=")

    def observe(self, entry: Any) -> float | None:
        """The metric on a Locust StatsEntry; None when no request was made."""
        if self.metric in _COUNTS or self.metric == "rps":
            return {"requests": entry.num_requests, "failures": entry.num_failures,
                    "rps": entry.total_rps}[self.metric]
        if not entry.num_requests:
            return None
        if self.metric == "error_rate":
            return entry.fail_ratio * 100
        if self.metric in _LATENCY:
            return {"avg": entry.avg_response_time, "min": entry.min_response_time or 0,
                    "max": entry.max_response_time, "median": entry.median_response_time}[self.metric]
        return entry.get_response_time_percentile(_quantile(self.metric))

    def holds(self, value: float | None) -> bool:
        return value is not None and _OPS[self.op](value, self.threshold)


@dataclass
class GateResult:
    gate: str
    metric: str
    observed: float | None
    threshold: float
    unit: str
    passed: bool

    def describe(self) -> str:
        seen = "no requests" if self.observed is None else f"observed {_fmt(self.observed, self.unit)}"
        return f"{self.gate} ({seen})"


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3g}%" if unit == "%" else f"{value:.0f} ms" if unit == "ms" else f"{value:.3g}"


def _quantile(metric: str) -> float:
    return float(metric[1:]) / 100


def _check(metric: str, unit: str | None, term: str) -> str:
    if re.fullmatch(r"p\d{1,2}(\.\d+)?", metric) or metric in _LATENCY:
        if re.fullmatch(r"p\d{1,2}(\.\d+)?", metric) and not 0 < _quantile(metric) < 1:
            raise UsageError(f"--slo: bad term '{term}': percentile must be p1..p99.9; e.g. {EXAMPLE}")
        if unit not in (None, "ms", "s"):
            raise UsageError(f"--slo: bad term '{term}': {metric} is a latency, use ms or s; e.g. {EXAMPLE}")
        return "ms"
    if metric == "error_rate":
        if unit != "%":
            raise UsageError(f"--slo: bad term '{term}': error_rate is a percentage, e.g. error_rate<5%")
        return "%"
    if metric in ("rps", *_COUNTS):
        if unit not in (None, "/s") or (unit == "/s" and metric != "rps"):
            raise UsageError(f"--slo: bad term '{term}': {metric} takes a plain number, e.g. {metric}>=10")
        return ""
    raise UsageError(f"--slo: bad term '{term}': unknown metric '{metric}'; use p50..p99.9, avg, min, max, "
                     f"median, error_rate, rps, requests or failures")


def parse(text: str) -> list[Gate]:
    """'p95<2000ms, error_rate<5%' -> gates; the first malformed term is the error."""
    terms = [t.strip() for t in (text or "").split(",")]
    if not any(terms):
        raise UsageError(f"--slo: empty; write gates like {EXAMPLE}")
    gates = []
    for term in terms:
        if not term:
            raise UsageError(f"--slo: empty term in '{text}' (a stray comma?); e.g. {EXAMPLE}")
        match = _TERM.fullmatch(term.lower())
        if not match:
            raise UsageError(f"--slo: bad term '{term}': expected METRIC OP NUMBER[UNIT]; e.g. {EXAMPLE}")
        metric, unit = match["metric"], match["unit"]
        kind = _check(metric, unit, term)
        value = float(match["num"]) * (1000 if unit == "s" else 1)
        gates.append(Gate(term, metric, match["op"], value, kind))
    return gates


def evaluate(gates: list[Gate], entry: Any) -> list[GateResult]:
    results = []
    for g in gates:
        seen = g.observe(entry)
        results.append(GateResult(g.text, g.metric, seen, g.threshold, g.unit, g.holds(seen)))
    return results


def lost(gates: list[Gate], entry: Any, min_requests: int = 20) -> GateResult | None:
    """For --abort-on-fail: the first gate already failing on enough evidence, else None.

    Like k6's abortOnFail with a short delayAbortEval: a handful of requests say nothing, and
    lower bounds on rps/requests are left to the end of the run.
    """
    if entry.num_requests < min_requests:
        return None
    for result, gate in zip(evaluate(gates, entry), gates):
        if not gate.final_only and not result.passed:
            return result
    return None
