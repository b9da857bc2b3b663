"""Alert sinks: Slack incoming webhook, PagerDuty Events API v2, Alertmanager-format webhook, SMTP.

Each sink turns an Alert into its service's own format and sends it with its own timeout,
a TOTAL deadline for the whole exchange (`checks.http.bounded_request`): a receiver that
trickles its answer a byte at a time is cut at `timeout`, not waited for forever.
The e-mail sink speaks TLS (STARTTLS by default, or implicit TLS) and verifies the server's
certificate; plain SMTP only when the sink says `security: none`, so a password never
crosses the network in clear by default.
Secrets (webhook URLs, the PagerDuty routing key, SMTP passwords) are read from the
environment variables opsctl.yaml names, when the sink is built, and never appear in what
`describe()` or an error message says: URLs are redacted and exception texts scrubbed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import threading
from dataclasses import dataclass

from opsctl.errors import UsageError
from opsctl.health.alerting import Alert
from opsctl.redact import redact, scrub

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
_PD_SEVERITY = {"CRITICAL": "critical", "WARNING": "warning", "UNKNOWN": "error", "OK": "info"}


def _env(var: str, sink: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise UsageError(f"alert sink '{sink}' needs ${var}; export it (opsctl.yaml only names it)")
    return value


@dataclass
class Sender:
    """A ready alert sink: `type` slack, pagerduty, webhook or email; `target` the URL or
    host:port (may hold a secret: never printed); `secret` what else must be scrubbed."""
    name: str
    type: str
    target: str  # secret-bearing: never printed
    settings: object
    secret: str | None = None

    def describe(self) -> str:
        """'type name -> target' with the target's secrets masked, for logs."""
        return f"{self.type} {self.name} -> {redact(self.target) if '://' in self.target else self.target}"

    def scrub(self, text: str) -> str:
        """`text` with this sink's secrets and any credentials masked."""
        return scrub(text, self.target, self.secret)

    def send(self, alert: Alert) -> None:
        """Deliver `alert` in the sink's own format. Raises on failure (HTTP status >= 300,
        SMTP errors, a server without STARTTLS when STARTTLS is required); resolves are skipped
        when the sink does not want them."""
        if alert.event == "resolve" and not self.settings.send_resolved:
            return
        if self.type == "email":
            return self._email(alert)
        from opsctl.health.checks.http import bounded_request

        body = {"slack": _slack_payload, "pagerduty": _pagerduty_payload,
                "webhook": _alertmanager_payload}[self.type](alert, self)
        resp = bounded_request("POST", self.target, json=body, timeout=self.settings.timeout)
        if resp.status_code >= 300:
            raise RuntimeError(f"HTTP {resp.status_code}")

    def announce(self, event) -> None:
        """Deliver an operation event (opsctl.health.notify.OperationEvent): Slack a message,
        PagerDuty a change event (Events API v2 `/v2/change/enqueue`: recorded on the service's
        timeline, never an incident), a webhook a CloudEvents 1.0 JSON document, e-mail a
        message. Raises on failure as `send` does; nothing is sent when the sink has
        `operations: false`."""
        if not self.settings.operations:
            return
        if self.type == "email":
            return self._mail(event.summary(), event.text())
        from opsctl.health.checks.http import bounded_request

        if self.type == "slack":
            url, body, headers = self.target, _slack_event_payload(event), {}
        elif self.type == "pagerduty":
            url, body, headers = _change_url(self.target), _pagerduty_change_payload(event, self), {}
        else:
            url, body = self.target, _cloudevent_payload(event)
            headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
        resp = bounded_request("POST", url, content=json.dumps(body).encode(), timeout=self.settings.timeout,
                               headers={"Content-Type": "application/json", **headers})
        if resp.status_code >= 300:
            raise RuntimeError(f"HTTP {resp.status_code}")

    def _email(self, alert: Alert) -> None:
        self._mail(alert.summary(), f"{alert.summary()}\n\ncheck: {alert.check} ({alert.kind})\n"
                                    f"value: {alert.value} {alert.unit}\nfailing since: {alert.started_at}\n"
                                    f"at: {alert.at}\ndedup key: {alert.dedup_key}\n")

    def _mail(self, subject: str, text: str) -> None:
        import smtplib
        from email.message import EmailMessage

        s = self.settings
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = subject[:200], s.sender, ", ".join(s.to)
        msg.set_content(text)
        context = ssl.create_default_context(cafile=s.ca_file) if s.security != "none" else None
        if s.security == "tls":
            smtp = smtplib.SMTP_SSL(timeout=s.timeout, context=context)
        else:
            smtp = smtplib.SMTP(timeout=s.timeout)
        # smtplib's timeout is per socket operation, like httpx's: a server trickling its
        # greeting or replies a byte at a time would hold the sink forever. A watchdog shuts
        # the socket down when the sink's timeout has passed in total.
        fired = threading.Event()  # set by the watchdog before it shuts the socket down
        watchdog = threading.Timer(s.timeout, _shut, args=(smtp, fired))
        watchdog.daemon = True
        watchdog.start()
        try:
            self._session(smtp, msg, context)
        except (OSError, smtplib.SMTPException) as exc:
            # the watchdog's own flag, not its thread's liveness: the session fails the moment
            # the socket is shut, while the watchdog's thread may still be alive
            if fired.is_set():
                raise TimeoutError(f"SMTP exchange with {s.smtp_host}:{s.smtp_port} not done within "
                                   f"{s.timeout:g}s in total; connection closed") from exc
            raise
        finally:
            watchdog.cancel()

    def _session(self, smtp, msg, context) -> None:
        s = self.settings
        smtp._host = s.smtp_host  # what SMTP(host) sets and connect() does not: TLS's server_hostname
        smtp.connect(s.smtp_host, s.smtp_port)
        with smtp:
            if s.security == "starttls":
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise RuntimeError(f"SMTP server {s.smtp_host}:{s.smtp_port} does not offer STARTTLS; nothing "
                                       "was sent (set security: tls for implicit TLS, or security: none on purpose)")
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username_env:
                smtp.login(_env(s.username_env, self.name), _env(s.password_env or "", self.name))
            smtp.send_message(msg)


