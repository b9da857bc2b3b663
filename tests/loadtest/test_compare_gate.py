"""`loadtest compare` fails on a head that is clearly worse (tester P6: a gate passed on the
wrong thing). The noise floor (--min-requests) is judged on the base's count alone: a head
whose transcriptions vanished (an AdminUser-only run), fell to a few requests or all failed
was "ok, no regressions beyond the thresholds", exit 0, because a head with fewer than 5
requests silenced every figure of the row and an endpoint only in the base was never flagged.
A head with no request shows no percentile or error rate (a p95 of 0 ms on 0 requests is not
an improvement). Runs are saved as `loadtest run` saves them and compared through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from opsctl.cli import app
from opsctl.loadtest import history
from opsctl.loadtest.compare import Thresholds, compare
from opsctl.loadtest.summary import EndpointStats, RunSummary

SECONDS = 300.0
SHORT = "POST /v1/audio/transcriptions [short]"


def _stats(method: str, name: str, requests: int, failures: int = 0, p95: float | None = 850.0) -> EndpointStats:
    """A row as a run stores it: rps and latencies of the successful requests only."""
    ok = requests - failures
    lat = p95 if ok else None
    return EndpointStats(method, name, requests, failures,
                         round(failures / requests * 100, 3) if requests else 0.0, round(ok / SECONDS, 3),
                         lat, lat, lat, lat, lat, lat, ok=ok)


def _run(run_id: str, endpoints: list[EndpointStats], judged: EndpointStats | None) -> RunSummary:
    requests = sum(e.requests for e in endpoints)
    failures = sum(e.failures for e in endpoints)
    total = _stats("", "Aggregated", requests, failures)
    return RunSummary(run_id, "staging", "http://127.0.0.1:8080", "light", 10, 2.0, SECONDS, 0,
                      "2026-12-01T01:00:00+00:00", "2026-12-01T01:05:00+00:00", SECONDS, "p95<2000ms", True, None,
                      [], total, endpoints, judged=judged)


def _base() -> RunSummary:
    """A light run: transcriptions beside the admin user's health polls."""
    return _run("20261201-010000-light-base", [
        _stats("GET", "/healthz", 300), _stats("GET", "/version", 300, p95=3.0),
        _stats("POST", "/v1/audio/transcriptions [short]", 1406, 3)],
        judged=_stats("", "Transcriptions", 1406, 3))


def _compare(ops_root, base: RunSummary, head: RunSummary, *options: str):
    from opsctl.config import load_project

    project = load_project(ops_root)
    for run in (base, head):
        history.save(project, run)
    runner = CliRunner()
    args = ["--root", str(ops_root), "loadtest", "compare", base.id, head.id, *options]
    text = runner.invoke(app, args, env={"COLUMNS": "80"})
    doc = runner.invoke(app, [*args, "--json"], env={"COLUMNS": "80"})
    assert text.exit_code == doc.exit_code, text.output + doc.output
    flagged = {r["endpoint"]: r["regressions"] for r in json.loads(doc.stdout)["rows"] if r["regressions"]}
    return text, flagged


def _whole_at_80_columns(out: str, flagged: dict[str, list[str]]) -> None:
    """The table fits 80 columns; each regression is one whole line below it (the console
    soft-wraps: a CI log or grep reads it whole), none cut."""
    lines = out.splitlines()
    said = [line for line in lines if line.startswith("regression ")]
    assert max(len(line) for line in lines if line not in said) <= 80, out
    assert said == [f"regression {key}: {why}" for key, whys in flagged.items() for why in whys], out
    assert "…" not in out and "\x1b" not in out, out


def test_a_head_without_transcriptions_is_a_regression(ops_root):
    # The tester's repro: the head ran only the AdminUser (zero transcriptions), whose polls
    # kept the Aggregated row's throughput up: "no regressions beyond the thresholds", exit 0.
    head = _run("20261201-020000-light-head", [
        _stats("GET", "/healthz", 1100), _stats("GET", "/readyz", 40), _stats("GET", "/version", 900, p95=3.0)],
        judged=_stats("", "Transcriptions", 0))
    out, flagged = _compare(ops_root, _base(), head)

    assert out.exit_code == 1, out.output
    assert "no regressions beyond the thresholds" not in out.stdout
    assert list(flagged) == ["Transcriptions", SHORT], out.stdout
    # the class judged by the gates collapsed: its throughput, and its count under the floor
    assert any(why.startswith("rps 4.677 -> 0 ") for why in flagged["Transcriptions"]), flagged
    assert "requests 1,406 -> 0 (none in head)" in flagged["Transcriptions"]
    # the endpoint that vanished from the head is a regression, not a bystander
    assert flagged[SHORT] == ["requests 1,406 -> none: not in the head run"]
    # what the head added and what held are not
    assert "GET /readyz" not in flagged and "GET /healthz" not in flagged and "GET /version" not in flagged
    assert out.stderr.startswith(f"opsctl: error: {sum(map(len, flagged.values()))} regression(s): "), out.stderr
    _whole_at_80_columns(out.stdout, flagged)
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("Transcriptions")]
    assert row.split()[1:3] == ["850", "-"] and row.split()[-2:] == ["-100.0%", "REGRESSION"], row
    (gone,) = [line for line in out.stdout.splitlines() if line.startswith("POST")]
    assert gone.split()[-1] == "REGRESSION", out.stdout  # its verdict, not "only in base"


