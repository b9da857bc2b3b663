"""`opsctl restore --to-time` on a cloud environment: RDS's own point-in-time restore into a
new, named instance (moto's RDS control plane), refused for times outside the window."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from opsctl.cli import app
from pitr_support import delete_rds_instances, rds_environment, record_windows


@pytest.fixture
def cloud(ops_root, s3):
    rds = rds_environment(ops_root, s3, "pitr-db")
    yield rds
    delete_rds_instances(rds)


def _created(rds) -> dt.datetime:
    return rds.describe_db_instances(DBInstanceIdentifier="pitr-db")["DBInstances"][0]["InstanceCreateTime"] \
        .astimezone(dt.timezone.utc)


def test_rds_restore_to_time_creates_a_new_instance(cloud, runner):
    when = _created(cloud)  # the earliest time it has (moto's instance is seconds old)
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", when.isoformat().replace("+00:00", "Z"),
                            "--target-instance", "pitr-db-restored", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    new = cloud.describe_db_instances(DBInstanceIdentifier="pitr-db-restored")["DBInstances"][0]
    assert new["DBInstanceStatus"] == "available" and new["DBInstanceClass"] == "db.r6g.large"
    assert doc["endpoint"] == f"{new['Endpoint']['Address']}:{new['Endpoint']['Port']}"
    tags = {t["Key"]: t["Value"] for t in cloud.list_tags_for_resource(ResourceName=new["DBInstanceArn"])["TagList"]}
    assert tags == {"opsctl:restored-from": "pitr-db", "opsctl:restore-time": when.isoformat()}
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", "latest", "--target-instance", "pitr-db-now"])
    assert r.exit_code == 0, r.output
    assert "pitr-db-now" in r.output


@pytest.mark.parametrize("args, message", [
    (["--to-time", "2999-01-01T00:00:00Z", "--target-instance", "x-new"], "latest restorable time"),
    (["--to-time", "2020-01-01T00:00:00Z", "--target-instance", "x-new"], "earliest restorable time"),
    (["--to-time", "latest", "--target-instance", "pitr-db"], "already exists"),
    (["--to-time", "latest"], "--target-instance"),
    (["--to-lsn", "0/3000060", "--target-instance", "x-new"], "--to-time"),
    (["--to-time", "yesterday", "--target-instance", "x-new"], "not a time"),
])
def test_rds_restore_refusals_make_nothing(cloud, runner, args, message):
    r = runner.invoke(app, ["restore", "--env", "cloud", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert [i["DBInstanceIdentifier"] for i in cloud.describe_db_instances()["DBInstances"]] == ["pitr-db"]


def test_rds_restore_to_time_runs_inside_the_operation_window(cloud, runner, monkeypatch):
    """NOTIFICATIONS contract: the PITR restore is announced as operation "restore"."""
    seen = record_windows(monkeypatch, note=lambda kw: kw.get("checks"))
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", "latest", "--target-instance", "pitr-db-win"])
    assert r.exit_code == 0, r.output
    assert seen == [("cloud", "restore", "succeeded", None)]


def test_rds_restore_refuses_a_time_before_the_instance_existed(cloud, runner):
    """Breaker F7: a time inside the retention days but before the instance was created went
    to AWS (exit 1 there); it is refused first, in one line naming the bound."""
    created = _created(cloud)
    when = (created - dt.timedelta(hours=2)).replace(microsecond=0)
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", when.isoformat().replace("+00:00", "Z"),
                            "--target-instance", "pitr-db-early", "--yes"])
    assert r.exit_code == 2, r.output
    bound = (created + dt.timedelta(microseconds=999_999)).replace(microsecond=0)
    assert f"is before pitr-db's earliest restorable time {bound.isoformat()} (when it was created); " \
           "choose a later --to-time or 'latest'" in " ".join(r.stderr.split())
    assert r.stderr.count("\n") == 1, r.stderr
    assert [i["DBInstanceIdentifier"] for i in cloud.describe_db_instances()["DBInstances"]] == ["pitr-db"]


def _automated_backups(monkeypatch, answer) -> None:
    """RDS answering describe_db_instance_automated_backups with `answer` (parsed response, or
    an error code), which moto does not model."""
    from types import SimpleNamespace

    from opsctl.pitr import rds

    real = rds.client

    def client(env):
        c = real(env)
        status = 400 if isinstance(answer, str) else 200
        parsed = {"Error": {"Code": answer, "Message": "no"}} if status == 400 else answer
        c.meta.events.register("before-call.rds.DescribeDBInstanceAutomatedBackups",
                               lambda **kw: (SimpleNamespace(status_code=status, headers={}), parsed))
        return c
    monkeypatch.setattr(rds, "client", client)


def test_rds_restore_refuses_a_time_before_rds_restore_window(cloud, runner, monkeypatch):
    """RDS's own RestoreWindow.EarliestTime, when it answers one, bounds the window too."""
    created = _created(cloud)
    earliest = created + dt.timedelta(seconds=30)
    _automated_backups(monkeypatch, {"DBInstanceAutomatedBackups": [
        {"DBInstanceIdentifier": "pitr-db", "RestoreWindow": {"EarliestTime": earliest}}]})
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", created.isoformat(),
                            "--target-instance", "pitr-db-early", "--yes"])
    assert r.exit_code == 2, r.output
    assert f"earliest restorable time {(earliest + dt.timedelta(microseconds=999_999)).replace(microsecond=0).isoformat()} " \
           "(RDS's restore window)" in " ".join(r.stderr.split())
    assert [i["DBInstanceIdentifier"] for i in cloud.describe_db_instances()["DBInstances"]] == ["pitr-db"]


