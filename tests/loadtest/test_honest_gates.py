"""Load-test gates judged on the true values (issue 17 §2): failures are never a latency,
latency gates judge the transcriptions (not the health polls beside them), a request still
in flight at the end is a failure, percentiles are exact to the millisecond, and the judged
figure is the same in --json, JUnit, `loadtest list` and `compare`, in-process and with
`--workers 2`."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import textwrap
import urllib.parse
import xml.etree.ElementTree as ET

import pytest

from loadtest_support import opsctl
from opsctl.local import procs

# A broken worker, small and fast: health and admin polls answer 200 at once (as a worker
# whose model or API is broken still does), /v1/* answers 500 ("500"), never answers
# ("hang"), or answers 200 after a second ("slow": a request in flight at the end finishes
# within the stop timeout).
BROKEN_WORKER = textwrap.dedent('''
    import base64, http.server, json, sys, time
    MODE = sys.argv[2]
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def _send(self, code, body, kind="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?")[0]
            if MODE == "maintenance":  # a proxy's 200 page in front of a stopped service, on every path
                return self._send(200, b"<html><h1>Service temporarily unavailable</h1></html>", "text/html")
            if MODE == "other-service":  # another service's answers: probes down, a version-less /version,
                # an HTML /metrics quoting the counter's name, jobs whose result is an HTML page
                if path in ("/healthz", "/readyz"):
                    return self._send(200, b'{"status": "not ready", "checks": {"db": "down"}}')
                if path == "/version":
                    return self._send(200, b'{"version": null, "error": "upstream down"}')
                if path == "/metrics":
                    return self._send(200, b"<html>worker_requests_total unavailable</html>", "text/html")
                if path.startswith("/v1/jobs"):
                    return self._send(200 if path.count("/") > 2 else 202,
                                      b'{"id": "j1", "status": "succeeded", "result": "<html>Service Unavailable</html>"}')
                return self._send(200, json.dumps({"text": "hello"}).encode())
            if MODE in ("binary", "badcharset", "deepjson") and path.startswith("/v1/audio"):
                # a 200 Locust can't read as JSON text: binary bytes, an unknown charset, JSON nested
                # past Python's recursion limit (each raised out of the user's judgment)
                if MODE == "binary":
                    return self._send(200, bytes(range(256)) * 8, "application/octet-stream")
                if MODE == "badcharset":
                    return self._send(200, b'{"text": "hello"}', "application/json; charset=utf8mb4")
                return self._send(200, b"[" * 100000 + b"]" * 100000)
            if path in ("/healthz", "/readyz"):  # as the live worker answers them
                return self._send(200, b'{"status": "ok"}' if path == "/healthz" else b'{"status": "ready"}')
            if path == "/version":
                return self._send(200, b'{"version": "1.0"}')
            if path == "/metrics":
                return self._send(200, b"# TYPE worker_requests_total counter\\nworker_requests_total 1\\n", "text/plain")
            if MODE == "hang":
                time.sleep(3600)
            if MODE == "slow":
                time.sleep(1)
                if path.startswith("/v1/jobs"):
                    return self._send(200 if path.count("/") > 2 else 202,
                                      b'{"id": "j1", "status": "succeeded", "result": {"text": "hello"}}')
                return self._send(200, json.dumps({"text": "hello"}).encode())
            if MODE == "garbage":  # a proxy's HTML page for sync requests; jobs "succeed" with no transcript
                if path.startswith("/v1/jobs"):
                    return self._send(200 if path.count("/") > 2 else 202, b'{"id": "j1", "status": "succeeded"}')
                return self._send(200, b"<html>oops</html>", "text/html")
            if MODE == "echo":  # an error page that echoes the request's Authorization header, in several spellings
                auth = str(self.headers.get("Authorization"))
                token = auth.split(" ", 1)[-1].encode()
                pct = "".join("%%%02X" % b for b in token)
                return self._send(500, ("bad token: " + auth + " lower: " + auth.lower() + " b64: "
                                        + base64.b64encode(token).decode() + " hex: " + token.hex().upper()
                                        + " pct: " + pct + " slash: " + token.decode().replace("/", "\\/")
                                        + " b64lower: " + base64.b64encode(token.lower()).decode()).encode(),
                                  "text/plain")
            if MODE == "echo-escaped":  # one character escaped: System.Text.Json's '+', an HTML page's '/'
                token, bs = str(self.headers.get("Authorization")).split(" ", 1)[-1], chr(92)
                body = ('{"json": "' + token.replace("+", bs + "u002B") + '", "html": "' + token.replace("/", "&#47;", 1)
                        + '", "js": "' + token.replace("=", bs + "x3d") + '"}')
                return self._send(401, body.encode())
            if MODE == "echo-late":  # the Authorization header echoed across the 200-character cut of a failure text
                return self._send(500, ("x" * 183 + str(self.headers.get("Authorization"))).encode(), "text/plain")
            self._send(500, b'{"error": "boom"}')
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
            events.fire(request_type="POST", name="/v1/audio/transcriptions [ok]", response_time=1234.4,
                        response_length=1, exception=None, context={})
            events.fire(request_type="POST", name="/v1/audio/transcriptions [broken]", response_time=5, response_length=0,
                        exception=RuntimeError("HTTP 500"), context={})
''')


def _target(folder, mode: str):
    script = folder / "broken_worker.py"
    script.write_text(BROKEN_WORKER)
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port), mode])
    procs.wait_until(lambda: procs.port_open(port), 20, f"the {mode} target")
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """One broken worker per mode: {"500": url, "hang": url, "slow": url}."""
    started = {mode: _target(tmp_path_factory.mktemp(f"target-{mode}"), mode)
               for mode in ("500", "hang", "slow", "garbage", "maintenance", "other-service", "binary", "badcharset",
                            "deepjson", "echo", "echo-late", "echo-escaped")}
    yield {mode: url for mode, (_proc, url) in started.items()}
    for proc, _url in started.values():
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "locustfile.py"
    path.write_text(SYNTHETIC)
    return path


def _run(ops_root, host, workers, slo, *extra):
    """The default profile's mix (TranscriptionUser and AdminUser), 4 users for 4 s."""
    return opsctl(ops_root, "loadtest", "run", "--host", host, "--users", "4", "--spawn-rate", "4",
                  "--duration", "4s", "--workers", workers, "--slo", slo, "--stop-timeout", "1s", *extra, "--json")


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("mode", ["500", "hang"])
def test_gates_judge_transcriptions_not_the_health_polls_beside_them(ops_root, targets, mode, workers):
    """Every /v1 request fails (500) or never answers while the admin polls answer 200: the
    p95 gate has no successful transcription to judge and fails, a request unanswered at the
    end is a failure in error_rate and is reported, and `loadtest list` says fail."""
    out = _run(ops_root, targets[mode], workers, "p95<2000ms,error_rate<1%")
    assert out.code == 1, out.stderr
    doc = out.doc
    assert doc["passed"] is False
    judged, total = doc["judged"], doc["total"]
    assert judged["name"] == "Transcriptions" and judged["requests"] > 0 and judged["ok"] == 0
    assert total["ok"] > 0  # the admin polls succeeded: a gate judging them would have passed
    gates = {g["gate"]: g for g in doc["gates"]}
    p95, errors = gates["p95<2000ms"], gates["error_rate<1%"]
    assert p95["passed"] is False and p95["observed"] is None
    assert p95["basis"].startswith(f"no successful transcription requests: all {judged['requests']} failed")
    # judged on the transcriptions, all failed: the polls beside them never dilute it (breaker 41 Q5)
    assert errors["passed"] is False and errors["observed"] == 100.0
    assert errors["observed"] > round(total["failures"] / total["requests"] * 100, 3)
    if mode == "hang":
        # every transcription user is stuck in its first request: recorded when the run stops
        assert doc["in_flight"] >= 1 and doc["stop_timeout_s"] == 1
        # the transcriptions' own (a job's submit or a poll may be in flight too: in doc's count)
        assert re.search(r"^\d+ of \d+ transcription requests failed, [1-9]\d* of them still in flight at the end",
                         errors["basis"]), errors["basis"]
        assert "still in flight at the end" in p95["basis"]
        assert f"{doc['in_flight']} requests still in flight at the end, counted as failed" in out.stderr
        if workers == "2":
            assert sum(w["requests_sent"] for w in doc["worker_counts"]) == total["requests"]
    else:
        assert doc["in_flight"] == 0 and judged["failures"] == judged["requests"]
    assert "SLO breached: p95<2000ms (no successful transcription requests: all" in out.stderr
    # why the requests failed, grouped as Locust's error report groups them, in --json, the
    # verdict line and the JUnit file
    kinds = doc["failures"]
    assert sum(f["occurrences"] for f in kinds) == total["failures"]
    assert [f["occurrences"] for f in kinds] == sorted((f["occurrences"] for f in kinds), reverse=True)
    assert all(f["name"].startswith("/v1/") or f["method"] == "JOB" for f in kinds), kinds
    if mode == "500":
        assert all("500" in f["error"] for f in kinds), kinds
    top = kinds[0]
    assert (f"most frequent failure ({len(kinds)} kinds): {top['occurrences']} x "
            f"{top['method']} {top['name']}: {top['error']}") in out.stderr
    listed = {r["id"]: r for r in opsctl(ops_root, "loadtest", "list", "--json").doc}
    assert listed[doc["id"]]["passed"] is False
    line = next(ln for ln in opsctl(ops_root, "loadtest", "list").stdout.splitlines() if doc["id"] in ln)
    assert "fail" in line.split()


