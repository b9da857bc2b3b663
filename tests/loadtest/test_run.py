"""End to end against the session's embedded platform (real Caddy router, real worker with
the Whisper base model, real Locust): short runs, a few users, seconds each."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from loadtest_support import opsctl
from tests.descriptors import grown, held

pytestmark = pytest.mark.slow
ADMIN = {"/healthz", "/readyz", "/version", "/metrics"}


@pytest.fixture(scope="module")
def light(local_platform, reports, tmp_path_factory):
    # The gates judge real transcriptions, and a transcription still running at the end is
    # given the stop timeout to finish: on a busy shared machine a 30 s recording can take
    # minutes, so every size class uploads the 4 s sample (one Locust worker process reads
    # LOADTEST_AUDIO_DIR afresh) and the stop timeout is the users' own network timeout.
    audio = tmp_path_factory.mktemp("short-audio")
    data = Path(__file__).resolve().parents[1] / "worker" / "data"
    for name in ("hello.wav", "weather.wav", "passage.wav"):
        (audio / name).symlink_to(data / "hello.wav")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOADTEST_AUDIO_DIR", str(audio))
        out = opsctl(local_platform.root, "loadtest", "run", "--env", "local", "--profile", "light",
                     "--users", "3", "--spawn-rate", "3", "--duration", "20s", "--workers", "1",
                     "--slo", "error_rate<5%,p95<180000ms", "--stop-timeout", "180s",
                     "--html", str(reports / "light.html"), "--csv", str(reports / "light"),
                     "--junit", str(reports / "light.xml"), "--json")
    return out


def test_light_run_passes_its_slos(light, local_platform):
    assert light.code == 0, light.stderr
    doc = light.doc
    assert doc["passed"] is True and doc["aborted_by"] is None
    assert doc["host"] == local_platform.endpoints().router_url
    assert [(g["gate"], g["passed"]) for g in doc["gates"]] == [("error_rate<5%", True), ("p95<180000ms", True)]
    assert doc["judged"]["ok"] > 0 and doc["in_flight"] == 0      # real transcriptions were judged
    names = {e["name"] for e in doc["endpoints"]}
    assert names & ADMIN, names                                     # the admin user ran
    assert any(n.startswith("/v1/") for n in names), names          # the transcription user ran
    assert doc["total"]["requests"] == sum(e["requests"] for e in doc["endpoints"]) > 0
    assert (local_platform.root / ".opsctl" / "loadtests" / f"{doc['id']}.json").is_file()


def test_light_run_writes_html_csv_junit(light, reports):
    doc = light.doc
    html = (reports / "light.html").read_text()
    assert doc["host"] in html and "/v1/" in html
    for e in doc["endpoints"]:
        assert json.dumps(e["name"]).strip('"') in html or e["name"] in html
    with open(reports / "light_stats.csv") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    assert int(rows["Aggregated"]["Request Count"]) == doc["total"]["requests"]
    for e in doc["endpoints"]:
        assert int(rows[e["name"]]["Request Count"]) == e["requests"]
    assert (reports / "light_stats_history.csv").read_text().startswith("Timestamp,User Count")
    suite = ET.parse(reports / "light.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "0"
    assert [c.get("name") for c in suite.iter("testcase")] == ["error_rate<5%", "p95<180000ms"]
    assert not list(suite.iter("failure"))


def test_impossible_slo_exits_1_naming_the_gate(local_platform, reports):
    out = opsctl(local_platform.root, "loadtest", "run", "--users", "3", "--spawn-rate", "3", "--duration", "60s",
                 # a gate that holds beside the one that can't (error_rate would not: the transcriptions
                 # the abort cuts short are failures, and they are judged on their own, breaker 41 Q5)
                 "--slo", "requests>=1,p95<1ms", "--abort-on-fail", "--stop-timeout", "5s",
                 "--junit", str(reports / "bad.xml"), "--json")
    assert out.code == 1
    assert out.stderr.strip().splitlines()[-1].startswith("opsctl: error: SLO breached: p95<1ms (observed ")
    assert "requests>=1" not in out.stderr.strip().splitlines()[-1]
    doc = out.doc
    assert doc["passed"] is False and doc["aborted_by"] == "p95<1ms"
    assert doc["run_seconds"] < 60                                  # stopped on the lost gate, not the clock
    failures = list(ET.parse(reports / "bad.xml").getroot().iter("failure"))
    assert len(failures) == 1 and "p95<1ms" in failures[0].get("message")


def test_two_workers_totals_add_up(local_platform):
    # admin users only: quick requests, so each worker has many in a few seconds whatever
    # transcriptions earlier tests left queued on the worker
    args = ("loadtest", "run", "--users", "4", "--spawn-rate", "4", "--duration", "6s",
            "--workers", "2", "--classes", "AdminUser", "--slo", "error_rate<5%", "--json")
    assert opsctl(local_platform.root, *args).code == 0  # a first run: what stays set up in the process
    before = held()
    out = opsctl(local_platform.root, *args)
    assert out.code == 0, out.stderr
    # the master's ZeroMQ socket and context are closed: a run leaves no descriptor behind (7
    # were left per run, found with the fd count of a pytest worker, CI stop 51)
    assert grown(before, held()) == {}
    doc = out.doc
    counts = doc["worker_counts"]
    assert len(counts) == 2 and all(c["requests_sent"] > 0 for c in counts)
    assert sum(c["requests_sent"] for c in counts) == doc["total"]["requests"]
    assert sum(c["requests_received"] for c in counts) == doc["total"]["requests"]
    assert sum(e["requests"] for e in doc["endpoints"]) == doc["total"]["requests"]
    assert {e["name"] for e in doc["endpoints"]} <= ADMIN


def test_compare_flags_a_planted_regression(light, local_platform):
    base = light.doc
    saved = local_platform.root / ".opsctl" / "loadtests"
    planted = json.loads((saved / f"{base['id']}.json").read_text())
    slowest = max(planted["endpoints"], key=lambda e: e["requests"])
    slowest["p95_ms"] = slowest["p95_ms"] * 3 + 100
    planted["id"] = base["id"] + "-planted"
    (saved / f"{planted['id']}.json").write_text(json.dumps(planted))

    # a run against itself holds every figure: refused (breaker 42 R17), never "no regressions"
    same = opsctl(local_platform.root, "loadtest", "compare", base["id"], base["id"], "--min-requests", "1", "--json")
    assert same.code == 2 and "are the same run" in same.stderr, same.stderr

    out = opsctl(local_platform.root, "loadtest", "compare", base["id"], planted["id"], "--min-requests", "1", "--json")
    assert out.code == 1
    flagged = {r["endpoint"]: r["regressions"] for r in out.doc["rows"] if r["regressions"]}
    key = f"{slowest['method']} {slowest['name']}"
    assert list(flagged) == [key] and flagged[key][0].startswith("p95 ")
    assert f"{key}: p95" in out.stderr

    listed = opsctl(local_platform.root, "loadtest", "list", "--json")
    assert {base["id"], planted["id"]} <= {r["id"] for r in listed.doc}


@pytest.mark.parametrize("sig, workers", [(signal.SIGINT, "1"), (signal.SIGTERM, "0")], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_is_saved_and_exits_130(local_platform, tmp_path, sig, workers):
    """Ctrl-C as a terminal sends it, to the whole process group (opsctl and its Locust worker
    process: a worker dying of it left the run unsaved); SIGTERM as CI sends it, to opsctl."""
    prefix = tmp_path / "cut"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "opsctl"), "--root", str(local_platform.root),
                             "loadtest", "run", "--users", "2", "--spawn-rate", "2", "--duration", "10m",
                             "--workers", workers, "--classes", "AdminUser", "--csv", str(prefix), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    history = Path(f"{prefix}_stats_history.csv")
    deadline = time.monotonic() + 120
    while not (history.is_file() and len(history.read_text().splitlines()) > 3):  # the load is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["aborted_by"] == "interrupted" and doc["passed"] is False and doc["total"]["requests"] > 0
    assert err.strip().splitlines()[-1].startswith("opsctl: error: interrupted after ")
    assert f"saved as {doc['id']}" in err
    saved = json.loads((local_platform.root / ".opsctl" / "loadtests" / f"{doc['id']}.json").read_text())
    assert saved["total"]["requests"] == doc["total"]["requests"]


# --- An interrupt is never lost, whichever greenlet runs when it lands --------------------------
# Each case sends the signal from inside one greenlet of an in-process run (os.kill to this
# process: Python runs the handler in that greenlet at once), against a tiny local target.
# Locust's stats_history, CSV writer and spawner catch KeyboardInterrupt and end quietly, so
# the default handler's exception was lost there and the run went on to its full duration.

class _Answers(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hang = None  # a threading.Event: when set on the class, every request waits for it

    def do_GET(self):
        if self.hang is not None:
            self.hang.wait()
        body = b'{"version": "1"}' if self.path == "/version" else b"worker_requests_total 1"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_a):
        pass


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def quick_target():
    server, url = _serve(_Answers)
    yield url
    server.shutdown()


@pytest.fixture(scope="module")
def hanging_target():
    release = threading.Event()
    server, url = _serve(type("Hangs", (_Answers,), {"hang": release}))
    yield url
    release.set()
    server.shutdown()


def _signal_from(monkeypatch, owner, name: str, sig: int, when=lambda *a, **k: True) -> list:
    """Wrap owner.name so that its first call for which `when` holds sends `sig` to this process."""
    original, sent = getattr(owner, name), []

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        if not sent and when(*args, **kwargs):
            sent.append(sig)
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return sent


def _plan(host: str, tmp_path: Path, *, duration_s: float, stop_timeout_s: float):
    from opsctl.loadtest.plan import Plan

    return Plan(env="local", host=host, profile="light", users=2, spawn_rate=2, duration_s=duration_s,
                classes={"AdminUser": 1}, slo="", gates=[], csv_prefix=str(tmp_path / "cut"),
                locustfile=Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py",
                stop_timeout_s=stop_timeout_s)


@pytest.mark.parametrize("instant, sig", [
    ("stats-history", signal.SIGINT), ("csv-writer", signal.SIGINT), ("csv-writer", signal.SIGTERM),
    ("spawning", signal.SIGINT), ("request", signal.SIGINT)])
def test_an_interrupt_landing_in_any_greenlet_ends_the_run(quick_target, tmp_path, monkeypatch, instant, sig):
    from opsctl.loadtest import inflight, runner

    runner.import_locust()
    import locust.runners
    import locust.stats
    from locust.contrib.fasthttp import FastHttpSession

    inflight.install()
    where = {"stats-history": (locust.stats, "update_stats_history"),
             "csv-writer": (locust.stats.StatsCSVFileWriter, "_stats_history_data_rows"),
             "spawning": (locust.runners.Runner, "spawn_users"),
             "request": (FastHttpSession, "request")}[instant]
    monkeypatch.setattr(locust.stats, "HISTORY_STATS_INTERVAL_SEC", 0.1)  # its first look comes at once, not in 5 s
    sent = _signal_from(monkeypatch, *where, sig)
    # a lost interrupt lets the run go on to this duration and end as not interrupted
    summary = runner.run(_plan(quick_target, tmp_path, duration_s=4, stop_timeout_s=30))
    assert sent == [sig]
    assert (summary.aborted_by, summary.passed) == (runner.INTERRUPTED, False)
    assert Path(summary.reports["csv_stats_history"]).is_file()


def test_an_interrupt_during_the_stop_timeout_ends_it_and_keeps_the_run(hanging_target, tmp_path, monkeypatch):
    """The run reaches its duration with both users' requests unanswered; the stop would wait
    10 min for them. Ctrl-C then ends that wait: the run is saved interrupted, the unanswered
    requests recorded in flight (before, KeyboardInterrupt left run() and nothing was kept)."""
    from opsctl.loadtest import runner

    runner.import_locust()
    import locust.runners

    sent = _signal_from(monkeypatch, locust.runners.Runner, "stop_users", signal.SIGINT,  # not the spawner's call
                        when=lambda self, *_a, **_k: self.state == locust.runners.STATE_CLEANUP)
    try:
        summary = runner.run(_plan(hanging_target, tmp_path, duration_s=1, stop_timeout_s=600))
    except KeyboardInterrupt:
        pytest.fail("the interrupt left the run: nothing measured was kept")
    assert sent == [signal.SIGINT]
    assert (summary.aborted_by, summary.passed) == (runner.INTERRUPTED, False)
    assert summary.in_flight > 0 and summary.total.failures == summary.in_flight


@pytest.mark.parametrize("workers", [0, 1])
def test_a_run_leaves_no_temporary_folder(quick_target, tmp_path, monkeypatch, workers):
    """Every run used to leave an empty /tmp/opsctl-loadtest-* folder (one per CI load test);
    the worker processes' logs now live only as long as the run."""
    import dataclasses
    import tempfile

    from opsctl.loadtest import runner

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    summary = runner.run(dataclasses.replace(_plan(quick_target, tmp_path, duration_s=2, stop_timeout_s=30),
                                             workers=workers))
    assert summary.total.requests > 0 and len(summary.worker_counts) == workers
    assert list(scratch.iterdir()) == []


