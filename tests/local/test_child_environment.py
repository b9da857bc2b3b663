"""What a server `opsctl local up` starts inherits from its environment (procs.spawn): every
setting, never a secret."""

from __future__ import annotations

import time

from opsctl.local import procs


def test_a_setting_whose_name_holds_a_secrets_word_reaches_the_server_and_a_secret_does_not(tmp_path, monkeypatch):
    """Breaker 57 F4: WORKER_PART_MEMORY_KEY_PERCENT=20 never reached the worker: 'KEY' in its
    name made it a secret. The worker's own settings (deploy.model.WORKER_SETTINGS) are settings
    by name, whatever their value's spacing; no other name with a secret's word gets through,
    whatever its value (breaker 58 G5: any name ending in a unit, holding a number, did)."""
    monkeypatch.setenv("WORKER_PART_MEMORY_KEY_PERCENT", " 20")  # the worker strips it (breaker 58 G6)
    monkeypatch.setenv("WORKER_RATE_LIMIT_PARTS_PER_MINUTE", "4")
    monkeypatch.setenv("OPSCTL_TOKEN_SECONDS", "s3cr3t-not-a-number")
    monkeypatch.setenv("OPSCTL_WORKER_API_KEY", "123456")
    monkeypatch.setenv("ROUTING_KEY_COUNT", "12ab")
    for name in ("MY_PASSWORD_BYTES", "STRIPE_API_KEY_MS", "GITHUB_TOKEN_COUNT"):  # breaker 58 G5: numbers
        monkeypatch.setenv(name, "424242")
    log = tmp_path / "env.log"
    pid = procs.spawn(["env"], log)
    deadline = time.monotonic() + 30
    while procs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = dict(line.split("=", 1) for line in log.read_text().splitlines() if "=" in line)
    assert seen.get("WORKER_PART_MEMORY_KEY_PERCENT") == " 20"
    assert seen.get("WORKER_RATE_LIMIT_PARTS_PER_MINUTE") == "4"
    assert not {"OPSCTL_TOKEN_SECONDS", "OPSCTL_WORKER_API_KEY", "ROUTING_KEY_COUNT", "MY_PASSWORD_BYTES",
                "STRIPE_API_KEY_MS", "GITHUB_TOKEN_COUNT"} & set(seen), seen
