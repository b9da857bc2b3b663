"""`--set` values are checked as the worker checks them at start-up (breaker 38 H7): a value the
worker refuses (out of its range, not one of its choices, empty) is refused by the deploy at
validate and by its dry run alike, one line, exit 2, before any driver is built; it was
planned, then failed the bring-up (exit 1)."""

from __future__ import annotations

import pytest

from opsctl.deploy.model import Release
from tests.deploy.test_deploy_input import _refused, drivers  # noqa: F401 (a fixture)


@pytest.mark.parametrize("setting, expected", [
    ("concurrency=0", "--set concurrency='0': the worker takes a whole number from 1 to 64"),
    ("concurrency=65", "from 1 to 64"),
    ("beam_size=-5", "--set beam_size='-5': the worker takes a whole number from 1 to 10"),
    ("beam_size=2.5", "a whole number from 1 to 10"),
    ("device=nope", "--set device='nope': the worker takes cpu or cuda"),
    ("device=", "--set device= is empty; give cpu or cuda, or leave the --set out"),
    ("device= ", "--set device= is empty"),
    ("log_level=loud", "debug, info, warning or error"),
    ("queue_size=-1", "0 or more"),
    ("api_key_hashes=abc", "SHA-256 hex digests"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_setting_the_worker_refuses_is_refused_before_anything(runner, drivers, setting, expected, dry_run):
    line = _refused(runner, ["deploy", "--image", "worker:1.0.1", "--set", setting, *(["--dry-run"] * dry_run)])
    assert expected in line, line
    assert drivers == []


@pytest.mark.parametrize("setting, value", [
    ("concurrency=64", "64"), ("beam_size= 1", "1"), ("device=cuda", "cuda"), ("cpu_threads=0", "0"),
    ("model_name=whisper-base", "whisper-base"), ("api_key_hashes=" + "ab" * 32, "ab" * 32),
])
def test_a_setting_the_worker_takes_is_kept(setting, value):
    key = setting.partition("=")[0]
    assert Release.parse("worker:1.0.1", [setting]).settings == {key: value}


PROBES = ["-1", "0", "1", "2.5", "10", "11", "64", "65", "100", "101", "1024", "1025", "87600", "87601",
          "2592000", "2592001", "1e3", "cpu", "cuda", "nope", "info", "loud", "nan", "inf"]


@pytest.mark.parametrize("key", ["device", "concurrency", "cpu_threads", "beam_size", "queue_size", "max_upload_mb",
                                 "rate_limit_rpm", "rate_limit_concurrent_uploads", "rate_limit_daily_audio_seconds",
                                 "log_level", "max_upload_total_mb", "max_part_mb", "part_memory_mb",
                                 "part_memory_key_percent", "part_body_timeout_seconds", "part_min_rate_kbps",
                                 "part_busy_rate_kbps", "upload_expiry_seconds", "upload_retention_hours",
                                 "upload_lease_seconds", "rate_limit_open_uploads", "rate_limit_parts_per_minute",
                                 "rate_limit_daily_upload_mb"])
def test_each_setting_is_judged_as_the_worker_itself_judges_it(monkeypatch, key):
    """WORKER_SETTINGS mirrors the worker's own Settings (a package opsctl does not import):
    for every probe value, --set and the worker's start-up agree on taking it or not."""
    from opsctl.deploy.model import worker_setting
    from opsctl.errors import UsageError
    from transcription_worker.config import ConfigError, load_settings

    for value in PROBES:
        monkeypatch.setenv(f"WORKER_{key.upper()}", value)
        try:
            load_settings()
            worker_takes = True
        except ConfigError:
            worker_takes = False
        try:
            worker_setting(key, value)
            deploy_takes = True
        except UsageError:
            deploy_takes = False
        assert deploy_takes == worker_takes, (key, value, worker_takes)
