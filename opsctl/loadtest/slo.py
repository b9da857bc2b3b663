"""SLO gates: "p95<2000ms,error_rate<5%,rps>=10" parsed into typed gates, judged on the
run's true values (opsctl.loadtest.latencies), never on Locust's rounded percentile table.

What each metric judges:
- latencies (p50..p99.9, avg, min, max, median): the response times of the successful
  transcription requests (opsctl.loadtest.latencies.is_transcription: sync uploads to
  /v1/audio/... and whole jobs, submit to done; never health or admin polls), exact to
  the millisecond, nearest-rank percentiles;
- rps: successful transcription requests per second (failures are not throughput);
- error_rate: failed requests as a percentage of requests, counting a request still in
  flight when the run stopped as failed (a timeout): of all requests, every class, or of the
  transcription requests alone, whichever is higher, so health and admin polls never dilute
  failed transcriptions (breaker 41 Q5: 51 of 51 transcriptions failed with 503 among 584
  requests, "8.9 %", and the stress profile's error_rate<20% passed);
- requests, failures: counts of all requests and of the failed ones (the same way).
A latency or throughput gate with no successful transcription to judge fails, and says so:
the p95 of a run in which every transcription failed (or none was made) is not a pass.

Locust has no declarative thresholds (locust#2668, #560, #1789); this is k6's `thresholds`
and Artillery's `ensure` for it. A malformed term is a UsageError naming that term, so a
typo in CI fails the step before any load is sent.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from opsctl.errors import UsageError
from opsctl.loadtest.latencies import Latencies

EXAMPLE = "p95<2000ms,error_rate<5%,rps>=10"
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
# ASCII digits only: \d would take other scripts' digits ('p95<٣ms'), which float() reads
_TERM = re.compile(r"(?P<metric>[a-z_][a-z0-9_.]*)\s*(?P<op><=|>=|<|>)\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|%|/s)?")
_LATENCY = {"avg", "min", "max", "median"}
_COUNTS = {"requests", "failures"}


@dataclass(frozen=True)
class Gate:
    """One parsed term: `metric` (p95, avg, error_rate, rps, …), comparison `op`, `threshold`
    (ms for latencies, % for error_rate, a plain number otherwise) and its `unit`."""
    text: str
    metric: str          # p95, avg, max, error_rate, rps, requests, failures...
    op: str
    threshold: float     # ms for latencies, percent for error_rate
    unit: str

    @property
    def final_only(self) -> bool:
        """Lower bounds on rps/requests grow while the test runs: judge them only at the end."""
        return self.metric in ("rps", "requests") and self.op in (">", ">=")

    def observe(self, run: "Observed") -> float | None:
        """The metric's value on the run so far; None when there is nothing to judge it on
        (no request at all, or for latency and throughput no successful request)."""
        if self.metric == "requests":
            return float(run.requests)
        if self.metric == "failures":
            return float(run.failures)
        if self.metric == "error_rate":
            return round(max(_rates(run)), 3) if run.requests else None
        lat = run.latencies  # the transcription class
        if not lat.ok:
            return None
        if self.metric == "rps":
            return round(lat.ok / run.seconds, 3) if run.seconds > 0 else None
        if self.metric in _LATENCY:
            return {"avg": lat.mean, "min": lat.lowest, "max": lat.highest,
                    "median": lambda: lat.percentile(0.5)}[self.metric]()
        return lat.percentile(_quantile(self.metric))

    def holds(self, value: float | None) -> bool:
        """True when `value` satisfies the gate; None (nothing to judge) never does."""
        return value is not None and _OPS[self.op](value, self.threshold)


@dataclass
class Observed:
    """What gates judge: the run's (or the run so far's) counts and exact latencies.

    `requests`/`failures` count all requests (a request still in flight at the stop is a
    failure; `in_flight` says how many); `latencies` is the transcription class's
    (its successful requests' response times, its failures); `seconds` is the time the
    load ran (for rps)."""

    requests: int
    failures: int
    latencies: Latencies
    seconds: float
    in_flight: int = 0


@dataclass
class GateResult:
    """One gate's verdict. `observed` is the figure judged, stored as judged (ms for
    latencies, percent for error_rate, successful requests/s for rps); None when there was
    nothing to judge. `basis` says what it was judged on, e.g. "412 successful requests"."""

    gate: str
    metric: str
    observed: float | None
    threshold: float
    unit: str
    passed: bool
    basis: str = ""

    @property
    def shown(self) -> str:
        """The judged figure as every output prints it (table, JUnit, messages)."""
        return "-" if self.observed is None else fmt(self.observed, self.unit)

    def describe(self) -> str:
        """'gate (observed X over N successful requests)' or 'gate (why there was nothing to judge)'."""
        if self.observed is None:
            return f"{self.gate} ({self.basis or 'no requests'})"
        return f"{self.gate} (observed {self.shown}" + (f" over {self.basis})" if self.basis else ")")


def fmt(value: float, unit: str) -> str:
    """A stored figure in full (no rounding beyond the 3 decimals it is stored with)."""
    text = f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{text}%" if unit == "%" else f"{text} ms" if unit == "ms" else text


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
        return "%"  # its range (0-100) is checked on the number, in parse
    if metric in ("rps", *_COUNTS):
        if unit not in (None, "/s") or (unit == "/s" and metric != "rps"):
            raise UsageError(f"--slo: bad term '{term}': {metric} takes a plain number, e.g. {metric}>=10")
        return ""
    raise UsageError(f"--slo: bad term '{term}': unknown metric '{metric}'; use p50..p99.9, avg, min, max, "
                     f"median, error_rate, rps, requests or failures")


def parse(text: str) -> list[Gate]:
    """'p95<2000ms, error_rate<5%' -> gates; the first malformed term is the error.

    Numbers are ASCII digits (an optional fraction), latencies in ms or s (stored in ms),
    error_rate in percent within 0-100. Raises UsageError, one line naming the term."""
    terms = [t.strip() for t in (text or "").split(",")]
    if not any(terms):
        raise UsageError(f"--slo: empty; write gates like {EXAMPLE}")
    gates = []
    for term in terms:
        if not term:
            raise UsageError(f"--slo: empty term in '{text}' (a stray comma?); e.g. {EXAMPLE}")
        match = _TERM.fullmatch(term.lower())
        if not match:
            raise UsageError(f"--slo: bad term '{term}': expected METRIC OP NUMBER[UNIT] (digits 0-9); e.g. {EXAMPLE}")
        metric, unit = match["metric"], match["unit"]
        kind = _check(metric, unit, term)
        value = float(match["num"]) * (1000 if unit == "s" else 1)
        if kind == "%" and value > 100:
            raise UsageError(f"--slo: bad term '{term}': error_rate is a percentage of requests, "
                             f"0% to 100%; e.g. error_rate<5%")
        gates.append(Gate(term, metric, match["op"], value, kind))
    return gates


def _rates(run: Observed) -> tuple[float, float]:
    """(failed % of all requests, failed % of the transcription requests; 0 without any)."""
    lat = run.latencies
    return (run.failures / run.requests * 100 if run.requests else 0.0,
            lat.failures / lat.requests * 100 if lat.requests else 0.0)


def _basis(gate: Gate, run: Observed) -> str:
    if gate.metric in ("requests", "failures"):
        return ""
    if gate.metric == "error_rate":
        if not run.requests:
            return "no requests"
        overall, judged = _rates(run)
        if judged > overall:
            lat = run.latencies
            return (f"{lat.failures} of {lat.requests} transcription requests failed"
                    + (f", {lat.in_flight} of them still in flight at the end" if lat.in_flight else "")
                    + f" (of all {run.requests} requests {overall:.3g}%)")
        return f"{run.requests} requests" + (f", {run.in_flight} of them still in flight at the end"
                                             if run.in_flight else "")
    ok, tried = run.latencies.ok, run.latencies.requests
    if ok:
        return f"{ok} successful transcription request" + ("s" if ok != 1 else "")
    if tried:
        stuck = run.latencies.in_flight
        return f"no successful transcription requests: all {tried} failed" + (
            f" ({stuck} still in flight at the end)" if stuck else "")
    if run.requests:
        return f"no transcription requests among the {run.requests} requests"
    return "no requests"


def evaluate(gates: list[Gate], run: Observed) -> list[GateResult]:
    """Every gate judged on `run`; a gate with nothing to judge fails."""
    results = []
    for g in gates:
        seen = g.observe(run)
        results.append(GateResult(g.text, g.metric, seen, g.threshold, g.unit, g.holds(seen), _basis(g, run)))
    return results


def lost(gates: list[Gate], run: Observed, min_requests: int = 20) -> GateResult | None:
    """For --abort-on-fail: the first gate already failing on enough evidence, else None.

    Like k6's abortOnFail with a short delayAbortEval: a handful of requests say nothing,
    lower bounds on rps/requests are left to the end of the run, and a latency or rps gate
    with no successful transcription yet is lost only once 5 transcriptions have failed.
    """
    if run.requests < min_requests:
        return None
    for result, gate in zip(evaluate(gates, run), gates):
        if gate.final_only or result.passed:
            continue
        # no successful transcription yet is evidence only once several have failed: the
        # first ones may simply still be running (the final verdict judges them all)
        if result.observed is None and gate.metric not in ("error_rate", *_COUNTS) \
                and run.latencies.failures < 5:
            continue
        return result
    return None
