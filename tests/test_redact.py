"""The one redaction step: passwords in URLs and conninfo never survive into output."""

import pytest

from opsctl.redact import credentials, redact, scrub


@pytest.mark.parametrize("text, secret", [
    ('invalid URI query parameter: "postgresql://postgres:Pa55@w0rd@127.0.0.1:5432/x?ssl=z"', "Pa55@w0rd"),
    ("connection to server failed: host=db password='a secret' user=app", "a secret"),
    ("host=db password=hunter2 dbname=x", "hunter2"),
    ("Error 111 connecting to redis://:tok3n@cache:6379/0.", "tok3n"),
    ("https://user:pw%40x@example.com/path?token=abc&x=1", "pw%40x"),
    ("GET https://example.com/hook?token=abc123 returned 404", "abc123"),
])
def test_credentials_masks_every_form(text, secret):
    out = credentials(text)
    assert secret not in out
    assert "***" in out


def test_credentials_keeps_what_says_which_connection():
    out = credentials("could not connect to postgresql://app:pw@db.internal:5432/transcribe")
    assert out == "could not connect to postgresql://app:***@db.internal:5432/transcribe"


def test_redact_and_scrub_hide_a_known_secret():
    hook = "https://hooks.slack.com/services/T0/B0/XyZ"
    assert redact(hook) == "https://hooks.slack.com/***"
    assert scrub(f"POST {hook} failed", hook) == "POST https://hooks.slack.com/*** failed"
    assert credentials(None) == ""
