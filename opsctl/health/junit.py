"""`--junit FILE`: a sweep as a JUnit XML report, the format every CI server displays.

One testcase per check: CRITICAL is a <failure>, UNKNOWN an <error>, WARNING passes with
its message in <system-out> (a CI step should not go red on a warning, but it shows).
Written to a temporary file and renamed, so CI never reads half a report.
"""

from __future__ import annotations

from pathlib import Path

from opsctl.health.model import Status, SweepResult


def check_writable(path: Path) -> None:
    """Fail before the sweep, not after it, when the report cannot be written (files.report_path:
    its folder is made when missing)."""
    from opsctl.files import report_path

    report_path(path, "--junit")


def render(result: SweepResult) -> bytes:
    """The sweep as a <testsuites> document (junitparser), one <testcase> per check."""
    from junitparser import Error, Failure, JUnitXml, TestCase, TestSuite

    suite = TestSuite(f"opsctl health {result.env}")
    suite.timestamp = result.started_at.isoformat()
    for r in result.results:
        case = TestCase(r.name, classname=f"health.{result.env}.{r.kind}", time=round(r.duration_ms / 1000, 3))
        text = f"{r.status.name}: {r.message}" + (f" (value {r.value:g} {r.unit})".rstrip() if r.value is not None else "")
        if r.status == Status.CRITICAL:
            failure = Failure(r.message, "CRITICAL")
            failure.text = text
            case.result = [failure]
        elif r.status == Status.UNKNOWN:
            error = Error(r.message, "UNKNOWN")
            error.text = text
            case.result = [error]
        case.system_out = text
        suite.add_testcase(case)
    suite.update_statistics()
    suite.time = round(result.duration_ms / 1000, 3)
    suites = JUnitXml("opsctl health")
    suites.add_testsuite(suite)
    suites.update_statistics()
    return suites.tostring()


def write(path: Path, result: SweepResult) -> None:
    """Written whole (files.write_text): CI never reads half a report, /dev/null stays a device."""
    from opsctl.files import write_text

    write_text(path, render(result))
