"""Every JUnit report opsctl writes parses, whatever text it holds (breaker 38 H9): the control
characters and bidirectional overrides of a failing step's output, a check message, a load
test error or a drill error are written as escapes (`output.visible`, through
`health.junit.tostring`, the one serializer), never raw: XML 1.0 forbids ESC and BEL, and CI's
JUnit parser rejected the whole report."""

from __future__ import annotations

import datetime as dt
import xml.dom.minidom
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest

from opsctl.cli import app

NASTY = "\x1b[31mboom\x1b]0;PWNED\x07\r\u202e\ud800\uffff"
SHOWN = r"\x1b[31mboom\x1b]0;PWNED\x07\r\u202e\ud800\uffff"


def _parsed(data: bytes | str) -> str:
    """The document parsed by expat (minidom) and by ElementTree; returns all its text."""
    data = data.encode() if isinstance(data, str) else data
    xml.dom.minidom.parseString(data)
    root = ElementTree.fromstring(data)
    return " ".join([*(t for t in root.itertext()), *(v for e in root.iter() for v in e.attrib.values())])


def test_xml_text_escapes_what_xml_forbids():
    from opsctl.health.junit import xml_text

    assert xml_text(NASTY) == SHOWN
    assert xml_text("ok\n\ttab é 語") == "ok\n\ttab é 語"


def test_a_runbook_report_of_a_failing_step_parses(runner, ops_root):
    from tests.runbook.runbook_support import write_runbook

    write_runbook(ops_root, "evil2", 1, r"""
        name: evil2
        version: 1
        steps:
          - id: s1
            action: shell
            with: {command: "printf '\\033[31mboom\\033]0;PWNED\\007\\r\\n' >&2; exit 3"}
        """)
    result = runner.invoke(app, ["runbook", "run", "evil2", "--yes", "--junit", "rj.xml"])
    assert result.exit_code == 1, result.output
    text = _parsed((ops_root / "rj.xml").read_bytes())
    assert r"exit 3: \x1b[31mboom\x1b]0;PWNED\x07" in text, text


def test_a_health_report_of_a_check_message_with_control_characters_parses():
    from opsctl.health import junit
    from opsctl.health.model import CheckResult, Status, SweepResult

    result = SweepResult("local", dt.datetime.now(dt.timezone.utc), 12.0, [
        CheckResult(f"router {NASTY}", "http", Status.CRITICAL, NASTY),
        CheckResult("redis", "redis", Status.UNKNOWN, NASTY),
        CheckResult("s3", "s3", Status.WARNING, NASTY)])
    text = _parsed(junit.render(result))
    assert f"router {SHOWN}" in text and f"CRITICAL: {SHOWN}" in text, text


def test_a_loadtest_report_of_a_failing_request_parses(tmp_path):
    from opsctl.loadtest import reports

    gate = SimpleNamespace(gate="p95<10ms", passed=False, describe=lambda: f"p95 99 ms {NASTY}")
    summary = SimpleNamespace(
        profile="light", env="local", started_at="2026-01-01T00:00:00+00:00", id="r1", host="http://h",
        users=1, in_flight=0, aborted_by=None, run_seconds=1.0, gates=[gate],
        total=SimpleNamespace(requests=1, failures=1), gated=SimpleNamespace(rps=1.0, p95_ms=99.0),
        failures=[SimpleNamespace(occurrences=1, method="POST", name="/v1", error=NASTY)])
    text = _parsed(reports.write_junit(summary, tmp_path / "lt.xml").read_bytes())
    assert f"1 x POST /v1: {SHOWN}" in text, text


def test_a_dr_drill_report_of_a_failed_drill_parses():
    from opsctl.pitr import drill

    now = dt.datetime.now(dt.timezone.utc)
    result = drill.DrillResult("local", "local", now, None, None, 600, 300, False, None, None, "scratch",
                               error=f"restore failed: {NASTY}")
    text = _parsed(drill.junit(result))
    assert f"the drill failed: restore failed: {SHOWN}" in text, text


@pytest.mark.parametrize("name", ["a\x00b", "a\x0bb"])
def test_even_a_nul_in_a_name_is_written_as_an_escape(name):
    from opsctl.health import junit
    from opsctl.health.model import CheckResult, Status, SweepResult

    result = SweepResult("local", dt.datetime.now(dt.timezone.utc), 1.0, [CheckResult(name, "x", Status.OK, "fine")])
    assert repr(name)[1:-1] in _parsed(junit.render(result))
