"""Issue 20 (kill at any instant), second fresh review (BREAKER20b), on the deploy core:

- a deploy whose post-promotion analysis FAILED and that was killed while bringing back or
  switching back its known-good color is finished by the next command as a switch back: a
  failed verdict is final, never re-judged (and promoted) by resuming;
- an instant rollback killed just after its switch keeps the color it left warm for
  deploy.scale_down_delay, as a finished one does: a promoted record's standby is never stopped
  at once for want of `standby_until`;
- the Kubernetes deploy Lease expires as client-go's leader election judges it, by a holder's
  record unchanged for the duration on the reader's monotonic clock, never by comparing the
  holder's renewTime with the reader's clock (clock skew).
- (breaker 50 G5) an analysis that fails to reach a verdict (it raised) is a failed verdict:
  before the switch the deploy fails with the router untouched, after it traffic goes back.

A small in-memory driver stands in for the platform: what is tested is the record logic of
opsctl.deploy.bluegreen (the drivers' behaviour has its own tests).
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from contextlib import contextmanager
from unittest import mock

import pytest

from opsctl.config import Environment
from opsctl.deploy import analysis, bluegreen
from opsctl.deploy import lease as lease_mod
from opsctl.errors import OperationFailed
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


class _Coordination:
    """read/create/patch (JSON patch with atomic `test`) of one Lease, as the API server does;
    `on_read` runs before each read (a live holder renewing, say)."""

    def __init__(self):
        self.obj, self.on_read = None, None

    def read_namespaced_lease(self, name, ns):
        if self.on_read is not None:
            self.on_read()
        return copy.deepcopy(self.obj)

    def create_namespaced_lease(self, ns, body):
        self.obj = copy.deepcopy(body)
        return body

    def patch_namespaced_lease(self, name, ns, ops, _content_type=None):
        new = copy.deepcopy(self.obj)
        for op in ops:
            key = op["path"].split("/")[-1]
            if op["op"] == "test":
                if new["spec"].get(key) != op["value"]:
                    return None  # rejected
            else:
                new["spec"][key] = op["value"]
        self.obj = new
        return new


def _call(fn, *a, missing_ok=False, conflict_ok=False, rejected_ok=False, **kw):
    return fn(*a, **kw)


def _skewed(minutes: float):
    """The lease module's clock shifted by `minutes` (a holder whose NTP is off)."""
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)

    class Skewed(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return at

    return mock.patch.object(lease_mod.dt, "datetime", Skewed)


def test_a_renewing_holder_whose_clock_runs_slow_keeps_its_lease():
    api = _Coordination()
    a = lease_mod.Lease(api, "ns", "prod", 2, call=_call)
    with _skewed(-2):  # its renewTime reads two minutes in the past to everyone else
        a.acquire()

    def a_renews():  # A's renewal thread, on time, with its slow clock
        with _skewed(-2):
            api.obj["spec"]["renewTime"] = lease_mod.micro_time()  # a new value each time

    api.on_read = a_renews
    b = lease_mod.Lease(api, "ns", "prod", 2, call=_call)
    with pytest.raises(OperationFailed, match="another deploy is running"):
        b.acquire()
    assert api.obj["spec"]["holderIdentity"] == a.me


def test_a_lease_nobody_renews_is_taken_after_its_duration_as_observed_here():
    api = _Coordination()
    a = lease_mod.Lease(api, "ns", "prod", 1, call=_call)
    with _skewed(-5):  # killed long ago (or its clock ran slow): expired by our clock
        a.acquire()
    reads = []
    api.on_read = lambda: reads.append(time.monotonic())
    b = lease_mod.Lease(api, "ns", "prod", 1, call=_call)
    b.acquire()  # watched one duration without a change on the monotonic clock: the holder is gone
    assert api.obj["spec"]["holderIdentity"] == b.me
    assert api.obj["spec"]["leaseTransitions"] == 1
    assert len(reads) > 2  # it watched, re-reading, before taking over


def test_a_lease_live_by_the_readers_clock_is_refused_at_once():
    api = _Coordination()
    a = lease_mod.Lease(api, "ns", "prod", 60, call=_call)
    a.acquire()
    with pytest.raises(OperationFailed, match="another deploy is running"):
        lease_mod.Lease(api, "ns", "prod", 60, call=_call).acquire()
    assert api.obj["spec"]["holderIdentity"] == a.me


def _deploy_analysed_by(post_promotion, raises):
    """(env, driver, the exception) of deploying w:2.0 over 1.0 on blue with a passing
    pre-promotion analysis and `post_promotion` as the post-promotion analysis' side effect;
    the deploy must raise `raises`."""
    from opsctl.deploy.model import Release

    env = Environment(name="local", platform="local")
    driver = Driver([_v1()], active="blue")
    ready = mock.Mock(ok=True, skipped=False, detail="transcribed the sample")
    with mock.patch.object(analysis, "pre_promotion", return_value=ready), \
            mock.patch.object(analysis, "post_promotion", side_effect=post_promotion):
        with pytest.raises(raises) as said:
            bluegreen.deploy(driver, env, Release("w:2.0", {}), bluegreen.Options())
    return env, driver, said.value


def test_ctrl_c_in_the_post_promotion_analysis_is_no_verdict_promote_finishes_it():
    """Breaker 42 R14: Ctrl-C (or SIGTERM) during the post-promotion analysis recorded it FAILED
    ("interrupted"), so `promote` then switched back without analysing, where after a kill -9 it
    finishes the analysis. The step is `interrupted`, the record unresolved, the exit line says
    where traffic is; the next command judges the release."""
    from opsctl.errors import Interrupted

    env, driver, said = _deploy_analysed_by(KeyboardInterrupt, Interrupted)
    assert "traffic is on green (2.0)" in str(said) and "'opsctl promote' finishes the analysis" in str(said)
    rec = driver.h[-1]
    assert rec.outcome == Outcome.IN_PROGRESS and driver.active == "green"
    assert [(s.name, s.status) for s in rec.steps][-1] == ("post-promotion analysis", StepStatus.INTERRUPTED)
    passed = mock.Mock(ok=True, skipped=False, detail="error rate 0%, p95 900 ms")
    with mock.patch.object(analysis, "post_promotion", return_value=passed) as judged:
        rec = bluegreen.settle(driver, env, bluegreen.Options())
    assert judged.called and rec.outcome == Outcome.PROMOTED, rec.reason
    assert driver.active == "green"


def test_status_lists_a_deploy_its_killed_process_left_as_interrupted():
    """Breaker 42 R17: `status` said above that the deploy was interrupted and listed it below as
    `in-progress`."""
    from opsctl.deploy import status as st

    killed = DeployRecord(env="local", strategy="blue-green", image="w:2.0", version="2.0", settings={},
                          to_color="green", from_color="blue", from_version="1.0",
                          steps=[Step("bring up", StepStatus.RUNNING)])
    driver = Driver([_v1(), killed], active="blue")
    driver.name, driver.deploy_running = "fake", lambda: False
    doc = st.status(driver)
    assert "was interrupted before the switch" in doc["notice"]
    assert [d["outcome"] for d in doc["deploys"]] == ["in-progress (interrupted)", "promoted"]
    driver.deploy_running = lambda: True  # a deploy that runs is in progress
    assert st.status(driver)["deploys"][0]["outcome"] == "in-progress"


@pytest.mark.parametrize("crash", [ValueError("Expecting value: line 1 column 1 (char 0)"), AttributeError("'list'")])
def test_an_analysis_that_raises_after_the_switch_switches_back(crash):
    """Breaker 50 G5: post-promotion analysis raising (an answer it could not read) ended the
    deploy as "unexpected JSONDecodeError" with traffic left on the release whose canaries failed."""
    _env, driver, said = _deploy_analysed_by(crash, OperationFailed)
    assert "rolled back to 1.0" in str(said) and type(crash).__name__ in str(said)
    assert driver.active == "blue" and driver.h[-1].outcome == Outcome.ROLLED_BACK


def test_an_analysis_that_raises_before_the_switch_fails_the_deploy_untouched():
    from opsctl.deploy.model import Release

    env = Environment(name="local", platform="local")
    driver = Driver([_v1()], active="blue")
    with mock.patch.object(analysis, "pre_promotion", side_effect=ValueError("not JSON")):
        with pytest.raises(OperationFailed) as said:
            bluegreen.deploy(driver, env, Release("w:2.0", {}), bluegreen.Options())
    assert "pre-promotion analysis failed" in str(said.value) and "ValueError: not JSON" in str(said.value)
    assert driver.active == "blue" and driver.h[-1].outcome == Outcome.FAILED


def _promoted_green(standby_in: float) -> DeployRecord:
    return DeployRecord(env="local", strategy="blue-green", image="w:2.0", version="2.0", settings={},
                        to_color="green", from_color="blue", from_version="1.0", outcome=Outcome.PROMOTED,
                        standby_until=time.time() + standby_in, steps=[Step("switch", StepStatus.OK)])


def test_a_rollback_during_the_scale_down_wait_is_said_with_where_traffic_is():
    """Breaker 54 F6: promote ended "promoted: 2.0 on green — green serves 2.0", exit 0, after a
    rollback during its wait had moved traffic to blue. The result says it now."""
    from opsctl.deploy.operation import _wait_scale_down

    record = _promoted_green(0.5)
    driver = Driver([_v1(), record], active="green")
    newer = copy.deepcopy(_v1())
    newer.id, newer.strategy = "rollback-1", "rollback"

    def progress(step):  # the rollback comes while the wait runs
        if step.status == StepStatus.RUNNING or step.status is None:
            driver.h.append(newer)
            driver.active = "blue"

    result = _wait_scale_down(driver, record, progress)
    assert result.stopped == [] and "a newer deploy (rollback-1" in result.superseded
    assert result.superseded.endswith("traffic is on blue now"), result.superseded


def test_an_interrupt_during_the_scale_down_wait_says_what_was_done_and_what_runs():
    """A SIGTERM in the wait had ended with a bare "interrupted": the promote had succeeded and
    the old color keeps running."""
    from opsctl.deploy.operation import _wait_scale_down
    from opsctl.errors import Interrupted

    record = _promoted_green(60)
    driver = Driver([_v1(), record], active="green")
    with mock.patch.object(bluegreen, "finish_scale_down", side_effect=KeyboardInterrupt):
        with pytest.raises(Interrupted) as stopped:
            _wait_scale_down(driver, record, lambda step: None)
    said = str(stopped.value)
    assert "promoted 2.0 on green, which takes the traffic" in said and "blue keeps running" in said, said
