"""Issue 20 on the Kubernetes driver (kmock), as a fresh reviewer broke it:

- instant rollback never switches to a preview a killed deploy left (same version, other
  settings, preview size): the interrupted deploy is reaped first, the standby must be the
  release that passed analysis;
- fencing: a deploy that stalled past its Lease and lost it to another deploy changes nothing
  when it wakes (no switch, no scale-down, no record), and wait_ready checks the Deployment
  runs the release this deploy applied;
- `kubernetes.api_allowed_cidrs` refuses any set of ranges that covers the whole internet
  when collapsed (opsctl.yaml, the stack's config check and the policy rule).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_kubernetes_driver import (  # noqa: F401  (fixtures)
    ApiServer, DEPLOYMENTS, IMAGE, LEASES, NS, OPSCTL_YAML, cluster)

kmock = [pytest.mark.asyncio, pytest.mark.kmock(cls=ApiServer)]

REPO = Path(__file__).parents[2]


@kmock[0]
@kmock[1]
async def test_rollback_never_switches_to_a_preview_a_killed_deploy_left(cluster):
    from opsctl.deploy.lease import micro_time

    (cluster.root / "opsctl.yaml").write_text(
        OPSCTL_YAML.replace("ready_timeout: 3", "ready_timeout: 120, preview_replicas: 1"))
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0", "--no-wait")).exit_code == 0
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")).exit_code == 0
    # blue: 1.0.0, 3 replicas, warm standby; green: 1.1.0 active
    cluster.controller.paused = True
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "deploy", "--image", f"{IMAGE}:1.0.0", "--set",
                             "beam_size=1", "--env", "prod", "--no-wait"], cwd=cluster.root,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            h = cluster.history()
            if len(h) == 3 and h[-1]["steps"] and h[-1]["steps"][-1]["name"] == "wait ready":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the deploy never reached wait ready")
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
    stale = micro_time(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
    cluster.server.objects[LEASES, NS, "opsctl-deploy"].patch({"spec": {"renewTime": stale, "leaseDurationSeconds": 1}})
    cluster.controller.paused = False  # the killed deploy's preview becomes ready later
    await asyncio.sleep(1)
    result = await cluster.opsctl("rollback", "--no-wait")
    assert result.exit_code == 0, result.output
    active = cluster.obj("v1/services", "transcription-worker")["spec"]["selector"]["app.kubernetes.io/color"]
    blue = cluster.obj(DEPLOYMENTS, "transcription-worker-blue")
    # traffic may go to blue only if blue is the analysed 1.0.0 at full size
    assert not (active == "blue" and blue["spec"]["replicas"] < 3), \
        f"traffic switched to the killed deploy's {blue['spec']['replicas']}-replica, never-analysed preview"
    killed = [r for r in cluster.history() if r["settings"].get("beam_size") == "1"][-1]
    assert killed["outcome"] == "interrupted"


@kmock[0]
@kmock[1]
async def test_a_deploy_that_lost_its_lease_changes_nothing_when_it_wakes(cluster):
    from opsctl.deploy.lease import micro_time

    (cluster.root / "opsctl.yaml").write_text(OPSCTL_YAML.replace("ready_timeout: 3", "ready_timeout: 120"))
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0", "--no-wait")).exit_code == 0
    cluster.controller.broken.add(f"{IMAGE}:1.1.0")  # A's release never becomes ready
    a = subprocess.Popen([sys.executable, "-m", "opsctl", "deploy", "--image", f"{IMAGE}:1.1.0", "--env", "prod",
                          "--no-wait"], cwd=cluster.root, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(1200):  # A holds the Lease and waits for its preview
            h = cluster.history()
            if h[-1]["version"] == "1.1.0" and h[-1]["steps"] and h[-1]["steps"][-1]["name"] == "wait ready":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("A never reached wait ready")
        a.send_signal(signal.SIGSTOP)  # A stalls (suspend); its Lease expires, as time would
        stale = micro_time(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
        cluster.server.objects[LEASES, NS, "opsctl-deploy"].patch({"spec": {"renewTime": stale, "leaseDurationSeconds": 1}})

        b = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.2.0", "--no-wait")  # B takes over
        assert b.exit_code == 0, b.output
        before = [(r["version"], r["outcome"]) for r in cluster.history()]
        assert before[-1] == ("1.2.0", "promoted")
    finally:
        a.send_signal(signal.SIGCONT)
    out, _ = await asyncio.to_thread(a.communicate, timeout=180)
    after = [(r["version"], r["to_color"], r["outcome"]) for r in cluster.history()]
    green_image = cluster.obj(DEPLOYMENTS, "transcription-worker-green")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert a.returncode == 1, out.decode()[-600:]
    assert b"lost the deploy lease" in out or b"another deploy changed it" in out, out.decode()[-600:]
    # A no longer holds the lock: it must not record or change anything
    assert green_image == f"{IMAGE}:1.2.0"
    assert ("1.1.0", "green", "promoted") not in after, f"A recorded its never-ready release as promoted: {after}"
    assert after[-1][0] == "1.2.0", f"history's last deploy is no longer B's: {after}"


SPLIT_OPEN = [["0.0.0.0/1", "128.0.0.0/1"], ["2000::/4", "3000::/4"],  # all global unicast IPv6
              # everything public, leaving out only the private 10/8: still the whole internet
              ["1.0.0.0/8", "2.0.0.0/7", "4.0.0.0/6", "8.0.0.0/7", "11.0.0.0/8", "12.0.0.0/6", "16.0.0.0/4",
               "32.0.0.0/3", "64.0.0.0/2", "128.0.0.0/1"]]


def _project(tmp_path, cidrs):
    import yaml

    from opsctl.config import load_project

    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"staging": {
        "platform": "kubernetes", "kubernetes": {"api_allowed_cidrs": cidrs}}}}))
    return load_project(tmp_path)


@pytest.mark.parametrize("cidrs", SPLIT_OPEN)
def test_opsctl_yaml_refuses_ranges_that_together_open_the_api_to_the_internet(tmp_path, cidrs):
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match="opens? the cluster API to the whole internet"):
        _project(tmp_path, cidrs)


def test_opsctl_yaml_keeps_named_ranges(tmp_path):
    assert _project(tmp_path, ["203.0.113.0/24", "0.0.0.0/1", "2001:db8::/32"]).env("staging")


@pytest.mark.parametrize("cidrs", SPLIT_OPEN)
def test_the_stack_and_its_policy_refuse_a_split_open_api(cidrs):
    import pulumi_aws as aws

    from tests.stacks.stacks_support import run_component
    from transcribe_infra import policy
    from transcribe_infra.cluster import check_api_cidrs

    with pytest.raises(ValueError, match="opens? the cluster API to the whole internet"):
        check_api_cidrs(cidrs)
    check_api_cidrs(["203.0.113.0/24", "0.0.0.0/1"])  # half of IPv4 is not all of it

    def program(public):
        aws.eks.Cluster("eks", role_arn="arn:aws:iam::123456789012:role/eks", vpc_config={
            "subnet_ids": ["subnet-a"], "endpoint_private_access": True, "endpoint_public_access": True,
            "public_access_cidrs": public})

    found = [str(v) for v in policy.check(run_component(lambda: program(cidrs)), production=False) if "private-api-endpoint" in str(v)]
    assert len(found) == 1 and f"admits {', '.join(cidrs)};" in found[0], found
    narrow = policy.check(run_component(lambda: program(["203.0.113.0/24"])), production=False)
    assert not [v for v in narrow if "private-api-endpoint" in str(v)]


@kmock[0]
@kmock[1]
@pytest.mark.parametrize("command", ["abort", "rollback"])
async def test_a_known_good_color_scaled_to_zero_is_brought_back_before_traffic_returns(cluster, command):
    from tests.deploy.test_kubernetes_driver import _kill_after_switch, _replicas

    await _kill_after_switch(cluster, "1.1.0")  # traffic on green 1.1.0, no verdict; blue 1.0.0 known-good
    cluster.server.objects[DEPLOYMENTS, NS, "transcription-worker-blue"].patch({"spec": {"replicas": 0}})
    doc = __import__("json").loads((await cluster.opsctl("status", "--json")).stdout)
    assert doc["known_good"]["color"] == "blue" and doc["known_good_warm"] is False
    result = await cluster.opsctl(command, "--json", *(["--no-wait"] if command == "rollback" else []))
    assert result.exit_code == 0, result.output
    assert cluster.selector_color("transcription-worker") == "blue"
    assert _replicas(cluster, "blue") == 3  # back at the active size before the switch, not a dead color
    blue = cluster.obj(DEPLOYMENTS, "transcription-worker-blue")
    assert blue["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:1.0.0"
