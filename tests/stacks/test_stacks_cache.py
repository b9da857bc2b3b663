import json

import pulumi
import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra import offline
from transcribe_infra.cache import Cache, CacheArgs

REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"


def build(failover: bool):
    def program():
        cache = Cache("cache", CacheArgs(
            replication_group_id="transcribe-test", subnet_ids=["subnet-a", "subnet-b"],
            security_group_id="sg-cache", kms_key_arn=KEY_ARN, auth_token=pulumi.Output.secret("t" * 64),
            node_type="cache.t4g.small", automatic_failover=failover, tags=TAGS))
        return {"endpoint": cache.primary_endpoint, "secret": cache.auth_secret_arn}
    return run_component(program)


@pytest.fixture(scope="module")
def prod():
    return build(True)


@pytest.fixture(scope="module")
def nonprod():
    return build(False)


def test_encrypted_at_rest_and_in_transit_with_auth(nonprod):
    group = nonprod.one(REDIS).inputs
    assert group["engine"] == "redis"
    assert group["atRestEncryptionEnabled"] is True
    assert group["kmsKeyId"] == KEY_ARN
    assert group["transitEncryptionEnabled"] is True
    assert offline.unsecret(group["authToken"]) == (True, "t" * 64)  # encrypted in the state
    assert group["securityGroupIds"] == ["sg-cache"]
    assert group["port"] == 6379
    assert group["subnetGroupName"] == "transcribe-test"
    assert nonprod.one("aws:elasticache/subnetGroup:SubnetGroup").inputs["subnetIds"] == ["subnet-a", "subnet-b"]


def test_automatic_failover_across_azs_only_in_production(prod, nonprod):
    p, n = prod.one(REDIS).inputs, nonprod.one(REDIS).inputs
    assert (p["automaticFailoverEnabled"], p["multiAzEnabled"], p["numCacheClusters"]) == (True, True, 2)
    assert (n["automaticFailoverEnabled"], n["multiAzEnabled"], n["numCacheClusters"]) == (False, False, 1)


def test_the_token_is_kept_in_secrets_manager_with_the_endpoint(nonprod):
    secret = nonprod.one("aws:secretsmanager/secret:Secret").inputs
    assert secret["kmsKeyId"] == KEY_ARN and secret["name"] == "transcribe-test/redis"
    secret_string = nonprod.one("aws:secretsmanager/secretVersion:SecretVersion").inputs["secretString"]
    is_secret, text = offline.unsecret(secret_string)
    assert is_secret
    body = json.loads(text)
    assert body == {"host": nonprod.outputs["endpoint"], "port": 6379, "tls": True, "auth_token": "t" * 64}
    assert nonprod.outputs["secret"].startswith("arn:aws:secretsmanager:")
