import json
import re
import uuid

import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra import offline
from transcribe_infra.database import Database, DatabaseArgs

RDS = "aws:rds/instance:Instance"


def build(production: bool, identifier: str = "transcribe-test", read_replica: bool = False):
    def program():
        db = Database("db", DatabaseArgs(read_replica=read_replica, 
            identifier=identifier, subnet_ids=["subnet-a", "subnet-b", "subnet-c"],
            security_group_id="sg-db", kms_key_arn=KEY_ARN, instance_class="db.t4g.medium",
            allocated_storage=50, multi_az=production, deletion_protection=production,
            backup_retention_days=14 if production else 7, tags=TAGS))
        return {"endpoint": db.endpoint, "secret_arn": db.secret_arn, "instance_id": db.instance_id,
                "address": db.address, "replica_id": db.replica_id, "url": db.url}
    return run_component(program)


@pytest.fixture(scope="module")
def prod():
    return build(True)


@pytest.fixture(scope="module")
def replicated():
    return build(True, read_replica=True)


@pytest.fixture(scope="module")
def nonprod():
    return build(False)


def test_encrypted_private_postgres_with_generated_credentials(nonprod):
    db = nonprod.one(RDS).inputs
    assert db["engine"] == "postgres" and db["engineVersion"] == "17"
    assert db["storageEncrypted"] is True
    assert db["kmsKeyId"] == KEY_ARN
    assert db["publiclyAccessible"] is False
    assert db["vpcSecurityGroupIds"] == ["sg-db"]
    # generated here (RDS would rotate a managed one under the worker's URL), a Pulumi secret
    assert "manageMasterUserPassword" not in db
    secret, password = offline.unsecret(db["password"])
    assert secret and re.fullmatch(r"[A-Za-z0-9]{40}", password)
    assert db["performanceInsightsEnabled"] is True
    assert db["performanceInsightsKmsKeyId"] == KEY_ARN
    assert db["skipFinalSnapshot"] is False
    assert re.fullmatch(r"transcribe-test-final-[0-9a-f]{8}", db["finalSnapshotIdentifier"])
    assert db["copyTagsToSnapshot"] is True
    assert db["tags"]["environment"] == "test"


def test_private_subnets_and_parameter_group(nonprod):
    subnets = nonprod.one("aws:rds/subnetGroup:SubnetGroup").inputs
    assert subnets["subnetIds"] == ["subnet-a", "subnet-b", "subnet-c"]
    params = nonprod.one("aws:rds/parameterGroup:ParameterGroup").inputs
    assert params["family"] == "postgres17"
    values = {p["name"]: p["value"] for p in params["parameters"]}
    assert values["rds.force_ssl"] == "1"
    db = nonprod.one(RDS).inputs
    assert db["dbSubnetGroupName"] == "db-subnets" and db["parameterGroupName"] == "db-params"


def test_production_is_multi_az_protected_and_keeps_backups_longer(prod, nonprod):
    p, n = prod.one(RDS).inputs, nonprod.one(RDS).inputs
    assert (p["multiAz"], p["deletionProtection"], p["backupRetentionPeriod"]) == (True, True, 14)
    assert (n["multiAz"], n["deletionProtection"], n["backupRetentionPeriod"]) == (False, False, 7)
    assert p["applyImmediately"] is False and n["applyImmediately"] is True


def test_outputs_name_the_endpoint_and_the_secret(nonprod):
    assert nonprod.outputs["endpoint"] == "transcribe-test.c0ffee.eu-west-1.rds.amazonaws.com:5432"
    assert nonprod.outputs["secret_arn"] == "arn:aws:secretsmanager:eu-west-1:123456789012:db-credentials"


def test_the_credentials_secret_and_the_worker_url_hold_the_same_password(nonprod):
    password = offline.unsecret(nonprod.one(RDS).inputs["password"])[1]
    secret = nonprod.one("aws:secretsmanager/secret:Secret", "db-credentials").inputs
    assert secret["namePrefix"] == "transcribe-test/database-" and secret["kmsKeyId"] == KEY_ARN
    version = nonprod.one("aws:secretsmanager/secretVersion:SecretVersion", "db-credentials").inputs
    was_secret, text = offline.unsecret(version["secretString"])
    assert was_secret and json.loads(text) == {
        "engine": "postgres", "username": "transcribe", "password": password,
        "host": "transcribe-test.c0ffee.eu-west-1.rds.amazonaws.com", "port": 5432, "dbname": "transcribe"}
    assert nonprod.outputs["url"] == (f"postgresql://transcribe:{password}@transcribe-test.c0ffee.eu-west-1"
                                      ".rds.amazonaws.com:5432/transcribe?sslmode=require")
    assert nonprod.outputs["instance_id"] == "transcribe-test"