def test_rds_restore_goes_on_when_rds_does_not_say_its_restore_window(cloud, runner, monkeypatch):
    _automated_backups(monkeypatch, "AccessDenied")
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", _created(cloud).isoformat(),
                            "--target-instance", "pitr-db-ok", "--yes"])
    assert r.exit_code == 0, r.output


def test_the_earliest_restorable_time_is_the_retention_window_for_an_old_instance():
    from opsctl.pitr.rds import earliest_restorable

    class Rds:
        def describe_db_instance_automated_backups(self, **kw):
            return {"DBInstanceAutomatedBackups": []}

    now = dt.datetime.now(dt.timezone.utc)
    earliest, bound = earliest_restorable(Rds(), {"DBInstanceIdentifier": "old",
                                                  "InstanceCreateTime": now - dt.timedelta(days=300)}, 7)
    assert bound == "the start of its 7-day recovery window"
    assert abs((earliest - (now - dt.timedelta(days=7))).total_seconds()) < 60


@pytest.mark.parametrize("name, problem", [
    ("Bad_Name", "holds a character other than a letter, digit or hyphen"),
    ("1abc", "does not begin with a letter"),
    ("a--b", "holds two hyphens in a row"),
    ("abc-", "ends with a hyphen"),
    ("a" * 64, "is 64 characters long"),
])
def test_rds_restore_refuses_a_target_instance_rds_would_refuse_before_any_aws_call(cloud, runner, monkeypatch,
                                                                                   name, problem):
    """Breaker F10: AWS's InvalidParameterValue (exit 1) came back for a name RDS refuses; the
    rule is checked first, in one line, with nothing announced or asked of AWS."""
    from opsctl.pitr import rds

    seen = record_windows(monkeypatch)
    monkeypatch.setattr(rds, "client", lambda env: pytest.fail("an AWS call for a name RDS refuses"))
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", "latest", "--target-instance", name, "--yes"])
    assert r.exit_code == 2, r.output
    said = " ".join(r.stderr.split())
    assert f"--target-instance {name!r} {problem}; an RDS instance name is 1 to 63 letters" in said, said
    assert "choose another --target-instance" in said
    assert r.stderr.count("\n") == 1, r.stderr
    assert seen == []
    assert [i["DBInstanceIdentifier"] for i in cloud.describe_db_instances()["DBInstances"]] == ["pitr-db"]


def test_rds_restore_takes_capitals_and_63_characters_in_a_target_instance(cloud, runner):
    """RDS stores the name lowercase: capitals are no fault."""
    name = "Pitr-Db-" + "x" * 55
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", "latest", "--target-instance", name, "--yes"])
    assert r.exit_code == 0, r.output
    assert name.lower() in [i["DBInstanceIdentifier"] for i in cloud.describe_db_instances()["DBInstances"]]


def test_backup_list_shows_the_rds_instances_recoverable_window(cloud, runner, ops_root, tmp_path):
    """Breaker 64 F12: `backup list` on a kubernetes environment showed no recoverable window
    ("pitr": null) though RDS keeps 7 days of point-in-time recovery; the issue asks for the
    window per environment. It is RDS's own: its earliest to its latest restorable time, the
    instance named; an instance that can't be asked is a note, the listing still exit 0."""
    import yaml

    doc = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    doc["environments"]["cloud"]["backup"] = {"repository": f"file://{tmp_path / 'repo'}"}
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["backup", "list", "--env", "cloud", "--json"])
    assert r.exit_code == 0, r.output
    pitr = json.loads(r.stdout)["pitr"]
    (w,) = pitr["windows"]
    # moto's latest restorable time is its clock's now: the window ends at the one RDS answered
    latest = cloud.describe_db_instances(DBInstanceIdentifier="pitr-db")["DBInstances"][0]["LatestRestorableTime"]
    assert dt.datetime.fromisoformat(w["from"]) == _created(cloud) and pitr["rds_instance"] == "pitr-db"
    assert _created(cloud) < dt.datetime.fromisoformat(w["to"]) <= latest.astimezone(dt.timezone.utc)
    assert w["to"] == pitr["newest_restorable"] and "7-day retention" in w["ends_at"]
    r = runner.invoke(app, ["backup", "list", "--env", "cloud"], env={"COLUMNS": "80"})
    assert r.exit_code == 0 and "point-in-time recovery:" in r.output and "RDS pitr-db" in r.output, r.output
    doc["environments"]["cloud"]["database"]["rds_instance"] = "not-there"
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["backup", "list", "--env", "cloud", "--json"])
    assert r.exit_code == 0, r.output
    pitr = json.loads(r.stdout)["pitr"]
    assert pitr["windows"] == [] and "RDS instance not-there (database.rds_instance) does not exist" in pitr["note"]


@pytest.mark.parametrize("args", [["restore", "--to-time", "latest", "--target-instance", "pitr-db-new", "--yes"],
                                  ["dr", "drill"], ["backup", "list"]])
def test_an_aws_profile_not_configured_is_bad_input(ops_root, runner, monkeypatch, tmp_path, args):
    """Breaker 65 G8: aws.profile naming a profile this machine lacks exited 1 with botocore's
    text; it is a setting to fix: one line, exit 2 (endpoints.aws_session)."""
    import yaml

    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-config"))
    doc = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    doc["environments"]["cloud"] = {"platform": "kubernetes", "aws": {"profile": "not-here"},
                                    "database": {"rds_instance": "pitr-db"},
                                    "backup": {"repository": "s3://opsctl-backups/cloud"}}
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, [*args, "--env", "cloud"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "AWS profile 'not-here'" in lines[0] and "not configured" in lines[0], r.output
