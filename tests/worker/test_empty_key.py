"""An unset key variable hashed by the README's recipe never becomes a key anyone can send.

`printf %s "$KEY" | sha256sum` with KEY unset gives the SHA-256 of nothing; a worker that
took it accepted `Authorization: Bearer ` (an empty token) as a valid key.
"""

from __future__ import annotations

import hashlib

import pytest

from transcription_worker.config import ConfigError, Settings, load_settings

EMPTY = hashlib.sha256(b"").hexdigest()
REAL = hashlib.sha256(b"sk-real").hexdigest()


def test_the_hash_of_an_empty_key_is_refused_at_start_up(monkeypatch):
    monkeypatch.setenv("WORKER_API_KEY_HASHES", f"{REAL},{EMPTY}")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "WORKER_API_KEY_HASHES" in message and "empty key" in message
    assert EMPTY not in message and REAL not in message  # key material is never echoed


@pytest.mark.parametrize("token", ["", " ", "\t"])
def test_an_empty_token_is_never_a_key(token):
    settings = Settings.model_construct(api_key_hashes=[EMPTY, REAL])  # as if validation had let it in
    assert settings.key_id_for(token.strip()) is None
    assert Settings(api_key_hashes=[REAL]).key_id_for("sk-real") == REAL[:12]


@pytest.mark.parametrize("name, value", [("UPLOAD_LEASE_SECONDS", "inf"), ("JOB_LEASE_SECONDS", "nan"),
                                         ("UPLOAD_EXPIRY_SECONDS", "1e300"), ("PART_BODY_TIMEOUT_SECONDS", "inf"),
                                         ("CPU_THREADS", "100000")])
def test_a_setting_out_of_range_is_one_line_at_start_up(monkeypatch, name, value):
    """Reviewer 39 R8: inf passed validation and failed later (a start-up traceback, a dead job
    keeper, a 500 for every upload)."""
    monkeypatch.setenv(f"WORKER_{name}", value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert f"invalid WORKER_{name}" in str(err.value)