def test_a_head_whose_requests_all_failed_flags_every_endpoint(ops_root):
    # A worker that hangs on /v1/*: each user's one request failed at the stop timeout, so
    # the head holds 1 to 3 requests per endpoint, all failed, beside health polls that held.
    head = _run("20261201-020000-light-head", [
        _stats("GET", "/healthz", 300), _stats("GET", "/version", 300, p95=3.0),
        _stats("POST", "/v1/audio/transcriptions [short]", 3, 3)],
        judged=_stats("", "Transcriptions", 3, 3))
    out, flagged = _compare(ops_root, _base(), head)

    assert out.exit_code == 1, out.output
    assert SHORT in flagged and "Transcriptions" in flagged, out.stdout
    for key in (SHORT, "Transcriptions"):
        whys = flagged[key]
        assert "error rate 0.213% -> 100% (+99.79 pp > 1 pp)" in whys, whys
        assert any(why.startswith("rps 4.677 -> 0 ") for why in whys), whys
        assert "requests 1,406 -> 3 (under 5 in head, too few to show it held)" in whys, whys
    assert "GET /healthz" not in flagged and "GET /version" not in flagged
    _whole_at_80_columns(out.stdout, flagged)
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("Transcriptions")]
    assert row.split()[-3:] == ["+99.8pp", "-100.0%", "REGRESSION"], row


@pytest.mark.parametrize("head_requests", [0, 1, 2, 3, 4])
def test_an_endpoint_near_zero_in_head_is_a_regression_whatever_its_figures(head_requests):
    # A few fast, successful requests in head: its p95 is better, its error rate no worse, and
    # a --max-rps-decrease of 100 tolerates any drop; the head still can't show the endpoint held.
    base = _base()
    head = _run("head", [_stats("POST", "/v1/audio/transcriptions [short]", head_requests, p95=100.0)],
                judged=_stats("", "Transcriptions", head_requests, p95=100.0))
    (row,) = [r for r in compare(base, head, Thresholds(rps_pct=100.0)).rows if r.endpoint == SHORT]
    assert row.regressions and row.regressions[0].startswith(f"requests 1,406 -> {head_requests} ("), row


def test_no_request_in_head_is_no_figure_never_an_improvement():
    # A head row with no request at all, as a hand-made or older record may hold it: a p95 of
    # 0 ms and an error rate of 0% on 0 requests are no figures, so no "-100%" or "-5.0pp".
    base = _run("base", [_stats("POST", "/v1/audio/transcriptions [short]", 100, 5)], judged=None)
    empty = EndpointStats("POST", "/v1/audio/transcriptions [short]", 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                          ok=0)
    head = _run("head", [empty], judged=None)
    (row,) = [r for r in compare(base, head).rows if r.endpoint == SHORT]
    assert row.changes == {"p50_ms": None, "p95_ms": None, "p99_ms": None, "error_rate": None, "rps": -100.0}
    assert row.regressions == ["requests 100 -> 0 (none in head)", "rps 0.317 -> 0 (-100% < -20%)"]


def test_a_base_under_the_noise_floor_and_an_endpoint_new_in_head_are_never_flagged(ops_root):
    # The floor is the base's: 4 base requests can't judge, whatever the head did; an endpoint
    # only in the head has nothing to regress from (the head's own SLO gates judge it).
    base = _run("20261201-010000-light-base", [_stats("GET", "/healthz", 300), _stats("GET", "/metrics", 4)],
                judged=_stats("", "Transcriptions", 0))
    head = _run("20261201-020000-light-head", [
        _stats("GET", "/healthz", 300), _stats("POST", "/v1/audio/transcriptions [short]", 3, 3)],
        judged=_stats("", "Transcriptions", 3, 3))
    out, flagged = _compare(ops_root, base, head)
    assert out.exit_code == 0 and flagged == {}, out.output
    assert "no regressions beyond the thresholds" in out.stdout
    assert [line.split()[-3:] for line in out.stdout.splitlines() if "only in" in line] == [
        ["only", "in", "base"], ["only", "in", "head"]], out.stdout


