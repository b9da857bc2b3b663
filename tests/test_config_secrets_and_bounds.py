"""opsctl.yaml holds no secrets and no numbers out of range (breaker 38 H1, H3, H4).

Every URL-valued setting refuses a URL that carries a secret, in one line naming the key and
never the secret; `config show` masks whatever could still carry one; every float refuses NaN
and infinities, and every number has a range. Driven through the CLI, as a user meets them.
"""

from __future__ import annotations

import json

import pytest

from opsctl.cli import app


def _write(root, body: str) -> None:
    (root / "opsctl.yaml").write_text(
        "version: 1\nenvironments:\n  staging:\n    platform: kubernetes\n    " + body + "\n")


def _refused(runner, root, body: str, key: str):
    _write(root, body)
    result = runner.invoke(app, ["config", "show", "--env", "staging"])
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and "unexpected" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and f"environments.staging.{key}" in lines[0], out
    return lines[0]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    return tmp_path


# --- H1: secrets in URL settings ---------------------------------------------------------------

SEKRIT_URLS = [
    ("router_url: https://admin:RSEKRIT1@router.example.com", "router_url", "deploy.api_key_env"),
    ('aws: {endpoint_url: "https://AKIA:ESEKRIT2@s3.example.com"}', "aws.endpoint_url", "AWS chain"),
    ('pulumi: {backend: "s3://AKIA:PSEKRIT3@bucket/pulumi"}', "pulumi.backend", "PULUMI_BACKEND_URL"),
    ('backup: {repository: "s3://AKIA:BSEKRIT4@bucket/prefix"}', "backup.repository", "AWS chain"),
    ('backup: {repository: "s3://bucket/p?X-Amz-Signature=BSEKRIT5"}', "backup.repository", "AWS chain"),
    ('monitoring: {alertmanager_url: "https://u:ASEKRIT6@am:9093"}', "monitoring.alertmanager_url", "no secret"),
    ('monitoring: {health_exporter: "u:HSEKRIT7@host:9108"}', "monitoring.health_exporter", "no secret"),
    ('monitoring: {exporters: {node: "u:NSEKRIT8@host:9100"}}', "monitoring.exporters.node", "no secret"),
    ('worker: {autoscaling: {prometheus_url: "http://p:9090/?access_token=KSEKRIT9"}}',
     "worker.autoscaling.prometheus_url", "no secret"),
    ('health: {http: [{name: api, url: "https://x.example.com/health?token=CSEKRIT10"}]}', "health.http.0.url",
     "needs no secret"),
    ('health: {sinks: [{type: webhook, url: "https://hooks.example.com/x?token=WSEKRIT11"}]}',
     "health.sinks.0.url", "url_env"),
    ('health: {sinks: [{type: webhook, url: "https://hooks.slack.com/services/T0/B0/WSEKRIT12"}]}',
     "health.sinks.0.url", "url_env"),
]


@pytest.mark.parametrize("body,key,remedy", SEKRIT_URLS, ids=[k for _, k, _ in SEKRIT_URLS])
def test_a_url_setting_with_a_secret_is_refused_naming_the_key_not_the_secret(runner, root, body, key, remedy):
    line = _refused(runner, root, body, key)
    assert "SEKRIT" not in line, line
    assert remedy in line, line


def test_a_slack_sink_takes_url_env_only(runner, root):
    # a Slack incoming-webhook URL is its own secret, whatever it looks like
    line = _refused(runner, root, 'health: {sinks: [{type: slack, url: "https://hooks.slack.com/services/T0/B0/'
                    'SLACKSEKRIT"}]}', "health.sinks.0")
    assert "SLACKSEKRIT" not in line and "url_env" in line
    line = _refused(runner, root, 'health: {sinks: [{type: slack, url: "http://127.0.0.1:9/slack"}]}',
                    "health.sinks.0")
    assert "url_env" in line


def test_urls_without_secrets_still_load(runner, root, monkeypatch):
    """A guard, not a fault: these loaded before the change and must still."""
    _write(root, 'router_url: https://router.example.com\n'
                 '    backup: {repository: "s3://bucket/prefix"}\n'
                 '    monitoring: {alertmanager_url: "http://am:9093", exporters: {node: "host:9100"}}\n'
                 '    health: {http: [{name: api, url: "https://x.example.com/health?full=1"}],\n'
                 '             sinks: [{type: webhook, url: "http://am.internal:9093/api/v2/alerts"},\n'
                 '                     {type: slack, url_env: SLACK_URL}]}')
    result = runner.invoke(app, ["config", "show", "--env", "staging"])
    assert result.exit_code == 0, result.output
    assert "https://x.example.com/health?full=1" in result.output