def test_a_worker_that_fails_keeps_the_log_its_error_names(quick_target, tmp_path, monkeypatch):
    import dataclasses
    import tempfile

    from opsctl.errors import OperationFailed
    from opsctl.loadtest import runner

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    plan = _plan(quick_target, tmp_path, duration_s=2, stop_timeout_s=30)
    broken = tmp_path / "locustfile.py"  # loads in this process (the master), not in a worker
    broken.write_text(f"import os\nif os.getpid() != {os.getpid()}:\n    raise SystemExit('no load here')\n"
                      + plan.locustfile.read_text())
    plan = dataclasses.replace(plan, workers=1, locustfile=broken)
    with pytest.raises(OperationFailed) as failed:
        runner.run(plan)
    log = Path(str(failed.value).rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.parent.parent == scratch and log.is_file()


@pytest.mark.parametrize("front", ["deploy load gate", "runbook step"])
def test_a_load_test_interrupted_inside_a_longer_operation_interrupts_it(quick_target, ops_root, monkeypatch, front):
    """Breaker 64 F3, the same kind beyond the drill: the run takes Ctrl-C itself to save its
    partial figures, and the deploy's load gate and a runbook's loadtest step then judged the
    cut-short run a failed one (a failed gate, a failed step, exit 1) instead of stopping as a
    Ctrl-C stops them (exit 130). They now raise the interrupt on (LoadTestOutcome.raise_if_interrupted)."""
    from opsctl.config import load_project
    from opsctl.deploy.hooks import load_gate
    from opsctl.loadtest import runner
    from opsctl.runbook import actions

    runner.import_locust()  # after the imports above: its monkey-patching of threading deadlocks later ones
    from locust.contrib.fasthttp import FastHttpSession

    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "router_url": quick_target}}}))
    project = load_project(ops_root)
    env = project.env("ci")
    sent = _signal_from(monkeypatch, FastHttpSession, "request", signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        if front == "deploy load gate":
            load_gate(project, env, "p95<5000ms", duration="4s")(quick_target)
        else:
            ctx = type("Ctx", (), {"project": project, "env": env})()
            actions.loadtest(ctx, users=2, duration="4s", slo="p95<5000ms", host=quick_target)
    assert sent == [signal.SIGINT]
