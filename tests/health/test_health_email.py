"""The e-mail sink against a real SMTP server (aiosmtpd on 127.0.0.1): one message when a
check fires and one when it resolves, sent over STARTTLS after logging in with the
credentials the environment variables hold; a wrong password is a failed delivery whose
text never shows the password; a server without STARTTLS gets neither the password nor the
message unless the sink says `security: none` (issue 20 §4)."""

from __future__ import annotations

import email
import socket
import ssl
from email import policy

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from opsctl.config import load_project
from opsctl.health import monitor
from tests.health.servers import ScriptedServer, self_signed

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
        self.encrypted: list[bool] = []  # per message and per login: did it cross TLS?

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        self.encrypted.append(session.ssl is not None)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"alerts", PASSWORD.encode())
        self.logins.append((getattr(auth_data, "login", b""), ok))
        self.encrypted.append(session.ssl is not None)
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.fixture
def certificate(tmp_path):
    cert, key, _ = self_signed(tmp_path)
    return cert, key


def _controller(box: Mailbox, certificate=None) -> Controller:
    """aiosmtpd offering STARTTLS with `certificate`, or a plain server without it."""
    tls = None
    if certificate:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*certificate)
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=box.authenticate,
                            auth_require_tls=False, auth_exclude_mechanism=["LOGIN"],  # smtplib uses PLAIN
                            tls_context=tls)
    controller.start()
    return controller


@pytest.fixture
def smtp(certificate):
    box = Mailbox()
    controller = _controller(box, certificate)
    yield box, controller.port
    controller.stop()


@pytest.fixture
def plain_smtp(certificate):  # the sink still names the CA file; the server offers no TLS
    box = Mailbox()
    controller = _controller(box)
    yield box, controller.port
    controller.stop()


def _project(tmp_path, target_url: str, port: int, **sink_settings):
    sink = {"type": "email", "name": "oncall", "smtp_host": "127.0.0.1", "smtp_port": port,
            "username_env": "TEST_SMTP_USER", "password_env": "TEST_SMTP_PASSWORD",
            "sender": "opsctl@example.org", "to": ["oncall@example.org", "sre@example.org"],
            "ca_file": str(tmp_path / "localhost.crt"), **sink_settings}
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
    assert box.encrypted == [True] * 4   # both logins and both messages went over STARTTLS


def test_a_server_without_starttls_gets_neither_password_nor_message(tmp_path, plain_smtp, monkeypatch):
    box, port = plain_smtp
    monkeypatch.setenv("TEST_SMTP_USER", "alerts")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", PASSWORD)
    target = ScriptedServer([500])
    try:
        project = _project(tmp_path, target.url, port)
        out = monitor.watch(project, project.env("ci"), interval=0.05, iterations=3, only=["target"])
    finally:
        target.close()
    (delivery,) = out.deliveries
    assert not delivery["ok"] and "does not offer STARTTLS" in delivery["error"]
    assert box.logins == [] and box.messages == []


def test_plain_smtp_only_when_the_sink_says_so(tmp_path, plain_smtp, monkeypatch):
    box, port = plain_smtp
    monkeypatch.setenv("TEST_SMTP_USER", "alerts")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", PASSWORD)
    target = ScriptedServer([500])
    try:
        project = _project(tmp_path, target.url, port, security="none")
        out = monitor.watch(project, project.env("ci"), interval=0.05, iterations=3, only=["target"])
    finally:
        target.close()
    assert [d["ok"] for d in out.deliveries] == [True]
    assert box.logins == [(b"alerts", True)] and box.encrypted == [False, False]


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


def test_operation_events_reach_an_email_sink_only_when_it_asks(tmp_path, smtp, monkeypatch):
    """Issue 23: e-mail sinks get operation start/end events only with `operations: true`."""
    from opsctl.health.notify import operation_window

    box, port = smtp
    monkeypatch.setenv("TEST_SMTP_USER", "alerts")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", PASSWORD)
    quiet = _project(tmp_path, "http://127.0.0.1:9", port)
    with operation_window(quiet, "ci", "drill", "scratch restore") as window:
        pass
    assert box.messages == [] and window.deliveries == []
    (tmp_path / "opsctl.yaml").unlink()
    asked = _project(tmp_path, "http://127.0.0.1:9", port, operations=True)
    with pytest.raises(RuntimeError):
        with operation_window(asked, "ci", "restore", "backup 20261130T0200Z") as window:
            raise RuntimeError(f"restore failed; smtp password {PASSWORD} leaked?")
    subjects = [msg["Subject"] for _, _, msg in box.messages]
    assert subjects[0] == "[STARTED] ci: restore backup 20261130T0200Z (checks held: postgres)"  # kubernetes: no wal archive check
    assert subjects[1].startswith("[FAILED] ci: restore backup 20261130T0200Z after ")
    body = box.messages[1][2].get_content()
    assert "outcome: failed" in body and "operation: restore" in body
    assert PASSWORD not in body and PASSWORD not in window.error   # a sink's secret is masked everywhere
    assert [d["ok"] for d in window.deliveries] == [True, True] and box.encrypted == [True] * 4