def test_a_deploy_load_gate_refuses_a_preview_whose_transcriptions_never_finish(ops_root, targets, monkeypatch):
    """`deploy --load-gate` (a short light run with 2 users) on a preview whose /v1 hangs
    while its health endpoints answer: refused, naming the unfinished requests."""
    from opsctl.config import load_project
    from opsctl.deploy.hooks import load_gate
    from opsctl.loadtest import plan

    monkeypatch.setattr(plan, "STOP_TIMEOUT_S", 1.0)  # the default 30 s, shortened for the test
    (ops_root / "opsctl.yaml").write_text("version: 1\nenvironments:\n  preview:\n    platform: kubernetes\n"
                                          f"    router_url: {targets['hang']}\n")
    project = load_project(ops_root)
    gate = load_gate(project, project.env("preview"), "p95<2000ms,error_rate<1%", duration="3s")
    verdict = gate(targets["hang"])
    assert verdict.ok is False
    assert "still in flight at the end" in verdict.detail and "no successful transcription" in verdict.detail


def test_a_slow_answer_in_flight_at_the_end_still_counts(ops_root, targets):
    """Requests in flight at the end get the stop timeout to finish: a transcription taking
    1 s is a success, not a timeout, so a healthy worker is not failed by the end of a run."""
    out = _run(ops_root, targets["slow"], "0", "p95<5000ms,error_rate<1%", "--stop-timeout", "20s")
    assert out.code == 0, out.stderr
    doc = out.doc
    assert doc["in_flight"] == 0 and doc["total"]["failures"] == 0
    assert doc["judged"]["ok"] > 0 and doc["judged"]["p95_ms"] >= 1000


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_judged_figure_is_exact_and_the_same_everywhere(ops_root, targets, synthetic, tmp_path, workers):
    junit = tmp_path / "gates.xml"
    out = opsctl(ops_root, "loadtest", "run", "--host", targets["500"], "--locustfile", str(synthetic), "--classes", "SyntheticUser",
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
    assert gates["p95<1230ms"]["basis"] == f"{ok} successful transcription requests"
    assert doc["total"]["p95_ms"] == 1234 and doc["total"]["avg_ms"] == 1234.4
    rows = {e["name"]: e for e in doc["endpoints"]}
    assert rows["/v1/audio/transcriptions [broken]"]["p95_ms"] is None
    assert rows["/v1/audio/transcriptions [ok]"]["p95_ms"] == 1234 == doc["judged"]["p95_ms"]
    if workers == "2":
        assert sum(w["requests_sent"] for w in doc["worker_counts"]) == doc["total"]["requests"]

    failures = list(ET.parse(junit).getroot().iter("failure"))
    assert [f.get("message") for f in failures] == [
        f"SLO breached: p95<1230ms (observed 1,234 ms over {ok} successful transcription requests)"]
    assert "p95<1230ms (observed 1,234 ms" in out.stderr

    listed = {r["id"]: r for r in opsctl(ops_root, "loadtest", "list", "--json").doc}
    assert listed[doc["id"]]["total"]["p95_ms"] == 1234 and listed[doc["id"]]["gates"] == doc["gates"]
    table = opsctl(ops_root, "loadtest", "list").stdout
    line = next(ln for ln in table.splitlines() if doc["id"] in ln)
    assert "1,234" in line.split() and "fail" in line

    # compared with a copy of itself (a run against itself is refused): the same stored figure
    import json

    saved = ops_root / ".opsctl" / "loadtests"
    copy = json.loads((saved / f"{doc['id']}.json").read_text())
    copy["id"] = f"{doc['id']}-copy"
    (saved / f"{copy['id']}.json").write_text(json.dumps(copy))
    same = opsctl(ops_root, "loadtest", "compare", doc["id"], copy["id"], "--json").doc
    total = next(r for r in same["rows"] if r["endpoint"] == "Aggregated")
    assert total["base"]["p95_ms"] == total["head"]["p95_ms"] == 1234
    assert "1,234" in opsctl(ops_root, "loadtest", "compare", doc["id"], copy["id"]).stdout


def test_answers_that_are_no_transcription_fail_the_gates(ops_root, targets):
    """Breaker 42 R2: sync transcriptions answered 200 with an HTML page raised inside Locust's
    catch_response block and counted as neither success nor failure (gone from every figure),
    and jobs "succeeded" with no transcript counted as successes: the run passed
    p95<2000ms,error_rate<1% with 0 failures. Every request sent is counted."""
    out = _run(ops_root, targets["garbage"], "0", "p95<2000ms,error_rate<1%")
    assert out.code == 1, (out.stdout, out.stderr)
    doc = out.doc
    judged = doc["judged"]
    assert judged["requests"] > 0 and judged["ok"] == 0, judged
    gates = {g["gate"]: g for g in doc["gates"]}
    assert gates["error_rate<1%"]["observed"] == 100.0 and not gates["p95<2000ms"]["passed"], gates
    texts = " ".join(f["error"] for f in doc["failures"])
    assert "HTTP 200 but not JSON: '<html>oops</html>'" in texts or "succeeded with no transcript" in texts, texts
    assert "Traceback" not in out.stderr and "JSONDecodeError" not in out.stderr, out.stderr


@pytest.mark.parametrize("users", [("--classes", "StressUser=1"), ("--classes", "AdminUser=1"),
                                   ("--profile", "stress")])
def test_every_user_class_fails_what_is_not_the_services_answer(ops_root, targets, users):
    """Breaker 50 G1: StressUser counted a 200 maintenance page as a transcription, so the
    stress profile (and `--classes StressUser` with p95<2000ms,error_rate<1%,rps>=1) passed
    against a target that transcribed nothing; the probes of StressUser and AdminUser took any
    200 as a live worker."""
    out = opsctl(ops_root, "loadtest", "run", "--host", targets["maintenance"], "--users", "2", "--spawn-rate", "2",
                 "--duration", "3s", "--stop-timeout", "1s", *users, "--slo", "error_rate<1%", "--json")
    assert out.code == 1, (out.stdout, out.stderr)
    doc = out.doc
    assert doc["total"]["requests"] > 0 and doc["total"]["failures"] == doc["total"]["requests"], doc["total"]
    texts = " ".join(f["error"] for f in doc["failures"])
    assert "not JSON" in texts, texts


@pytest.mark.parametrize("mode", ["binary", "badcharset", "deepjson"])
def test_a_transcription_answer_that_cannot_be_decoded_is_a_failure_not_a_lost_request(ops_root, targets, mode):
    """Breaker 52 K1: a 200 Locust can't decode (binary, charset=utf8mb4, deep JSON) raised
    TypeError, LookupError or RecursionError out of the judgment: the request was counted as
    neither success nor failure, and the stress profile passed with no transcription counted."""
    out = opsctl(ops_root, "loadtest", "run", "--host", targets[mode], "--users", "2", "--spawn-rate", "2",
                 "--duration", "3s", "--stop-timeout", "1s", "--classes", "StressUser=1", "--slo", "error_rate<1%",
                 "--json")
    assert out.code == 1, (out.stdout, out.stderr)
    sync = {e["name"]: e for e in out.doc["endpoints"]}["/v1/audio/transcriptions [short]"]
    assert sync["requests"] > 0 and sync["failures"] == sync["requests"], sync
    assert "Traceback" not in out.stderr, out.stderr


def test_another_services_answers_are_failures_in_every_poll(ops_root, targets):
    """Breaker 52 K9: probes answering 200 {"status": "not ready"}, a /version without a
    version and an HTML /metrics quoting the counter's name were counted as successes."""
    out = opsctl(ops_root, "loadtest", "run", "--host", targets["other-service"], "--users", "2", "--spawn-rate", "2",
                 "--duration", "4s", "--stop-timeout", "1s", "--classes", "AdminUser=1", "--slo", "error_rate<1%",
                 "--json")
    by_name = {e["name"]: e for e in out.doc["endpoints"]}
    assert by_name, out.doc
    for name, entry in by_name.items():
        assert entry["failures"] == entry["requests"] > 0, (name, entry)


# a user sending only jobs, built on the shipped TranscriptionUser (its submit, poll and judgment)
JOBS_ONLY = textwrap.dedent('''
    import sys
    sys.path.insert(0, {shipped!r})
    from locust import constant
    from transcription import TranscriptionUser

    class JobUser(TranscriptionUser):
        wait_time = constant(0.2)
        tasks = {{TranscriptionUser.job_short: 1}}
''')


def test_a_job_whose_result_is_no_transcript_object_is_a_failure(ops_root, targets, tmp_path):
    """Breaker 52 K10: a job "succeeded" with an HTML page as its result counted as a
    transcription (every request asks for json, so the result must be an object)."""
    from opsctl.loadtest import profiles

    locustfile = tmp_path / "jobs.py"
    locustfile.write_text(JOBS_ONLY.format(shipped=str(profiles.SHIPPED)))
    out = opsctl(ops_root, "loadtest", "run", "--host", targets["other-service"], "--locustfile", str(locustfile),
                 "--classes", "JobUser=1", "--users", "1", "--spawn-rate", "1", "--duration", "3s",
                 "--stop-timeout", "1s", "--slo", "error_rate<1%", "--json")
    jobs = [e for e in out.doc["endpoints"] if e["name"].endswith("submit→done")]
    assert jobs and all(e["failures"] == e["requests"] > 0 for e in jobs), out.doc["endpoints"]
    assert out.code == 1 and "not an object" in " ".join(f["error"] for f in out.doc["failures"]), out.doc


def test_an_api_key_echoed_by_the_target_reaches_no_report(ops_root, targets, monkeypatch, tmp_path):
    """Breaker 42 R3: an error page echoing `Authorization: Bearer KEY` put the key into the
    console, --json, JUnit, the HTML and CSV reports and the saved run."""
    key = "Lt+ApiKey/Secret=9876"
    monkeypatch.setenv("LOADTEST_API_KEY", key)
    reports = tmp_path / "reports"
    out = _run(ops_root, targets["echo"], "0", "error_rate<1%", "--classes", "TranscriptionUser=1",
               "--html", str(reports / "r.html"), "--csv", str(reports / "r"), "--junit", str(reports / "r.xml"))
    assert out.code == 1, (out.stdout, out.stderr)
    # breaker 44 T9 (and 42 R19 for runbooks): the key lowercased, in base64 and in hex, as the
    # runbook masker catches them
    # breaker 45 F2: every byte percent-encoded, JSON's escaped slash, base64 of the lower-cased key
    # (a start of it: in the full suite under load, the body of the one request answered before
    # the stop was cut off mid-transfer; the spellings below are checked in every report)
    echoed = "bad token: Bearer *** lower: bearer *** b64: *** hex: ***"
    assert any(echoed in f["error"] for f in out.doc["failures"]), out.doc["failures"]
    written = [*reports.iterdir(), *(ops_root / ".opsctl" / "loadtests").iterdir()]
    assert len(written) >= 5, written
    spellings = [key, key.lower(), base64.b64encode(key.encode()).decode(), key.encode().hex(),
                 key.encode().hex().upper(), urllib.parse.quote(key, safe=""), key.replace("/", "\\/"),
                 base64.b64encode(key.lower().encode()).decode(), "".join("%%%02X" % b for b in key.encode())]
    for text in [out.stdout, out.stderr, *(p.read_text() for p in written)]:
        for spelling in spellings:
            assert spelling not in text and urllib.parse.quote(spelling) not in text, spelling


def test_the_key_of_deploy_api_key_env_is_masked_before_a_failure_text_is_cut(ops_root, targets, monkeypatch,
                                                                             tmp_path):
    """Breaker 47 F3: with the key in $MY_KEY (deploy.api_key_env) and neither $LOADTEST_API_KEY
    nor $OPSCTL_WORKER_API_KEY set, the locustfile masked neither before cutting an answer at 200
    characters, and the first 10 characters of the key reached every report."""
    key = "sk-live-abcdef123456"
    config = ops_root / "opsctl.yaml"
    text = config.read_text()
    assert "    platform: local\n" in text
    config.write_text(text.replace("    platform: local\n", "    platform: local\n    deploy: {api_key_env: MY_KEY}\n", 1))
    for name in ("LOADTEST_API_KEY", "OPSCTL_WORKER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MY_KEY", key)
    reports = tmp_path / "reports"
    out = _run(ops_root, targets["echo-late"], "0", "error_rate<1%", "--classes", "TranscriptionUser=1",
               "--html", str(reports / "r.html"), "--csv", str(reports / "r"), "--junit", str(reports / "r.xml"))
    assert out.code == 1, (out.stdout, out.stderr)
    assert any("x" * 100 + "xBearer ***" in f["error"] for f in out.doc["failures"]), out.doc["failures"]
    written = [*reports.iterdir(), *(ops_root / ".opsctl" / "loadtests").iterdir()]
    for text in [out.stdout, out.stderr, *(p.read_text() for p in written)]:
        assert key[:10] not in text


def test_a_key_echoed_with_one_character_escaped_reaches_no_report(ops_root, targets, monkeypatch, tmp_path):
    """Breaker 48 F1: System.Text.Json writes '+' as \\u002B, an HTML page one '/' as &#47;: the
    key was in none of the whole forms opsctl masks, and reached every report whole."""
    key = "q8Zr+Yh/Jm3kT0pLw2Xv5Rb="
    monkeypatch.setenv("LOADTEST_API_KEY", key)
    reports = tmp_path / "reports"
    out = _run(ops_root, targets["echo-escaped"], "0", "error_rate<1%", "--classes", "TranscriptionUser=1",
               "--html", str(reports / "r.html"), "--csv", str(reports / "r"), "--junit", str(reports / "r.xml"))
    assert out.code == 1, (out.stdout, out.stderr)
    assert any('"json": "***"' in f["error"] for f in out.doc["failures"]), out.doc["failures"]
    written = [*reports.iterdir(), *(ops_root / ".opsctl" / "loadtests").iterdir()]
    for text in [out.stdout, out.stderr, *(p.read_text() for p in written)]:
        assert "Jm3kT0pLw2Xv5Rb" not in text and "q8Zr" not in text


def test_a_locustfile_without_its_speech_samples_is_one_line_before_any_load(ops_root, targets, monkeypatch, tmp_path):
    """Breaker 42 R20: in an ops root whose loadtests/ was copied without the recordings every
    transcription failed on FileNotFoundError, blamed on the target (100 % errors, tracebacks)."""
    monkeypatch.setenv("LOADTEST_AUDIO_DIR", str(tmp_path / "no-samples"))
    out = _run(ops_root, targets["slow"], "0", "error_rate<1%")
    assert out.code == 2 and out.stdout == "", (out.stdout, out.stderr)
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("opsctl: error: TranscriptionUser: the load test's speech samples hello.wav, weather.wav, "
                           f"passage.wav are not in {tmp_path / 'no-samples'}; set LOADTEST_AUDIO_DIR"), line


def test_an_empty_speech_sample_is_one_line_before_any_load(ops_root, targets, monkeypatch, tmp_path):
    """Breaker 44 T11: a 0-byte sample passed the check (it was there) and failed every request."""
    import shutil
    from pathlib import Path

    samples = tmp_path / "samples"
    shutil.copytree(Path(__file__).resolve().parents[2] / "tests" / "worker" / "data", samples)
    (samples / "weather.wav").write_bytes(b"")
    monkeypatch.setenv("LOADTEST_AUDIO_DIR", str(samples))
    out = _run(ops_root, targets["slow"], "0", "error_rate<1%")
    assert out.code == 2 and out.stdout == "", (out.stdout, out.stderr)
    assert f"speech sample {samples / 'weather.wav'} is not a readable WAV recording" in out.stderr, out.stderr
