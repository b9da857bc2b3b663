"""Issue 20 (kill at any instant), second fresh review (BREAKER20b), on the deploy core:

- a deploy whose post-promotion analysis FAILED and that was killed while bringing back or
  switching back its known-good color is finished by the next command as a switch back: a
  failed verdict is final, never re-judged (and promoted) by resuming;
- an instant rollback killed just after its switch keeps the color it left warm for
  deploy.scale_down_delay, as a finished one does: a promoted record's standby is never stopped
  at once for want of `standby_until`.

A small in-memory driver stands in for the platform: what is tested is the record logic of
opsctl.deploy.bluegreen (the drivers' behaviour has its own tests).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from unittest import mock

from opsctl.config import Environment
from opsctl.deploy import analysis, bluegreen
from opsctl.deploy.model import ColorState, DeployRecord, Outcome, Step, StepStatus


class Driver:
    """Records in a list, the router a field, both colors running and ready."""

    def __init__(self, history, active):
        self.h, self.active, self.stopped = history, active, []

    @contextmanager
    def lock(self):
        yield

    def history(self):
        return list(self.h)

    def save(self, r):
        self.h = [r if x.id == r.id else x for x in self.h] + ([] if any(x.id == r.id for x in self.h) else [r])

    def active_color(self):
        return self.active

    def colors(self):
        return {"blue": ColorState("blue", "1.0", True, True), "green": ColorState("green", "2.0", True, True)}

    def switch(self, c):
        self.active = c

    def switch_size(self, c):
        return None

    def url(self, c):
        return f"http://{c}"

    def router_url(self):
        return "http://router"

    def wait_ready(self, c, t):
        pass

    def bring_up(self, *a):
        pass

    def scale(self, *a):
        pass

    def scale_down(self, c):
        self.stopped.append(c)


def _v1():
    return DeployRecord(env="local", strategy="blue-green", image="w:1.0", version="1.0", settings={},
                        to_color="blue", from_color=None, from_version=None, outcome=Outcome.PROMOTED,
                        steps=[Step("bring up", StepStatus.OK)])


def _failed_then_killed(last_step: str):
    return DeployRecord(env="local", strategy="blue-green", image="w:2.0", version="2.0", settings={},
                        to_color="green", from_color="blue", from_version="1.0", steps=[
                            Step("bring up", StepStatus.OK), Step("switch", StepStatus.OK),
                            Step("post-promotion analysis", StepStatus.FAILED, detail="error rate 40% > 1%"),
                            Step(last_step, StepStatus.RUNNING)])


def test_a_failed_post_promotion_verdict_is_final_when_the_deploy_is_resumed():
    for killed_in in ("bring back blue", "switch back"):
        driver = Driver([_v1(), _failed_then_killed(killed_in)], active="green")
        quiet = mock.Mock(ok=True, skipped=False, detail="error rate 0% (quiet now)")
        with mock.patch.object(analysis, "post_promotion", return_value=quiet) as judged:
            rec = bluegreen.settle(driver, Environment(name="local", platform="local"), bluegreen.Options())
        assert not judged.called, killed_in
        assert rec.outcome == Outcome.ROLLED_BACK, (killed_in, rec.reason)
        assert "error rate 40% > 1%" in rec.reason
        assert driver.active == "blue"
        assert "green" in driver.stopped  # the failed release is discarded
        assert [s.name for s in rec.steps].count("post-promotion analysis") == 1


def test_a_killed_instant_rollback_keeps_the_color_it_left_warm():
    v2 = DeployRecord(env="local", strategy="blue-green", image="w:2.0", version="2.0", settings={},
                      to_color="green", from_color="blue", from_version="1.0", outcome=Outcome.PROMOTED,
                      standby_until=time.time() + 600,
                      steps=[Step("bring up", StepStatus.OK), Step("switch", StepStatus.OK)])
    rb = DeployRecord(env="local", strategy="rollback", image="w:1.0", version="1.0", settings={},
                      to_color="blue", from_color="green", from_version="2.0",
                      steps=[Step("switch", StepStatus.RUNNING)])  # killed after the router moved
    driver = Driver([_v1(), v2, rb], active="blue")
    bluegreen.reap(driver)
    closed = driver.h[-1]
    assert closed.outcome == Outcome.PROMOTED
    assert closed.standby_until is not None and closed.standby_until > time.time()
    assert "green" not in driver.stopped
    bluegreen.reap(driver, force=True)  # forced (runbook finish-scale-down): stopped then
    assert driver.stopped == ["green"]


def test_a_promoted_record_without_a_deadline_keeps_its_standby_warm():
    v2 = DeployRecord(env="local", strategy="blue-green", image="w:2.0", version="2.0", settings={},
                      to_color="green", from_color="blue", from_version="1.0", outcome=Outcome.PROMOTED,
                      standby_until=None, finished_at=bluegreen.now(),
                      steps=[Step("bring up", StepStatus.OK), Step("switch", StepStatus.OK)])
    driver = Driver([_v1(), v2], active="green")
    assert bluegreen.reap(driver) == []
    assert bluegreen.reap(driver, force=True) == ["blue"]
