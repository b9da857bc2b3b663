"""Breaker 50 (lead): what opsctl sends to Slack is text, never Slack's control sequences.

A check's message or an operation's error carries text opsctl did not write (an HTTP body, a
driver's error); in a Slack message `<!channel>` notifies everyone and `<https://x|y>` shows a
link of its writer's choosing. Slack asks senders to escape &, < and > (api.slack.com/reference/
surfaces/formatting#escaping); both Slack payloads (alerts, operation events) are checked here
as a real HTTP receiver gets them.
"""

from __future__ import annotations

from opsctl.health import sinks
from opsctl.health.alerting import Alert
from opsctl.health.notify import OperationEvent
from opsctl.health.settings import Sink
from tests.health.servers import Receiver

HOSTILE = "<!channel> pay at <https://evil.example/login|your bank> & <@U024BE7LH>"


def test_alerts_and_operation_events_reach_slack_escaped(monkeypatch):
    receiver = Receiver()
    monkeypatch.setenv("TEST_SLACK_URL", f"{receiver.url}/slack")
    try:
        sender = sinks.build(Sink(type="slack", url_env="TEST_SLACK_URL"))
        sender.send(Alert("trigger", "prod", "api", "http", "CRITICAL", HOSTILE, None, "", "2026-12-03T00:00:00Z",
                          "2026-12-03T00:00:05Z", 3))
        sender.announce(OperationEvent("end", "prod", "restore", "db", "2026-12-03T00:00:00Z",
                                       "2026-12-03T00:01:00Z", outcome="failed", error=HOSTILE))
        sent = receiver.at("/slack")
    finally:
        receiver.close()
    assert len(sent) == 2
    for doc in sent:
        text = repr(doc)
        assert "<!channel>" not in text and "<https://" not in text and "<@U024BE7LH>" not in text, doc
        assert "&lt;!channel&gt; pay at &lt;https://evil.example/login|your bank&gt; &amp; &lt;@U024BE7LH&gt;" \
            in doc["text"], doc["text"]
