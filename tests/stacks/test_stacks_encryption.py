import json

from stacks_support import TAGS, run_component

from transcribe_infra.encryption import Encryption, EncryptionArgs


def test_rotating_key_usable_by_the_account_and_cloudwatch_logs():
    run = run_component(lambda: {"arn": Encryption("e", EncryptionArgs(region="eu-west-1", tags=TAGS)).key_arn})
    key = run.one("aws:kms/key:Key").inputs
    assert key["enableKeyRotation"] is True and key["deletionWindowInDays"] == 30
    statements = {s["Sid"]: s for s in json.loads(key["policy"])["Statement"]}
    assert statements["AccountAdministers"]["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    logs = statements["CloudWatchLogsEncrypts"]
    assert logs["Principal"] == {"Service": "logs.eu-west-1.amazonaws.com"}
    assert logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"] == "arn:aws:logs:eu-west-1:123456789012:*"
    assert run.one("aws:kms/alias:Alias").inputs == {"name": "alias/e", "targetKeyId": "e-key-key-id"}
    assert run.outputs["arn"] == "arn:aws:kms:eu-west-1:123456789012:e-key"  # the key's ARN, not the alias's