def _shut(smtp, fired: threading.Event) -> None:
    """Shut an SMTP session's socket down from the watchdog thread: the blocked read fails
    (or returns the partial line it holds, and the next command fails). `fired` is set first,
    so the session's error handler knows the watchdog ended it."""
    fired.set()
    sock = getattr(smtp, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def build(settings) -> Sender:
    """A ready sender; a missing secret is a UsageError now, not a failed alert at 2 a.m."""
    if settings.type == "pagerduty":
        key = _env(settings.routing_key_env, settings.name)
        return Sender(settings.name, "pagerduty", settings.url or PAGERDUTY_URL, settings, key)
    if settings.type == "email":
        if settings.ca_file and not os.path.isfile(settings.ca_file):
            raise UsageError(f"alert sink '{settings.name}': ca_file {settings.ca_file} does not exist")
        password = None
        if settings.username_env:
            _env(settings.username_env, settings.name)
            password = _env(settings.password_env or "", settings.name)
        # the password is the secret scrubbed from any error text, like a webhook URL
        return Sender(settings.name, "email", f"{settings.smtp_host}:{settings.smtp_port}", settings, password)
    url = _env(settings.url_env, settings.name) if settings.url_env else settings.url
    return Sender(settings.name, settings.type, url, settings)


def _slack_text(value):
    """`value` (a payload: dicts, lists, strings) with every string's &, < and > escaped as Slack
    asks (api.slack.com/reference/surfaces/formatting#escaping): a check's message or an error
    text holding `<!channel>`, `<@U123>` or `<https://x|y>` would otherwise notify everyone or
    show as a link of its writer's choosing (breaker 50)."""
    if isinstance(value, str):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if isinstance(value, dict):
        return {k: _slack_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_slack_text(v) for v in value]
    return value


def _slack_payload(alert: Alert, _sender: Sender) -> dict:
    """Slack incoming-webhook JSON for `alert`: a text line and one colored attachment."""
    color = "good" if alert.event == "resolve" else ("danger" if alert.status == "CRITICAL" else "warning")
    return _slack_text({"text": alert.summary(),
            "attachments": [{"color": color, "fields": [
                {"title": "check", "value": alert.check, "short": True},
                {"title": "value", "value": f"{alert.value} {alert.unit}".strip(), "short": True},
                {"title": "since", "value": alert.started_at, "short": True}]}]})


def _pagerduty_payload(alert: Alert, sender: Sender) -> dict:
    """PagerDuty Events API v2 JSON: trigger or resolve on the alert's dedup key."""
    doc = {"routing_key": sender.secret, "dedup_key": alert.dedup_key,
           "event_action": "resolve" if alert.event == "resolve" else "trigger"}
    if alert.event != "resolve":
        doc["payload"] = {"summary": alert.summary()[:1024], "source": f"opsctl {alert.env}",
                          "severity": _PD_SEVERITY[alert.status], "component": alert.check,
                          "group": alert.env, "class": alert.kind,
                          "custom_details": {"value": alert.value, "unit": alert.unit, "message": alert.message,
                                             "failing_since": alert.started_at, "failures": alert.failures}}
    return doc


def _alertmanager_payload(alert: Alert, sender: Sender) -> dict:
    """Alertmanager's webhook_config body (version 4), one alert per message."""
    status = "resolved" if alert.event == "resolve" else "firing"
    labels = {"alertname": "OpsctlHealthCheck", "env": alert.env, "check": alert.check, "kind": alert.kind,
              "severity": alert.status.lower() if status == "firing" else "none"}
    annotations = {"summary": alert.summary(), "description": alert.message}
    fingerprint = hashlib.sha256(alert.dedup_key.encode()).hexdigest()[:16]
    return {"version": "4", "groupKey": f'{{}}:{{alertname="OpsctlHealthCheck", check="{alert.check}"}}',
            "truncatedAlerts": 0, "status": status, "receiver": sender.name,
            "groupLabels": {"alertname": "OpsctlHealthCheck", "check": alert.check},
            "commonLabels": labels, "commonAnnotations": annotations, "externalURL": "",
            "alerts": [{"status": status, "labels": labels, "annotations": annotations,
                        "startsAt": alert.started_at,
                        "endsAt": alert.at if status == "resolved" else "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": fingerprint}]}


def _change_url(events_url: str) -> str:
    """PagerDuty's change-events endpoint beside an Events API v2 URL:
    `https://events.pagerduty.com/v2/enqueue` -> `.../v2/change/enqueue` (same host, so a
    sink pointed at a proxy or a regional endpoint keeps it)."""
    base = events_url.rstrip("/")
    if base.endswith("/v2/enqueue"):
        return base[: -len("/v2/enqueue")] + "/v2/change/enqueue"
    from urllib.parse import urljoin

    return urljoin(base + "/", "/v2/change/enqueue")


def _slack_event_payload(event) -> dict:
    """Slack incoming-webhook JSON for an operation event: its summary line and one attachment
    (blue while running; at the end by its verdict: green success, red failure, yellow neither)."""
    colors = {"success": "good", "failure": "danger"}
    color = "#439FE0" if event.event == "start" else colors.get(str(event.verdict), "warning")
    fields = [{"title": "operation", "value": event.operation, "short": True},
              {"title": "subject", "value": event.subject or "-", "short": True}]
    if event.event == "end":
        fields += [{"title": "outcome", "value": f"{event.outcome} ({event.verdict})", "short": True},
                   {"title": "took", "value": f"{event.duration_seconds:.0f} s", "short": True}]
    if event.checks:
        fields.append({"title": "checks held", "value": ", ".join(event.checks), "short": False})
    return _slack_text({"text": event.summary(), "attachments": [{"color": color, "fields": fields}]})


def _pagerduty_change_payload(event, sender: Sender) -> dict:
    """PagerDuty Events API v2 change event (no severity, no dedup key: it never pages)."""
    return {"routing_key": sender.secret,
            "payload": {"summary": event.summary()[:1024], "timestamp": event.at,
                        "source": f"opsctl {event.env}", "custom_details": event.details()}}


def _cloudevent_payload(event) -> dict:
    """A CloudEvents 1.0 structured-mode document: type `io.opsctl.operation.started` or
    `.finished`, source `opsctl/<env>`, data the event's details."""
    return {"specversion": "1.0", "id": event.id, "source": f"opsctl/{event.env}",
            "type": f"io.opsctl.operation.{'started' if event.event == 'start' else 'finished'}",
            "subject": f"{event.operation} {event.subject}".strip(), "time": event.at,
            "datacontenttype": "application/json", "data": event.details()}
