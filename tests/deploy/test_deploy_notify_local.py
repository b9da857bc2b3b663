"""A deploy tells people and holds the alerts it causes (issue 23), on the embedded platform.

The core deploy (opsctl.deploy.operation.deploy, what `opsctl deploy` and the runbook step
call) runs inside opsctl.health.notify.operation_window: a webhook sink gets its start and
end events, and a continuous health monitor, paging after a single failure, does not page
for the color being replaced while it drains: its checks are held by the maintenance window.
"""

from __future__ import annotations

import copy
import threading

import httpx
import pytest
import yaml

from opsctl import httpclient
from opsctl.deploy import operation
from opsctl.deploy.model import Outcome, other
from opsctl.health import monitor, silences
from opsctl.health.model import Status
from tests.health.servers import Receiver
from tests.samples import variant

pytestmark = pytest.mark.slow


@pytest.fixture
def watched(local_platform, monkeypatch):
    """Environment `watched`: the session platform's `local` settings plus a webhook sink
    (a real HTTP receiver on 127.0.0.1) and alerts after one failure. The ops root's
    opsctl.yaml is restored afterwards."""
    receiver = Receiver()
    monkeypatch.setenv("OPSCTL_TEST_HOOK_URL", f"{receiver.url}/hook")
    path = local_platform.root / "opsctl.yaml"
    original = path.read_text()
    doc = yaml.safe_load(original)
    env = copy.deepcopy(doc["environments"]["local"])
    env["health"] = {"sinks": [{"type": "webhook", "url_env": "OPSCTL_TEST_HOOK_URL"}],
                     "alerts": {"failure_threshold": 1, "reminder_minutes": None}}
    doc["environments"]["watched"] = env
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(local_platform.root)
    local_platform.up()
    try:
        yield local_platform, receiver
    finally:
        path.write_text(original)
        receiver.close()


class SlowUpload:
    """A transcription whose upload is held half-way until released: a request in flight on
    a color keeps its process draining (alive, its listener closed) when it is stopped."""

    def __init__(self, base_url: str):
        request = httpx.Request("POST", f"{base_url}/v1/audio/transcriptions",
                                files={"file": ("hello.wav", variant("hello", 7), "audio/wav")},
                                data={"model": "whisper-1"})
        self.body, self.url = request.read(), request.url
        self.headers = {"Content-Type": request.headers["Content-Type"], "Content-Length": str(len(self.body))}
        self.in_flight, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _chunks(self):
        yield self.body[:256]
        self.in_flight.set()  # httpx asks for the next chunk once the first was written
        self.release.wait(60)
        yield self.body[256:]

    def _send(self) -> None:
        try:
            httpclient.post(self.url, content=self._chunks(), headers=self.headers, timeout=120)
        except httpx.HTTPError:
            pass  # the drain may end with the process stopped: the answer is not the point

    def start(self) -> None:
        self.thread.start()
        assert self.in_flight.wait(30)


def test_a_deploy_sends_its_events_and_the_monitor_holds_the_replaced_color(watched):
    platform, receiver = watched
    project = platform.project()
    env = project.env("watched")
    old = operation.status(project, "watched")["active_color"]
    old_held = threading.Event()  # a sweep saw the old color's check fail while the window held it
    seen: list[tuple[str, str]] = []  # every failing check the window held

    def on_sweep(result, alerts, next_at):
        for r in result.results:
            if r.status != Status.OK and r.name in result.silenced:
                seen.append((r.name, r.message))
                if r.name == f"worker-{old}":
                    old_held.set()

    stop = threading.Event()
    out: list = []
    watcher = threading.Thread(target=lambda: out.append(monitor.watch(
        project, env, interval=0.1, only=["worker-*"], on_sweep=on_sweep, stop=stop)), daemon=True)
    watcher.start()

    upload = SlowUpload(operation.status(project, "watched")["colors"][old].url)
    steps: list[tuple[str, str]] = []

    def progress(step) -> None:
        steps.append((step.name, str(step.status)))
        if step.name == "scale down" and step.status == "running":
            upload.start()  # in flight on the old color when the delay ends and it is stopped
            threading.Thread(target=lambda: (old_held.wait(9), upload.release.set()), daemon=True).start()

    try:
        result = operation.deploy(project, "watched", "worker:notified", progress=progress)
    finally:
        upload.release.set()
        stop.set()
        watcher.join(60)

    assert result.record.outcome == Outcome.PROMOTED and result.record.to_color == other(old)
    assert result.stopped == [old]
    assert ("scale down", "ok") in steps
    # the replaced color failed its check during the deploy, and the window held it ...
    assert old_held.is_set(), seen
    # ... so the monitor, paging after one failure, paged for nothing
    (watch,) = out
    assert watch.sweeps > 0 and watch.alerts == []
    assert silences.active(project, "watched") == []  # the window closed with the deploy

    hook = receiver.at("/hook")
    events = [b for b in hook if b.get("specversion") == "1.0"]
    assert [e["type"] for e in events] == ["io.opsctl.operation.started", "io.opsctl.operation.finished"]
    assert events[0]["subject"] == "deploy worker:notified"
    assert events[0]["data"]["checks_held"] == ["worker-*", "metrics-*"]
    assert events[1]["data"]["outcome"] == "promoted" and events[1]["data"]["error"] is None
    assert [b for b in hook if b.get("version") == "4"] == []  # no alert reached the sink


def test_a_refused_operation_still_ends_its_window(watched):
    """Nothing to abort: a usage error, and the end event says `failed` with the reason."""
    platform, receiver = watched
    project = platform.project()
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match="nothing to abort"):
        operation.abort(project, "watched")
    events = [b for b in receiver.at("/hook") if b.get("specversion") == "1.0"]
    assert [e["type"] for e in events] == ["io.opsctl.operation.started", "io.opsctl.operation.finished"]
    assert events[1]["data"]["outcome"] == "failed" and "nothing to abort" in events[1]["data"]["error"]
    assert silences.active(project, "watched") == []
