"""`opsctl failover` finds the replica the program declares: its tags, in moto's RDS, without Pulumi state."""

import uuid

import pytest
from stacks_support import STACKS, offline

from opsctl.errors import UsageError
from opsctl.infra import replica
from transcribe_infra import database


def test_the_program_and_opsctl_agree_on_the_replica_tags():
    assert (database.ROLE_TAG, database.REPLICA_OF_TAG) == (replica.ROLE_TAG, replica.REPLICA_OF_TAG)


@pytest.mark.integration
def test_the_read_replica_the_stack_declares_is_found_by_its_tags(s3):
    """The production program's replica, created in moto's RDS as declared, found without Pulumi state."""
    import boto3

    from opsctl.local import s3 as s3mod

    declared = offline.run_stack(STACKS, "production").one("aws:rds/instance:Instance", "transcribe-production-replica")
    suffix = uuid.uuid4().hex[:6]  # the session's moto is shared: names of our own
    primary = f"{declared.inputs['replicateSourceDb']}-{suffix}"
    tags = {**declared.inputs["tags"], replica.REPLICA_OF_TAG: primary}
    rds = boto3.client("rds", endpoint_url=s3.endpoint_url, region_name=s3mod.CREDENTIALS["AWS_DEFAULT_REGION"])
    for name in (primary, f"other-{suffix}"):
        rds.create_db_instance(DBInstanceIdentifier=name, Engine="postgres", DBInstanceClass="db.t4g.medium",
                               AllocatedStorage=50, MasterUsername="transcribe", MasterUserPassword="x" * 16,
                               BackupRetentionPeriod=7)
    assert replica.find_read_replica(rds, primary) is None
    # a replica of another database, and an untagged one of ours, are not it
    rds.create_db_instance_read_replica(DBInstanceIdentifier=f"other-{suffix}-replica",
                                        SourceDBInstanceIdentifier=f"other-{suffix}",
                                        Tags=[{"Key": replica.ROLE_TAG, "Value": replica.REPLICA_ROLE},
                                              {"Key": replica.REPLICA_OF_TAG, "Value": f"other-{suffix}"}])
    rds.create_db_instance_read_replica(DBInstanceIdentifier=f"adhoc-{suffix}", SourceDBInstanceIdentifier=primary)
    identifier = f"{declared.inputs['identifier']}-{suffix}"
    rds.create_db_instance_read_replica(DBInstanceIdentifier=identifier, SourceDBInstanceIdentifier=primary,
                                        Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    found = replica.find_read_replica(rds, primary)
    assert (found.identifier, found.source, found.status) == (identifier, primary, "available")
    assert found.arn.endswith(f":db:{identifier}")
    rds.create_db_instance_read_replica(DBInstanceIdentifier=f"second-{suffix}", SourceDBInstanceIdentifier=primary,
                                        Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    with pytest.raises(UsageError, match=f"2 instances are tagged opsctl:replica-of={primary}"):
        replica.find_read_replica(rds, primary)