def test_backups_of_less_than_seven_days_are_refused():
    with pytest.raises(ValueError, match="at least 7 days"):
        DatabaseArgs(identifier="x", subnet_ids=[], security_group_id="sg", kms_key_arn=KEY_ARN,
                     instance_class="db.t4g.micro", allocated_storage=20, multi_az=False,
                     deletion_protection=False, backup_retention_days=3)


def test_final_snapshot_suffix_is_made_with_the_instance_and_replaced_with_it(nonprod):
    suffix = nonprod.one("random:index/randomId:RandomId").inputs
    assert suffix["byteLength"] == 4
    # the arguments whose change replaces an RDS instance: a new instance, a new final snapshot name
    assert suffix["keepers"] == {"identifier": "transcribe-test", "engine": "postgres", "db_name": "transcribe",
                                 "username": "transcribe", "kms_key_id": KEY_ARN}


@pytest.mark.integration
def test_destroying_a_recreated_stack_again_takes_a_final_snapshot_of_its_own(s3):
    """Two lifetimes of one stack (up, destroy, up, destroy) against moto's RDS: both destroys pass."""
    import boto3
    from botocore.exceptions import ClientError

    from opsctl.local import s3 as s3mod

    identifier = f"transcribe-t{uuid.uuid4().hex[:8]}"
    finals = [build(False, identifier).one(RDS).inputs["finalSnapshotIdentifier"] for _ in range(2)]
    assert finals[0] != finals[1]
    rds = boto3.client("rds", endpoint_url=s3.endpoint_url, region_name=s3mod.CREDENTIALS["AWS_DEFAULT_REGION"])

    def lifetime(final: str) -> None:
        rds.create_db_instance(DBInstanceIdentifier=identifier, Engine="postgres", DBInstanceClass="db.t4g.medium",
                               AllocatedStorage=50, MasterUsername="transcribe", MasterUserPassword="x" * 16)
        rds.delete_db_instance(DBInstanceIdentifier=identifier, SkipFinalSnapshot=False,
                               FinalDBSnapshotIdentifier=final)

    for final in finals:
        lifetime(final)
    kept = {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(DBInstanceIdentifier=identifier)["DBSnapshots"]}
    assert kept >= set(finals)
    # what a fixed name did on the second destroy (the instance is left behind, the stack half-destroyed)
    with pytest.raises(ClientError, match="DBSnapshotAlreadyExists"):
        lifetime(finals[0])
    rds.delete_db_instance(DBInstanceIdentifier=identifier, SkipFinalSnapshot=True)


def test_a_read_replica_failover_can_find_and_promote(replicated, nonprod):
    assert [r.name for r in nonprod.of_type(RDS)] == ["db-instance"] and nonprod.outputs["replica_id"] is None
    primary, replica = replicated.one(RDS, "db-instance").inputs, replicated.one(RDS, "db-replica").inputs
    assert replica["identifier"] == "transcribe-test-replica" == replicated.outputs["replica_id"]
    assert replica["replicateSourceDb"] == primary["identifier"] == "transcribe-test"
    assert replica["tags"] == {**TAGS, "Name": "transcribe-test-replica", "opsctl:role": "read-replica",
                               "opsctl:replica-of": "transcribe-test"}
    # private, encrypted and protected like the primary, in the primary's parameter group
    assert (replica["storageEncrypted"], replica["kmsKeyId"], replica["publiclyAccessible"]) == (True, KEY_ARN, False)
    assert replica["vpcSecurityGroupIds"] == ["sg-db"] and replica["parameterGroupName"] == "db-params"
    assert replica["deletionProtection"] is True and replica["instanceClass"] == primary["instanceClass"]
    assert replica["backupRetentionPeriod"] == 14  # promoted, it has point-in-time recovery at once
    assert replica["skipFinalSnapshot"] is True and "finalSnapshotIdentifier" not in replica
    assert replica["maintenanceWindow"] != primary["maintenanceWindow"]
    # what a replica inherits from its source must not be set on it
    assert not {"engine", "username", "dbName", "manageMasterUserPassword", "allocatedStorage"} & set(replica)
