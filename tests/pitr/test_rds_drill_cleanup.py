"""Issue 22 review (break 10, RDS): a drill whose wait for its scratch instance fails (WaiterError)
or is cancelled (Ctrl-C, CI's SIGTERM) deletes the scratch instance `<rds>-drill-<time>`, and a
drill killed outright leaves a record the next drill removes its instance by."""
from __future__ import annotations

import pytest

from opsctl.cli import app
from pitr_support import delete_rds_instances, rds_environment


@pytest.fixture
def cloud(ops_root, s3):
    rds = rds_environment(ops_root, s3, "cleanup-db")
    yield rds
    delete_rds_instances(rds, "cleanup-db")


def _scratch(rds) -> list[str]:
    return [i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]
            if i["DBInstanceIdentifier"].startswith("cleanup-db-drill-")]


@pytest.mark.parametrize("fault", ["waiter", "cancel"])
def test_a_drill_failing_or_cancelled_while_waiting_deletes_its_scratch_instance(cloud, runner, monkeypatch,
                                                                                 fault, tmp_path):
    from botocore.exceptions import WaiterError
    from botocore.waiter import Waiter

    def wait(self, **kw):
        if fault == "cancel":
            raise KeyboardInterrupt  # CI's SIGTERM (sigterm_as_interrupt) during the wait
        raise WaiterError(name="DBInstanceAvailable", reason="Waiter encountered a terminal failure state",
                          last_response={})

    monkeypatch.setattr(Waiter, "wait", wait)
    prom = tmp_path / "drill.prom"
    r = runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json", "--metrics-file", str(prom)])
    assert r.exit_code != 0
    assert not _scratch(cloud), "scratch instance left behind"
    assert 'opsctl_dr_drill_success{env="cloud"} 0' in prom.read_text()


def test_the_next_drill_deletes_the_instance_a_killed_drill_left(cloud, runner, ops_root):
    """A drill killed (kill -9) during its wait: its record names the instance; the next drill,
    before its own restore, deletes it."""
    import json
    import subprocess

    from opsctl.pitr import drill
    from botocore.waiter import Waiter

    class Killed(BaseException):
        pass

    def die(self, **kw):
        raise Killed  # no cleanup: a BaseException the drill does not handle stands for kill -9

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Waiter, "wait", die)
        # killed outright: neither the delete nor the record's removal run
        mp.setattr(drill, "_delete_rds", lambda *a, **k: None)
        mp.setattr(drill._Record, "close", lambda self: None)
        with pytest.raises(Killed):
            drill.drill(*_cloud_env(ops_root))
    assert len(_scratch(cloud)) == 1
    (record,) = (ops_root / ".opsctl" / "drill").glob("cloud-*.json")
    doc = json.loads(record.read_text())
    gone = subprocess.Popen(["true"])
    gone.wait()
    record.write_text(json.dumps({**doc, "opsctl_pid": gone.pid}))  # its process is gone, as after kill -9
    r = runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json"])
    assert r.exit_code == 0, r.output
    assert not _scratch(cloud)


def _cloud_env(root):
    from opsctl.config import load_project

    project = load_project(root)
    return project, project.env("cloud")


def test_a_drill_of_a_long_named_instance_names_its_scratch_instance_within_rds_limit(ops_root, s3, runner):
    """RDS takes 63 characters and `<rds>-drill-<time>` adds 21: a source of 60 made a name RDS
    refused (exit 1); the source's part is cut so it fits (opsctl.pitr.rds.check_instance_identifier)."""
    import json

    source = "long-" + "x" * 55
    rds = rds_environment(ops_root, s3, source)
    try:
        r = runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json"])
        assert r.exit_code in (0, 1), r.output  # 1: a missed target, not a failed drill
        doc = json.loads(r.stdout)
        assert doc["error"] is None and doc["torn_down"], doc
        assert doc["scratch"].startswith("long-" + "x" * 37 + "-drill-") and len(doc["scratch"]) == 63
        assert [i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]
                if i["DBInstanceIdentifier"].startswith("long-")] == [source]
    finally:
        delete_rds_instances(rds, "long-")