def test_config_show_masks_what_could_still_carry_a_secret(runner, root):
    # a generic webhook's path may be its token; free text may hold a URL with a password
    _write(root, 'description: "db at postgresql://app:DSEKRIT1@db/x"\n'
                 '    health: {sinks: [{type: webhook, url: "https://hooks.example.com/hooks/catch/TSEKRIT2"}]}')
    for args in (["config", "show", "--env", "staging"], ["config", "show", "--env", "staging", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "SEKRIT" not in result.output, result.output
    doc = json.loads(runner.invoke(app, ["config", "show", "--env", "staging", "--json"]).output)
    assert doc["health"]["sinks"][0]["url"].startswith("https://hooks.example.com/")


# --- H3: NaN, infinities, ranges ---------------------------------------------------------------

BAD_NUMBERS = [
    ("thresholds: {cpu_percent: .nan}", "thresholds.cpu_percent"),
    ("thresholds: {cpu_percent: -5}", "thresholds.cpu_percent"),
    ("thresholds: {memory_percent: 150}", "thresholds.memory_percent"),
    ("thresholds: {error_rate_percent: .nan}", "thresholds.error_rate_percent"),
    ("thresholds: {response_time_ms: .inf}", "thresholds.response_time_ms"),
    ("thresholds: {queue_depth: -1}", "thresholds.queue_depth"),
    ("thresholds: {backup_age_hours: .inf}", "thresholds.backup_age_hours"),
    ("thresholds: {replication_lag_seconds: -.inf}", "thresholds.replication_lag_seconds"),
    ("deploy: {drain_timeout: .inf}", "deploy.drain_timeout"),
    ("deploy: {scale_down_delay: 1e400}", "deploy.scale_down_delay"),
    ("deploy: {ready_timeout: 1e300}", "deploy.ready_timeout"),
    ("deploy: {max_p95_ms: .inf}", "deploy.max_p95_ms"),
    ("worker: {replicas: 99999999999999999999999}", "worker.replicas"),
    ("worker: {replicas: 2147483648}", "worker.replicas"),
    ("worker: {autoscaling: {target_per_pod: .inf}}", "worker.autoscaling.target_per_pod"),
    ("worker: {autoscaling: {max_replicas: 2147483648}}", "worker.autoscaling.max_replicas"),
    ("deploy: {preview_replicas: 2147483648}", "deploy.preview_replicas"),
    ('monitoring: {scrape_interval: "-5s"}', "monitoring.scrape_interval"),
    ('monitoring: {scrape_interval: "0s"}', "monitoring.scrape_interval"),
    ('monitoring: {scrape_interval: "fast"}', "monitoring.scrape_interval"),
    ("dr: {rpo: 0h}", "dr.rpo"),
    ("health: {timeout: .inf}", "health.timeout"),
    ("health: {timeouts: {postgres: .nan}}", "health.timeouts.postgres"),
    ("health: {alerts: {reminder_minutes: .inf}}", "health.alerts.reminder_minutes"),
    ("health: {uploads: {oldest_incomplete_seconds: .inf}}", "health.uploads.oldest_incomplete_seconds"),
    ("health: {heartbeats: [{name: b, cron: '0 2 * * *', grace_minutes: .inf}]}", "health.heartbeats.0.grace_minutes"),
    ("health: {sinks: [{type: webhook, url_env: X, timeout: .inf}]}", "health.sinks.0.timeout"),
    ("health: {http: [{name: a, url: 'http://h/', timeout: .inf}]}", "health.http.0.timeout"),
]


@pytest.mark.parametrize("body,key", BAD_NUMBERS, ids=[b for b, _ in BAD_NUMBERS])
def test_a_number_out_of_range_is_refused_in_one_line(runner, root, body, key):
    _refused(runner, root, body, key)


def test_render_monitoring_never_writes_a_nan_threshold(runner, root, tmp_path):
    _write(root, "thresholds: {cpu_percent: .nan}")
    result = runner.invoke(app, ["render", "monitoring", "--env", "staging", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "thresholds.cpu_percent" in result.output


# --- H4: the health interval's floor -------------------------------------------------------------

def test_a_tiny_health_interval_is_refused(runner, root):
    from opsctl.health.settings import MIN_INTERVAL_S

    assert MIN_INTERVAL_S == 1.0
    _refused(runner, root, "health: {interval: 1e-9}", "health.interval")
    _refused(runner, root, "health: {interval: 0.5}", "health.interval")
    _write(root, "health: {interval: 1}")
    assert runner.invoke(app, ["config", "show", "--env", "staging"]).exit_code == 0


def test_a_tiny_interval_option_is_refused_before_a_sweep(runner, root):
    """Breaker 38 H4: --interval 1e-9 made the monitor's schedule spin for ever at 100 % CPU."""
    for given in ("1e-9", "0.5"):
        result = runner.invoke(app, ["health", "--mode", "continuous", "--interval", given])
        assert result.exit_code == 2 and "--interval must be 1 to 86400 seconds" in result.stderr, result.output
