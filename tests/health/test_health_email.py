"""The e-mail sink against a real SMTP server (aiosmtpd on 127.0.0.1): one message when a
check fires and one when it resolves, sent after logging in with the credentials the
environment variables hold; a wrong password is a failed delivery whose text never shows
the password."""

from __future__ import annotations

import email
import socket
from email import policy

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from opsctl.config import load_project
from opsctl.health import monitor
from tests.health.servers import ScriptedServer

pytestmark = pytest.mark.integration

PASSWORD = "smtp-pa55-w0rd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    def __init__(self):
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.logins: list[tuple[bytes, bool]] = []

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"alerts", PASSWORD.encode())
        self.logins.append((getattr(auth_data, "login", b""), ok))
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.fixture
def smtp():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=box.authenticate,
                            auth_require_tls=False, auth_exclude_mechanism=["LOGIN"])  # smtplib uses PLAIN
    controller.start()
    yield box, controller.port
    controller.stop()


def _project(tmp_path, target_url: str, port: int):
    sink = {"type": "email", "name": "oncall", "smtp_host": "127.0.0.1", "smtp_port": port,
            "username_env": "TEST_SMTP_USER", "password_env": "TEST_SMTP_PASSWORD",
            "sender": "opsctl@example.org", "to": ["oncall@example.org", "sre@example.org"]}
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": {
            "http": [{"name": "target", "url": f"{target_url}/readyz", "conditions": ["[STATUS] == 200"]}],
            "sinks": [sink]}}}}))
    return load_project(tmp_path)


def test_fire_and_resolve_arrive_as_mail_after_login(tmp_path, smtp, monkeypatch):
    box, port = smtp
    monkeypatch.setenv("TEST_SMTP_USER", "alerts")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", PASSWORD)
    target = ScriptedServer([500, 500, 500, 200, 200])
    try:
        project = _project(tmp_path, target.url, port)
        out = monitor.watch(project, project.env("ci"), interval=0.05, iterations=5, only=["target"])
    finally:
        target.close()
    assert [a["event"] for a in out.alerts] == ["trigger", "resolve"]
    assert [(d["sink"], d["ok"]) for d in out.deliveries] == [("oncall", True), ("oncall", True)]
    assert box.logins == [(b"alerts", True), (b"alerts", True)]
    assert [(sender, to) for sender, to, _ in box.messages] == [
        ("opsctl@example.org", ["oncall@example.org", "sre@example.org"])] * 2
    fired, resolved = (msg for _, _, msg in box.messages)
    assert fired["Subject"].startswith("[FIRING") and resolved["Subject"].startswith("[RESOLVED")
    assert fired["To"] == "oncall@example.org, sre@example.org"
    body = fired.get_content()
    assert "check: target (http)" in body and "dedup key: opsctl/ci/target" in body


def test_a_wrong_password_is_a_failed_delivery_that_never_shows_it(tmp_path, smtp, monkeypatch):
    box, port = smtp
    monkeypatch.setenv("TEST_SMTP_USER", "alerts")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "not-" + PASSWORD)
    target = ScriptedServer([500])
    try:
        project = _project(tmp_path, target.url, port)
        out = monitor.watch(project, project.env("ci"), interval=0.05, iterations=3, only=["target"])
    finally:
        target.close()
    assert [a["event"] for a in out.alerts] == ["trigger"]
    (delivery,) = out.deliveries
    assert not delivery["ok"] and "535" in delivery["error"] and PASSWORD not in delivery["error"]
    assert box.messages == [] and box.logins == [(b"alerts", False)]
