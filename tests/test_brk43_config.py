"""opsctl.yaml values refused when the file is read, one line naming the key, exit 2 (breaker 43).

S4: YAML 1.1 reads yes/on/true as booleans, which pydantic's lax mode took for 1: `keep_last:
yes` kept one backup, `cpu_percent: on` paged at 1 %, `ready_timeout: true` failed deploys.
S12: dr.rto/dr.rpo had no upper bound (a 300-digit RPO rendered an alert rule `> inf`) and took
non-ASCII digits. S11: a bad backup.repository, router_url or loadtest.slo was only refused at
use time (a CRITICAL health check; a `--slo` flag blamed). S13: `--env` with a newline printed
a two-line error. R18: `opsctl init ''` wrote into the current directory.
"""

from __future__ import annotations

import pytest

from opsctl.cli import app


def refused(runner, root, body: str, args=("config", "show", "--env", "stg")) -> str:
    """The one line `opsctl ARGS` prints on an opsctl.yaml of environment `stg` holding `body`; exit 2."""
    (root / "opsctl.yaml").write_text("version: 1\nenvironments:\n  stg:\n    platform: kubernetes\n" + body)
    result = runner.invoke(app, ["--root", str(root), *args])
    line = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(line.splitlines()) == 1 and "Traceback" not in line and "unexpected" not in line, result.output
    return line


def accepted(runner, root, body: str) -> None:
    (root / "opsctl.yaml").write_text("version: 1\nenvironments:\n  stg:\n    platform: kubernetes\n" + body)
    result = runner.invoke(app, ["--root", str(root), "config", "show", "--env", "stg"])
    assert result.exit_code == 0, result.output


# --- S4: a boolean is no number ------------------------------------------------------------

@pytest.mark.parametrize("body, key", [
    ("    backup:\n      retention: {keep_last: yes}\n", "environments.stg.backup.retention.keep_last"),
    ("    thresholds: {cpu_percent: on}\n", "environments.stg.thresholds.cpu_percent"),
    ("    deploy: {ready_timeout: true}\n", "environments.stg.deploy.ready_timeout"),
    ("    worker: {replicas: true}\n", "environments.stg.worker.replicas"),
    ("    worker: {autoscaling: {min_replicas: yes}}\n", "environments.stg.worker.autoscaling.min_replicas"),
    ("    monitoring: {archive_lag_warning: on}\n", "environments.stg.monitoring.archive_lag_warning"),
    ("    health: {timeout: yes}\n", "environments.stg.health.timeout"),  # health.settings' models too
    ("    health:\n      http: [{name: a, url: 'https://a.example.com', timeout: on}]\n",
     "environments.stg.health.http.0.timeout"),
])
def test_a_boolean_for_a_number_is_refused_naming_the_key(runner, tmp_path, body, key):
    line = refused(runner, tmp_path, body)
    assert f"{key}: expected a number, got the boolean true (YAML reads yes/no/on/off/true/false as " \
           "booleans)" in line, line


def test_booleans_where_booleans_belong_still_load(runner, tmp_path):
    accepted(runner, tmp_path, "    protected: yes\n    worker: {gpu: off, autoscaling: {enabled: no}}\n"
                               "    deploy: {auto_promote: on, keep_versions: 3}\n")


# --- S12: dr.rto/dr.rpo bounded, ASCII digits ----------------------------------------------

@pytest.mark.parametrize("dr, key, said", [
    ("{rpo: " + "9" * 320 + "s}", "dr.rpo", "at most 30d"),
    ("{rto: 99999999999999999999d}", "dr.rto", "at most 30d"),
    ("{rto: 31d}", "dr.rto", "at most 30d"),
    ("{rpo: ١٠m}", "dr.rpo", "digits 0-9"),
    ("{rto: ٣h}", "dr.rto", "digits 0-9"),
    ("{rpo: 0s}", "dr.rpo", "from 1s to at most 30d"),
    ("{rpo: 0.0000001s}", "dr.rpo", "from 1s to at most 30d"),  # breaker 44 T5: an alert rule `> 1e-07`
])
def test_dr_targets_are_bounded_ascii_durations(runner, tmp_path, dr, key, said):
    line = refused(runner, tmp_path, f"    dr: {dr}\n")
    assert f"environments.stg.{key}: " in line and said in line, line


def test_dr_targets_within_bounds_load(runner, tmp_path):
    accepted(runner, tmp_path, "    dr: {rto: 30d, rpo: 0.5h}\n")


# --- F16: decimals said; an RPO below archive_timeout can never be met ----------------------

def test_a_bad_dr_target_says_a_fraction_is_taken(runner, tmp_path):
    """dr.rto/dr.rpo take `1.5h` (the regex always did); the error said digits, then a unit."""
    line = refused(runner, tmp_path, "    dr: {rpo: '1,5h'}\n")
    assert "environments.stg.dr.rpo: " in line and "1.5h" in line and "optionally a fraction" in line, line
    accepted(runner, tmp_path, "    dr: {rto: 1.5h, rpo: 2.25m}\n")


def _local(root, body: str) -> None:
    (root / "opsctl.yaml").write_text("version: 1\nenvironments:\n  local:\n    platform: local\n" + body)


