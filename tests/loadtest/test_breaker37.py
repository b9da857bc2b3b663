"""Breaker 37's load-test findings, as kinds of fault:

G1  a password or token in the target URL reached stdout, stderr, the reports and the saved
    run: such a URL is refused (exit 2, one line, the secret never echoed, nothing written),
    and a run saved before that never shows its password in `list`;
G14 durations and SLO numbers are strict: each unit once and largest first, ASCII digits,
    nothing shorter than a second, days accepted as the limits are worded in them;
G15 users, spawn rate, class weights and error-rate gates are bounded;
G18 `compare` refuses an empty reference and says "runs match"; an unknown class given by
    --classes is blamed on --classes, not on the profile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest_support import opsctl
from opsctl.config import load_project
from opsctl.errors import UsageError
from opsctl.loadtest import history, plan, profiles, runner, slo
from opsctl.loadtest.manifests import render_locust

SECRET = "Sup3rS3cret"


def _one_line(outcome) -> str:
    assert outcome.code == 2, (outcome.code, outcome.stdout, outcome.stderr)
    assert outcome.stdout == ""
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opsctl: error: "), outcome.stderr
    return lines[0]


# --- G1: secrets in the target URL ---------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://admin:{s}@{hp}",            # user:password@
    "http://{s}@{hp}",                  # a token as the user name
    "http://{hp}/?token={s}",           # a token in the query
    "http://{hp}/#access_token={s}",    # ... or in a fragment
])
def test_a_secret_in_the_host_is_refused_and_never_shown_or_stored(ops_root, http_server, url):
    reports = ops_root / "reports"
    host = url.format(s=SECRET, hp=http_server)
    out = opsctl(ops_root, "loadtest", "run", "--host", host, "-u", "1", "-r", "1", "-t", "2s",
                 "--classes", "AdminUser", "--stop-timeout", "1s", "--slo", "requests>=0",
                 "--html", str(reports / "r.html"), "--junit", str(reports / "r.xml"),
                 "--csv", str(reports / "r"))
    line = _one_line(out)
    assert SECRET not in out.stdout + out.stderr
    assert "--host" in line and "LOADTEST_API_KEY" in line  # where the key goes instead
    # nothing written: no report, no saved run
    assert not reports.exists() or not any(reports.iterdir())
    assert not history.folder(load_project(ops_root)).exists() or not any(
        history.folder(load_project(ops_root)).iterdir())
    listed = opsctl(ops_root, "loadtest", "list", "--json")
    assert SECRET not in listed.stdout + listed.stderr


def test_render_locust_refuses_a_secret_in_the_host(ops_root):
    project = load_project(ops_root)
    with pytest.raises(UsageError) as caught:
        render_locust(project, project.env("local"), host=f"http://admin:{SECRET}@router:8080")
    assert SECRET not in str(caught.value) and "credentials" in str(caught.value)


@pytest.mark.parametrize("url, says", [
    ("http://[::1", "not a valid URL"),
    ("http://127.0.0.1:99999", "bad port"),
    ("http://127.0.0.1:x", "bad port"),
])
def test_a_malformed_host_is_one_line(ops_root, url, says):
    assert says in _one_line(opsctl(ops_root, "loadtest", "run", "--host", url))


def test_a_password_in_a_run_saved_earlier_is_masked_in_list(ops_root):
    from test_tables import _summary

    project = load_project(ops_root)
    old = _summary("20261130-010000-heavy-aaaa")
    old.host = f"http://admin:{SECRET}@127.0.0.1:8080"
    history.save(project, old)
    for args in (("list",), ("list", "--json")):
        out = opsctl(ops_root, "loadtest", *args)
        assert out.code == 0 and SECRET not in out.stdout + out.stderr, out


# --- G14: durations and SLO numbers ----------------------------------------------------------

@pytest.mark.parametrize("text", ["1h1h", "5m5m", "5m1h", "30s1m", "1.5h30m", "٣m", "١٠s", "1h 30m", "h"])
def test_a_malformed_duration_is_refused(text):
    with pytest.raises(UsageError, match="is not a duration.*each unit once, largest first, digits 0-9"):
        profiles.parse_duration(text, "--for", 30 * 86400)


@pytest.mark.parametrize("text", ["0.0001s", "0.5", "0.9s"])
def test_a_duration_under_a_second_is_refused_saying_why(text):
    with pytest.raises(UsageError, match="less than 1s, too short to be of use"):
        profiles.parse_duration(text, "--for", 30 * 86400)


@pytest.mark.parametrize("text, seconds", [("1d", 86400), ("30d", 30 * 86400), ("1d12h", 129600),
                                           ("1h30m", 5400), ("1.5h", 5400), ("90", 90), ("1H", 3600)])
def test_well_formed_durations_including_days(text, seconds):
    assert profiles.parse_duration(text, "--for", 30 * 86400) == seconds


def test_the_limit_is_worded_in_units_the_parser_takes(ops_root):
    with pytest.raises(UsageError) as caught:
        profiles.parse_duration("721h", "--for", 30 * 86400)
    assert "longer than the 30d allowed (720h)" in str(caught.value)
    assert profiles.parse_duration("30d", "--for", 30 * 86400) == 30 * 86400  # the limit as written


@pytest.mark.parametrize("args, says", [
    (("-t", "1h1h"), "--duration: '1h1h' is not a duration"),
    (("--stop-timeout", "0.0001s"), "--stop-timeout: '0.0001s' is less than 1s"),
    (("-t", "٣m"), "--duration: '٣m' is not a duration"),
])
def test_loadtest_run_durations_are_strict(ops_root, args, says):
    assert says in _one_line(opsctl(ops_root, "loadtest", "run", "--host", "http://127.0.0.1:9", *args))


@pytest.mark.parametrize("text", ["p95<٣ms", "p95<2٠00ms", "error_rate<٥%", "rps>=١"])
def test_slo_numbers_are_ascii_digits(text):
    with pytest.raises(UsageError, match="digits 0-9"):
        slo.parse(text)


# --- G15: bounds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (("-u", "99999999999999"), "--users must be at least 1 and at most 10000 (got 99999999999999)"),
    (("-u", "0"), "--users must be at least 1"),
    (("-r", "5000"), "--spawn-rate must be more than 0 and at most 1000 users/s (got 5000)"),
    (("-r", "nan"), "--spawn-rate must be more than 0"),
    (("-r", "inf"), "--spawn-rate must be more than 0"),
    (("--classes", "AdminUser=99999999"), "--classes: the weight of AdminUser must be at least 1 and at most 1000"),
    (("--classes", "AdminUser=٣"), "--classes: bad term 'AdminUser=٣'"),
    (("--slo", "error_rate<500%"), "error_rate is a percentage of requests, 0% to 100%"),
    (("--slo", "error_rate<=100.5%"), "0% to 100%"),
])
def test_numbers_out_of_range_are_one_line(ops_root, args, says):
    assert says in _one_line(opsctl(ops_root, "loadtest", "run", "--host", "http://127.0.0.1:9", *args))


def test_error_rate_gates_within_range_are_accepted():
    assert [g.threshold for g in slo.parse("error_rate<100%,error_rate>=0%")] == [100.0, 0.0]


def test_a_profile_out_of_bounds_is_named(ops_root):
    own = ops_root / "loadtests"
    own.mkdir()
    (own / "profiles.yaml").write_text(
        "version: 1\nprofiles:\n  huge:\n    users: 99999999\n    spawn_rate: 2\n    duration: 1m\n")
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--profile", "huge", "--host", "http://127.0.0.1:9",
                            "--locustfile", str(profiles.SHIPPED / "locustfile.py")))
    assert "profile 'huge': users must be at least 1 and at most 10000" in line


def test_compare_thresholds_must_be_numbers(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "compare", "a", "b", "--max-rps-decrease", "nan"))
    assert "--max-rps-decrease must be a number, 0 or more" in line


# --- G18: compare references and --classes ---------------------------------------------------------

@pytest.mark.parametrize("ref", ["", "  "])
def test_compare_refuses_an_empty_reference(ops_root, ref):
    from test_tables import _summary

    project = load_project(ops_root)
    for run_id in ("20261130-010000-heavy-aaaa", "20261130-020000-heavy-bbbb"):
        history.save(project, _summary(run_id))
    line = _one_line(opsctl(ops_root, "loadtest", "compare", ref, "latest"))
    assert "a run reference is empty" in line and "'latest'" in line


def test_an_ambiguous_prefix_says_runs_match(ops_root):
    from test_tables import _summary

    project = load_project(ops_root)
    for run_id in ("20261130-010000-heavy-aaaa", "20261130-020000-heavy-bbbb"):
        history.save(project, _summary(run_id))
    line = _one_line(opsctl(ops_root, "loadtest", "compare", "2026", "latest"))
    assert "2 runs match '2026'" in line and "give more of the id" in line


def test_an_unknown_class_given_by_the_option_blames_the_option(ops_root):
    runner.import_locust()  # unpatched, as a run imports it
    project = load_project(ops_root)
    the_plan = plan.make(project, project.env("local"), "light", host="http://127.0.0.1:9", classes="Nope",
                         check=False)
    with pytest.raises(UsageError) as caught:
        runner._user_classes(the_plan)
    said = str(caught.value)
    assert said.startswith("--classes names user class Nope that ") and "profile" not in said.split(";")[0]
    assert "TranscriptionUser" in said


def test_an_unknown_class_in_the_profile_blames_the_profile(ops_root, tmp_path):
    runner.import_locust()
    project = load_project(ops_root)
    the_plan = plan.make(project, project.env("local"), "light", host="http://127.0.0.1:9", check=False)
    lonely = tmp_path / "lonely.py"
    lonely.write_text("from locust import HttpUser, task\n\n\nclass OnlyUser(HttpUser):\n"
                      "    @task\n    def t(self):\n        pass\n")
    import dataclasses

    with pytest.raises(UsageError) as caught:
        runner._user_classes(dataclasses.replace(the_plan, locustfile=Path(lonely)))
    assert str(caught.value).startswith("profile 'light' names user classes AdminUser, TranscriptionUser")


@pytest.mark.parametrize("kind", ["stats", "failures", "exceptions", "stats_history"])
def test_each_csv_file_is_checked_as_a_report(ops_root, kind):
    """Breaker 65 G3: `--csv PREFIX` checked PREFIX_stats_history.csv alone; Locust's other three
    files followed a link, and reports/y_stats.csv -> ../opsctl.yaml replaced the config."""
    (ops_root / "reports").mkdir()
    (ops_root / "reports" / f"y_{kind}.csv").symlink_to(ops_root / "opsctl.yaml")
    config = (ops_root / "opsctl.yaml").read_bytes()
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--host", "http://127.0.0.1:9", "--csv", "reports/y"))
    assert "holds the ops root's config" in line and f"y_{kind}.csv" in line, line
    assert (ops_root / "opsctl.yaml").read_bytes() == config
