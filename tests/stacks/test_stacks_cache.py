import json

import pulumi
import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra import offline
from transcribe_infra.cache import Cache, CacheArgs

REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"


def build(failover: bool, token: str | None = "t" * 64):
    def program():
        cache = Cache("cache", CacheArgs(
            replication_group_id="transcribe-test", subnet_ids=["subnet-a", "subnet-b"],
            security_group_id="sg-cache", kms_key_arn=KEY_ARN,
            auth_token=None if token is None else pulumi.Output.secret(token),
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
    assert secret["kmsKeyId"] == KEY_ARN and secret["namePrefix"] == "transcribe-test/redis-"
    assert "name" not in secret  # a destroyed secret keeps its name for the recovery window
    secret_string = nonprod.one("aws:secretsmanager/secretVersion:SecretVersion").inputs["secretString"]
    is_secret, text = offline.unsecret(secret_string)
    assert is_secret
    body = json.loads(text)
    assert body == {"host": nonprod.outputs["endpoint"], "port": 6379, "tls": True, "auth_token": "t" * 64}
    assert nonprod.outputs["secret"].startswith("arn:aws:secretsmanager:")


def test_without_a_given_token_the_program_generates_one_and_keeps_it_secret():
    run = build(False, token=None)
    password = run.one("random:index/randomPassword:RandomPassword", "cache-auth-token").inputs
    # ElastiCache: 16-128 printable characters without @ " /; letters and digits need no escaping in URLs
    assert (password["length"], password["special"]) == (64, False)
    assert password["minLower"] == password["minUpper"] == password["minNumeric"] == 1
    is_secret, token = offline.unsecret(run.one(REDIS).inputs["authToken"])
    assert is_secret and len(token) == 64 and token.isalnum()
    is_secret, text = offline.unsecret(run.one("aws:secretsmanager/secretVersion:SecretVersion").inputs["secretString"])
    assert is_secret and json.loads(text)["auth_token"] == token


def test_a_given_token_makes_no_generated_one(nonprod):
    assert nonprod.of_type("random:index/randomPassword:RandomPassword") == []


def test_token_length_is_checked():
    with pytest.raises(ValueError, match="16 to 128"):
        CacheArgs(replication_group_id="x", subnet_ids=[], security_group_id="sg", kms_key_arn=KEY_ARN,
                  node_type="cache.t4g.small", automatic_failover=False, token_length=8)
