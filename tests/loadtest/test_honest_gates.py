"""Load-test gates judged on the true values (issue 17 §2): failures are never a latency,
percentiles are exact to the millisecond, and the judged figure is the same in --json,
JUnit, `loadtest list` and `compare`, in-process and with `--workers 2`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from loadtest_support import opsctl
from opsctl.local import procs

ALWAYS_500 = textwrap.dedent('''
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            body = b"boom"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = do_POST = do_HEAD = _answer
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
''')

# every successful "request" takes 1,234.4 ms (Locust's table says 1,200), every failed one
# 5 ms; no network, so the figures are the same on any machine and under any load
SYNTHETIC = textwrap.dedent('''
    from locust import User, constant, task

    class SyntheticUser(User):
        wait_time = constant(0.02)

        @task
        def fire(self):
            events = self.environment.events.request
            events.fire(request_type="GET", name="/ok", response_time=1234.4, response_length=1,
                        exception=None, context={})
            events.fire(request_type="GET", name="/broken", response_time=5, response_length=0,
                        exception=RuntimeError("HTTP 500"), context={})
''')


@pytest.fixture(scope="module")
def failing_target(tmp_path_factory):
    script = tmp_path_factory.mktemp("target") / "always_500.py"
    script.write_text(ALWAYS_500)
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)])
    procs.wait_until(lambda: procs.port_open(port), 20, "the HTTP 500 target")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "locustfile.py"
    path.write_text(SYNTHETIC)
    return path


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_target_failing_every_request_fails_the_latency_gate(ops_root, failing_target, workers):
    out = opsctl(ops_root, "loadtest", "run", "--host", failing_target, "--classes", "AdminUser",
                 "--users", "2", "--spawn-rate", "2", "--duration", "3s", "--workers", workers,
                 "--slo", "p95<2000ms", "--json")
    assert out.code == 1, out.stderr
    doc = out.doc
    assert doc["passed"] is False and doc["total"]["requests"] > 0
    assert doc["total"]["failures"] == doc["total"]["requests"] and doc["total"]["ok"] == 0
    (gate,) = doc["gates"]
    assert gate["passed"] is False and gate["observed"] is None
    assert gate["basis"] == f"no successful requests: all {doc['total']['requests']} failed"
    assert doc["total"]["p95_ms"] is None and doc["total"]["rps"] == 0
    assert "SLO breached: p95<2000ms (no successful requests: all" in out.stderr
    listed = opsctl(ops_root, "loadtest", "list", "--json").doc
    assert [r["passed"] for r in listed if r["id"] == doc["id"]] == [False]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_judged_figure_is_exact_and_the_same_everywhere(ops_root, failing_target, synthetic, tmp_path, workers):
    junit = tmp_path / "gates.xml"
    out = opsctl(ops_root, "loadtest", "run", "--host", failing_target, "--locustfile", str(synthetic), "--classes", "SyntheticUser",
                 "--users", "2", "--spawn-rate", "2", "--duration", "3s", "--workers", workers,
                 "--slo", "p95<1230ms,p99<=1234ms,error_rate<60%", "--junit", str(junit), "--json")
    assert out.code == 1, out.stderr
    doc = out.doc
    gates = {g["gate"]: g for g in doc["gates"]}
    # Locust's histogram would say 1,200 ms and pass p95<1230ms
    assert gates["p95<1230ms"]["observed"] == 1234 and not gates["p95<1230ms"]["passed"]
    assert gates["p99<=1234ms"]["observed"] == 1234 and gates["p99<=1234ms"]["passed"]
    assert gates["error_rate<60%"]["passed"] and gates["error_rate<60%"]["observed"] == 50.0
    ok = doc["total"]["ok"]
    assert ok == doc["total"]["requests"] - doc["total"]["failures"] > 0
    assert gates["p95<1230ms"]["basis"] == f"{ok} successful requests"
    assert doc["total"]["p95_ms"] == 1234 and doc["total"]["avg_ms"] == 1234.4
    rows = {e["name"]: e for e in doc["endpoints"]}
    assert rows["/broken"]["p95_ms"] is None and rows["/ok"]["p95_ms"] == 1234
    if workers == "2":
        assert sum(w["requests_sent"] for w in doc["worker_counts"]) == doc["total"]["requests"]

    failures = list(ET.parse(junit).getroot().iter("failure"))
    assert [f.get("message") for f in failures] == [
        f"SLO breached: p95<1230ms (observed 1,234 ms over {ok} successful requests)"]
    assert "p95<1230ms (observed 1,234 ms" in out.stderr

    listed = {r["id"]: r for r in opsctl(ops_root, "loadtest", "list", "--json").doc}
    assert listed[doc["id"]]["total"]["p95_ms"] == 1234 and listed[doc["id"]]["gates"] == doc["gates"]
    table = opsctl(ops_root, "loadtest", "list").stdout
    line = next(ln for ln in table.splitlines() if doc["id"] in ln)
    assert "1,234" in line.split() and "fail" in line

    same = opsctl(ops_root, "loadtest", "compare", doc["id"], doc["id"], "--json").doc
    total = next(r for r in same["rows"] if r["endpoint"] == "Aggregated")
    assert total["base"]["p95_ms"] == total["head"]["p95_ms"] == 1234
    assert "1,234" in opsctl(ops_root, "loadtest", "compare", doc["id"], doc["id"]).stdout
