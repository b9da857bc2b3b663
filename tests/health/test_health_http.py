"""HTTP checks as Gatus runs them (issue 17 §5, issue 25 §5): redirects followed unless a
check says otherwise, bodies read only for a [BODY] condition and never past the cap, and a
connection that fails says why (expired certificate with its date, refused, not resolved)."""

from __future__ import annotations

import pytest
import yaml

from opsctl.config import load_project
from opsctl.health import monitor
from opsctl.health.checks import http
from opsctl.health.model import Status
from opsctl.local import procs
from tests.health.servers import BigBody, TlsServer, self_signed

MB = 1024 * 1024


@pytest.fixture
def server():
    srv = BigBody(200 * MB)
    yield srv
    srv.close()


def _sweep(tmp_path, checks: list[dict], **health):
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": {"http": checks, **health}}}}))
    project = load_project(tmp_path)
    result = monitor.once(project, project.env("ci"), only=[c["name"] for c in checks])
    return {r.name: r for r in result.results}


def test_redirects_are_followed_by_default_and_not_when_a_check_says_so(tmp_path, server):
    conditions = ["[STATUS] == 200", "[BODY].status == ready"]
    results = _sweep(tmp_path, [
        {"name": "follows", "url": f"{server.url}/moved", "conditions": conditions},
        {"name": "stays", "url": f"{server.url}/moved", "conditions": ["[STATUS] == 200"], "follow_redirects": False},
        {"name": "sees-301", "url": f"{server.url}/moved", "conditions": ["[STATUS] == 301"], "follow_redirects": False},
    ])
    assert results["follows"].status == Status.OK, results["follows"].message
    assert results["stays"].status == Status.CRITICAL and "[STATUS] (301) == 200" in results["stays"].message
    assert results["sees-301"].status == Status.OK


def test_a_failing_check_reports_its_own_severity_whatever_the_cause(tmp_path, server):
    """A redirect loop, a refused connection or a failed condition of a `severity: warning`
    check is a WARNING, never CRITICAL; the same failures of a critical check are CRITICAL."""
    refused = f"http://127.0.0.1:{procs.free_port()}/readyz"
    checks = []
    for severity in ("warning", "critical"):
        checks += [
            {"name": f"loop-{severity}", "url": f"{server.url}/loop", "conditions": ["[STATUS] == 200"],
             "severity": severity},
            {"name": f"refused-{severity}", "url": refused, "conditions": ["[STATUS] == 200"], "severity": severity},
            {"name": f"status-{severity}", "url": f"{server.url}/json", "conditions": ["[STATUS] == 201"],
             "severity": severity},
        ]
    results = _sweep(tmp_path, checks)
    for severity, expected in (("warning", Status.WARNING), ("critical", Status.CRITICAL)):
        loop = results[f"loop-{severity}"]
        assert loop.status == expected and "too many redirects" in loop.message, (severity, loop.message)
        assert results[f"refused-{severity}"].status == expected, results[f"refused-{severity}"].message
        assert results[f"status-{severity}"].status == expected


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_a_200_mb_body_is_not_read_when_no_condition_needs_it(server, path):
    result = http.probe(f"{server.url}{path}", ["[STATUS] == 200"], timeout=30, slow_ms=60_000)
    assert result.status == Status.OK, result.message
    assert "body_bytes_read" not in result.details
    assert server.sent < 32 * MB, f"the server sent {server.sent:,} bytes"   # socket buffers at most


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_a_body_condition_reads_at_most_the_cap(server, path):
    result = http.probe(f"{server.url}{path}", ["[BODY].status == ready"], timeout=30, slow_ms=60_000,
                        max_body=2 * MB)
    assert result.status == Status.CRITICAL
    assert "over the 2,097,152-byte cap (max_body_bytes)" in result.message
    assert result.details["body_bytes_read"] <= 2 * MB + 64 * 1024
    assert server.sent < 32 * MB, f"the server sent {server.sent:,} bytes"


def test_the_cap_is_a_setting(tmp_path, server):
    results = _sweep(tmp_path, [{"name": "small", "url": f"{server.url}/json", "conditions": ["[BODY].status == ready"]},
                                {"name": "big", "url": f"{server.url}/big", "conditions": ["[BODY].status == ready"]}],
                     max_body_bytes=1024)
    assert results["small"].status == Status.OK
    assert results["big"].status == Status.CRITICAL and "1,024-byte cap" in results["big"].message


def test_an_expired_certificate_is_named_with_its_date(tmp_path):
    cert, key, not_after = self_signed(tmp_path, expired=True)
    srv = TlsServer(cert, key)
    try:
        result = http.probe(f"{srv.url}/readyz", ["[STATUS] == 200"], timeout=10, slow_ms=10_000)
    finally:
        srv.close()
    assert result.status == Status.CRITICAL
    assert result.message == f"certificate of 127.0.0.1 expired on {not_after:%Y-%m-%d %H:%M:%S} UTC"


def test_an_untrusted_certificate_that_has_not_expired_says_so(tmp_path):
    cert, key, _ = self_signed(tmp_path)
    srv = TlsServer(cert, key)
    try:
        result = http.probe(f"{srv.url}/readyz", ["[STATUS] == 200"], timeout=10, slow_ms=10_000)
    finally:
        srv.close()
    assert result.message.startswith("certificate of 127.0.0.1 not trusted: ") and "expired" not in result.message


def test_connection_refused_and_name_not_resolved_are_told_apart():
    port = procs.free_port()
    refused = http.probe(f"http://127.0.0.1:{port}/readyz", ["[STATUS] == 200"], timeout=5, slow_ms=5000)
    unknown = http.probe("http://no-such-host.invalid/readyz", ["[STATUS] == 200"], timeout=5, slow_ms=5000)
    assert refused.status == unknown.status == Status.CRITICAL
    assert refused.message == f"connection refused by 127.0.0.1:{port}"
    assert unknown.message == "name not resolved: no-such-host.invalid"