def test_min_requests_sets_the_base_floor(ops_root):
    # --min-requests above the base's 1,406 transcriptions: the base can't judge them; its
    # 2,006 requests in all still judge the Aggregated row, whose head has 600.
    head = _run("20261201-020000-light-head", [_stats("GET", "/healthz", 300), _stats("GET", "/version", 300, p95=3.0)],
                judged=_stats("", "Transcriptions", 0))
    out, flagged = _compare(ops_root, _base(), head, "--min-requests", "2000")
    assert out.exit_code == 1 and list(flagged) == ["Aggregated"], out.output


def test_a_head_saved_before_the_transcription_class_was_recorded_is_not_blamed_for_it():
    # Runs saved before `judged` existed have no Transcriptions row: that is no vanished endpoint.
    base = _base()
    head = _run("head", list(base.endpoints), judged=None)
    assert compare(base, head).regressions == []


def test_a_negative_noise_floor_is_refused_in_one_line(ops_root):
    out = CliRunner().invoke(app, ["--root", str(ops_root), "loadtest", "compare", "a", "b", "--min-requests", "-1"])
    assert out.exit_code == 2 and out.stdout == "", out.output
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "--min-requests must be 0 or more" in out.stderr


def test_a_head_failing_where_the_base_is_thin_or_absent_is_a_regression(ops_root):
    """Breaker 41 Q6: an endpoint going to 51 of 51 failed was "ok" when the base had fewer than
    5 requests of it, and an endpoint new in the head, all failing, got no verdict."""
    base = _run("20261201-010000-light-base", [_stats("GET", "/healthz", 300),
                                               _stats("POST", "/v1/audio/transcriptions [short]", 2)],
                judged=_stats("", "Transcriptions", 2))
    head = _run("20261201-020000-light-head", [
        _stats("GET", "/healthz", 300), _stats("POST", "/v1/audio/transcriptions [short]", 51, 51),
        _stats("POST", "/v1/jobs [short]", 51, 51), _stats("GET", "/version", 40)],
        judged=_stats("", "Transcriptions", 51, 51))
    out, flagged = _compare(ops_root, base, head)
    assert out.exit_code == 1, out.output
    assert flagged["POST /v1/audio/transcriptions [short]"] == [
        "error rate 100% over 51 requests in head (the base's 2 too few to compare; > 1 pp)"], flagged
    assert flagged["POST /v1/jobs [short]"] == ["error rate 100% over 51 requests in head (new in head; > 1 pp)"]
    assert "GET /version" not in flagged and "GET /healthz" not in flagged  # new or held, and healthy


def test_runs_set_up_apart_are_said_with_the_verdict(ops_root):
    """Breaker 41 Q7: `compare previous latest` set a 2-user drill run against a stress run on
    another host with no word of it."""
    import dataclasses

    base = _base()
    head = dataclasses.replace(_base(), id="20261201-020000-stress-head", profile="stress", users=base.users + 8)
    out, _ = _compare(ops_root, base, head)
    notes = [line for line in out.stdout.splitlines() if line.startswith("note ")]
    assert notes == [f"note the runs differ in profile: {base.profile} -> stress: figures compare two setups, "
                     "not two releases", f"note the runs differ in users: {base.users} -> {base.users + 8}: figures "
                     "compare two setups, not two releases"], out.stdout
    same, _ = _compare(ops_root, _base(), dataclasses.replace(_base(), id="20261201-020000-light-head"))
    assert "note " not in same.stdout


def test_a_row_the_base_is_too_thin_to_judge_says_unjudged_not_ok(ops_root):
    """Breaker 42 R17: under the base's noise floor a row read "ok" beside `err +100.0pp`, and
    an endpoint missing from the head showed no base p95 though the base measured one."""
    base = _run("20261201-010000-light-base", [_stats("GET", "/healthz", 300),
                                               _stats("GET", "/metrics", 4, p95=415.0)],
                judged=_stats("", "Transcriptions", 0))
    head = _run("20261201-020000-light-head", [_stats("GET", "/metrics", 4, 4)], judged=_stats("", "Transcriptions", 0))
    out, flagged = _compare(ops_root, base, head)
    rows = {line.split()[1]: line.split() for line in out.stdout.splitlines() if line.startswith("GET ")}
    assert rows["/metrics"][-1] == "unjudged" and "+100.0pp" in rows["/metrics"], out.stdout
    assert "unjudged: the base has fewer than 5 requests of it (--min-requests, the noise floor)" in out.stdout
    assert rows["/healthz"][2] == "850" and rows["/healthz"][-1] == "REGRESSION", out.stdout  # the base's p95 shown


def test_a_run_compared_with_itself_is_refused(ops_root):
    from opsctl.config import load_project

    history.save(load_project(ops_root), _base())
    out = CliRunner().invoke(app, ["--root", str(ops_root), "loadtest", "compare", "latest", "latest"])
    assert out.exit_code == 2 and out.stdout == "", out.output
    assert "'latest' and 'latest' are the same run, 20261201-010000-light-base; compare two runs" in out.stderr