@pytest.mark.parametrize("body, said", [
    ("    dr: {rpo: 1s}\n", "dr.rpo 1s is below backup.archive_timeout (30 s)"),  # the default timeout
    ("    dr: {rpo: 0.5m}\n    backup: {archive_timeout: 45}\n", "dr.rpo 0.5m is below backup.archive_timeout (45 s)"),
])
def test_an_rpo_below_archive_timeout_is_refused_on_the_embedded_platform(runner, tmp_path, body, said):
    """Breaker F16: `rpo: 1s` loaded, and every health sweep and drill then failed with "archive
    lag 30 s, above the RPO of 1s": a commit waits up to archive_timeout to be archived."""
    _local(tmp_path, body)
    result = runner.invoke(app, ["--root", str(tmp_path), "config", "show", "--env", "local"])
    line = result.output.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1, result.output
    assert "environments.local: " in line and said in line and "can never be met" in line, line
    assert "raise dr.rpo to at least" in line and "or lower backup.archive_timeout" in line, line


def test_an_rpo_below_archive_timeout_is_refused_with_archive_servers(runner, tmp_path):
    body = ("    dr: {rpo: 10s}\n    backup:\n      archive_servers: {selfdb: {url_env: SELFDB_URL, "
            "queue: /var/lib/queue}}\n")
    line = refused(runner, tmp_path, body)
    assert "environments.stg: " in line and "dr.rpo 10s is below backup.archive_timeout (30 s)" in line, line


def test_an_rpo_at_or_above_archive_timeout_loads(runner, tmp_path):
    for body in ("    dr: {rpo: 1s}\n    backup: {archive_timeout: 1}\n", "    dr: {rpo: 30s}\n",
                 "    dr: {rpo: 1.5h}\n"):
        _local(tmp_path, body)
        result = runner.invoke(app, ["--root", str(tmp_path), "config", "show", "--env", "local"])
        assert result.exit_code == 0, (body, result.output)
    # a kubernetes environment without archive_servers: archive_timeout bounds nothing there
    accepted(runner, tmp_path, "    dr: {rpo: 10s}\n")


def test_a_long_scrape_interval_is_one_line(runner, tmp_path):
    line = refused(runner, tmp_path, "    monitoring: {scrape_interval: " + "9" * 5000 + "s}\n")
    assert "environments.stg.monitoring.scrape_interval: " in line and "Prometheus duration" in line, line[:300]


# --- S11: refused when read, not at use ----------------------------------------------------

@pytest.mark.parametrize("body, key, said", [
    ("    backup: {repository: 'ftp://x/y'}\n", "backup.repository", "not s3://bucket/prefix or file:///path"),
    ("    backup: {repository: ''}\n", "backup.repository", "empty"),
    ("    backup: {repository: 's3://'}\n", "backup.repository", "not s3://bucket/prefix or file:///path"),
    ("    router_url: 'not a url'\n", "router_url", "not an http(s) URL with a host"),
    ("    router_url: 'http://:80'\n", "router_url", "not an http(s) URL with a host"),
    ("    loadtest: {slo: 'p95<<2'}\n", "loadtest.slo", "bad term 'p95<<2'"),
    ("    loadtest: {slo: 'p95<2000ms,,rps>1'}\n", "loadtest.slo", "empty term"),
    # breaker 44 T4: the other URL and target fields of the same kind
    ("    worker: {autoscaling: {prometheus_url: 'http://'}}\n", "worker.autoscaling.prometheus_url",
     "not an http(s) URL with a host"),
    ("    aws: {endpoint_url: 'localhost'}\n", "aws.endpoint_url", "not an http(s) URL with a host"),
    ("    monitoring: {alertmanager_url: 'http://'}\n", "monitoring.alertmanager_url", "not an http(s) URL"),
    ("    monitoring: {exporters: {node: 'not a target'}}\n", "monitoring.exporters", "not a host:port scrape target"),
    ("    monitoring: {exporters: {node: 'host:99999'}}\n", "monitoring.exporters", "not a host:port scrape target"),
    ("    monitoring: {health_exporter: 'http://x:9464'}\n", "monitoring.health_exporter", "not a host:port"),
])
def test_bad_values_are_refused_when_opsctl_yaml_is_read(runner, tmp_path, body, key, said):
    line = refused(runner, tmp_path, body)
    assert f"environments.stg.{key}: " in line and said in line, line
    assert "--slo" not in line, line  # the key is named, not a flag the user never gave


def test_the_slo_of_opsctl_yaml_is_not_blamed_on_slo_flag(runner, tmp_path):
    line = refused(runner, tmp_path, "    loadtest: {slo: 'p95<<2'}\n", ("loadtest", "run", "--env", "stg", "-t", "1s"))
    assert "environments.stg.loadtest.slo: " in line and "--slo" not in line, line


def test_good_repository_router_and_slo_load(runner, tmp_path):
    for body in ("    backup: {repository: 's3://bucket/prefix'}\n", "    backup: {repository: 'file:///srv/b'}\n",
                 "    backup: {repository: 'file://.opsctl/backups'}\n",
                 "    router_url: 'https://transcribe.example.com:8443/api'\n",
                 "    loadtest: {slo: 'p95<2000ms,error_rate<5%,rps>=10'}\n"):
        accepted(runner, tmp_path, body)


# --- S13: --env with a control character -----------------------------------------------------

def test_an_unknown_env_with_a_newline_is_one_escaped_line(runner, ops_root):
    result = runner.invoke(app, ["config", "show", "--env", "stag\ning\x1b[2J"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1, result.output
    assert "unknown environment 'stag\\ning\\x1b[2J' in " in line and "\x1b" not in line, line


# --- the shipped and the starter opsctl.yaml still load --------------------------------------

def test_shipped_and_starter_configs_load(runner, ops_root):
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for root in (repo, ops_root):
        result = runner.invoke(app, ["--root", str(root), "config", "show"])
        assert result.exit_code == 0, result.output
