"""`--junit FILE`: a sweep as a JUnit XML report, the format every CI server displays.

One testcase per check: CRITICAL is a <failure>, UNKNOWN an <error>, WARNING passes with
its message in <system-out> (a CI step should not go red on a warning, but it shows).
Written to a temporary file and renamed, so CI never reads half a report.

`tostring` is how every JUnit report of opsctl is serialized (health, runbook, load test,
dr drill): its text goes through `xml_text`, so a check message or a failing step's output
holding ESC or BEL (which XML 1.0 forbids: the whole report failed to parse in CI) shows
them as escapes, as the terminal does (`output.visible`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from opsctl.health.model import Status, SweepResult

# what XML 1.0 forbids beside the control characters output.visible escapes
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """`text` as a JUnit report holds it: control characters and bidirectional overrides as
    escapes (`output.visible`: `\\x1b`, `\\u202e`; newlines and tabs stay), and the other
    characters XML 1.0 does not allow (lone surrogates, U+FFFE, U+FFFF) as `\\uXXXX` too."""
    from opsctl.output import visible

    return _NOT_XML.sub(lambda m: f"\\u{ord(m[0]):04x}", visible(text))


def tostring(document: Any) -> bytes:
    """A junitparser document (JUnitXml, TestSuite) as UTF-8 XML bytes, every name, message,
    type, text and output of its suites, cases and results through `xml_text` first (through
    junitparser's own attributes): the report always parses."""
    from junitparser import JUnitXml

    def clean(obj: Any, *names: str) -> None:
        for name in names:
            value = getattr(obj, name, None)
            if isinstance(value, str) and value != xml_text(value):
                setattr(obj, name, xml_text(value))

    for suite in (document if isinstance(document, JUnitXml) else [document]):
        clean(suite, "name")
        for case in suite:
            clean(case, "name", "classname", "system_out", "system_err")
            for result in case.result:
                clean(result, "message", "type", "text")
    return document.tostring()


def check_writable(path: str | Path) -> Path:
    """`path` made absolute, checked before the sweep, not after it, so a report that cannot be
    written (files.report_path: empty, a folder; its folder is made when missing) fails first."""
    from opsctl.files import report_path

    return report_path(path, "--junit")


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
    return tostring(suites)


def write(path: Path, result: SweepResult) -> None:
    """Written whole (files.write_text): CI never reads half a report, /dev/null stays a device."""
    from opsctl.files import write_text

    write_text(path, render(result), private=True)
