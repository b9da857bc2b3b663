"""Issue 20 on the Kubernetes driver (kmock), as a fresh reviewer broke it:

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
        cluster.server.objects[LEASES, NS, "opsctl-deploy"].patch({"spec": {"renewTime": stale}})

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
