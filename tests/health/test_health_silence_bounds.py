"""Silences and durations at their edges (BREAKER23 13, 14): a duration past its bound is one
line and exit 2, never an OverflowError; a pattern that matches no check says so; a glob
holds the same checks in Alertmanager as in the local monitor."""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import time

import pytest
import yaml

from opsctl import httpclient
from opsctl.cli import app


def _root(tmp_path, monkeypatch, env: dict | None = None):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    envs = {"ci": env} if env else {}
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": envs}))


@pytest.mark.parametrize("args", [
    ["health", "silence", "--check", "worker-blue", "--for", "99999999999h"],
    ["health", "silence", "--check", "worker-blue", "--for", "90000000h"],
    ["health", "silence", "--check", "worker-blue", "--for", "721h"],
    ["health", "silence", "--check", "worker-blue", "--for", "2592001"],
    ["loadtest", "run", "--duration", "99999999999h"],
    ["loadtest", "run", "--duration", "1h", "--stop-timeout", "99999999999h"],
    ["health", "--mode", "continuous", "--interval", "inf"],
    ["health", "--mode", "continuous", "--interval", "nan"],
    ["health", "--mode", "continuous", "--interval", "1e300"],
])
def test_a_duration_past_its_bound_is_one_line_and_exit_2(runner, tmp_path, monkeypatch, args):
    _root(tmp_path, monkeypatch)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output.strip()}"
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output


def test_thirty_days_is_the_longest_silence(runner, tmp_path, monkeypatch):
    _root(tmp_path, monkeypatch)
    result = runner.invoke(app, ["health", "silence", "--check", "worker-blue", "--for", "720h"])
    assert result.exit_code == 0, result.output


def test_a_pattern_matching_no_check_is_silenced_with_a_one_line_warning(runner, tmp_path, monkeypatch):
    _root(tmp_path, monkeypatch, {"platform": "kubernetes", "router_url": "http://127.0.0.1:9"})
    typo = runner.invoke(app, ["health", "silence", "--env", "ci", "--check", "kubernets", "--for", "1h"])
    assert typo.exit_code == 0, typo.output
    (warning,) = typo.stderr.strip().splitlines()
    assert "'kubernets' matches no check of 'ci'" in warning and "kubernetes" in warning
    good = runner.invoke(app, ["health", "silence", "--env", "ci", "--check", "kube*", "--for", "1h"])
    assert good.exit_code == 0 and good.stderr.strip() == "", good.output
    kind = runner.invoke(app, ["health", "silence", "--env", "ci", "--check", "http", "--for", "1h"])
    assert kind.exit_code == 0 and kind.stderr.strip() == "", kind.output  # a kind matches too


PATTERNS = ["worker-[bg]*", "worker-[!b]*", "[a-c]?*", "backup age", "wal arch*", "metrics-[z-a]*",
            "metrics-[!z-a]*", "x[", "heartbeat *", "*[]]*", "[!]]*", "w.rker*", "worker-?lue", "[[]*",
            "*[.]*", "a|b", "(x)", "[a-c-]*", "*\\*", "*+*", "^w*", "w*$"]
NAMES = ["worker-blue", "worker-green", "worker-red", "metrics-blue", "backup age", "wal archive",
         "heartbeat nightly", "router", "x[", "]x", "w.rker-1", "wXrker-1", "[a", "a.b", "a|b", "(x)",
         "-x", "c", "ab", "x\\*", "a+b", "^w", "w$", ""]


def test_the_alertmanager_regex_of_a_glob_matches_what_fnmatch_matches():
    from opsctl.health.silences import _glob_regex

    differ = [(p, n) for p in PATTERNS for n in NAMES
              if fnmatch.fnmatchcase(n, p) != (re.fullmatch(_glob_regex(p), n) is not None)]
    assert not differ, [(p, n, _glob_regex(p)) for p, n in differ]
    assert all("(?" not in _glob_regex(p) and "\\Z" not in _glob_regex(p) for p in PATTERNS)  # RE2/Go syntax


def test_a_bracket_glob_silences_the_same_alerts_in_the_real_alertmanager(tmp_path, alertmanager):
    from opsctl.config import load_project
    from opsctl.health import silences

    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {ci: {platform: kubernetes}}\n")
    project = load_project(tmp_path)
    names = ["worker-blue", "worker-green", "worker-red", "wal archive"]
    now = dt.datetime.now(dt.timezone.utc)
    alerts = [{"labels": {"alertname": "HealthCheckCritical", "env": "ci", "check": n, "case": "brackets"},
               "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(minutes=10)).isoformat()} for n in names]
    httpclient.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()
    for pattern in ["worker-[bg]*", "worker-[!b]*", "wal arch*"]:
        made = silences.add(project, "ci", pattern, 600, alertmanager=alertmanager)
        local = {n for n in names if made.holds(n)}
        remote: set[str] = set()
        for _ in range(50):  # Alertmanager applies a new silence to alerts asynchronously
            remote = {a["labels"]["check"] for a in httpclient.get(
                f"{alertmanager}/api/v2/alerts", params={"filter": 'case="brackets"'}, timeout=10).json()
                if made.alertmanager_id in a["status"]["silencedBy"]}
            if remote == local:
                break
            time.sleep(0.1)
        assert remote == local and local, (pattern, local, remote)
        silences.remove(project, "ci", made.id, alertmanager=alertmanager)


def test_a_silence_by_kind_holds_the_same_alerts_in_the_real_alertmanager(tmp_path, alertmanager):
    """Issue 23 (B23b): `--check http` holds every check of kind http locally (Silence.holds
    matches name or kind); the exporter's alerts carry env, check and kind, so Alertmanager
    silences the same ones (a second silence on label kind), and unsilence expires both."""
    from opsctl.config import load_project
    from opsctl.health import silences

    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {ci: {platform: kubernetes}}\n")
    project = load_project(tmp_path)
    checks = {"router": "http", "api": "http", "http": "tcp", "postgres": "postgres"}
    now = dt.datetime.now(dt.timezone.utc)
    alerts = [{"labels": {"alertname": "HealthCheckCritical", "env": "ci", "check": n, "kind": k, "case": "by-kind"},
               "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(minutes=10)).isoformat()}
              for n, k in checks.items()]
    httpclient.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()
    made = silences.add(project, "ci", "http", 600, alertmanager=alertmanager)
    local = {n for n, k in checks.items() if made.holds(n, k)}
    assert local == {"router", "api", "http"}
    ids = {made.alertmanager_id, made.alertmanager_kind_id}
    assert None not in ids and len(ids) == 2
    remote: set[str] = set()
    for _ in range(50):  # Alertmanager applies a new silence to alerts asynchronously
        remote = {a["labels"]["check"] for a in httpclient.get(
            f"{alertmanager}/api/v2/alerts", params={"filter": 'case="by-kind"'}, timeout=10).json()
            if ids & set(a["status"]["silencedBy"])}
        if remote == local:
            break
        time.sleep(0.1)
    assert remote == local, (local, remote)
    silences.remove(project, "ci", made.id, alertmanager=alertmanager)
    states = {httpclient.get(f"{alertmanager}/api/v2/silence/{i}", timeout=10).json()["status"]["state"] for i in ids}
    assert states == {"expired"}
