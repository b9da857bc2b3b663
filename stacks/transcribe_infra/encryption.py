"""The platform's customer-managed KMS key: one key encrypts every store of the stack.

A customer-managed key (rather than AWS-managed ones) lets the account owner revoke access to
all the data at once, audits every use in CloudTrail, and can be granted to the worker's role
explicitly. Its policy admits the account (so IAM policies decide) and CloudWatch Logs, which
cannot use a key its service principal is not named on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class EncryptionArgs:
    """The platform key's region, its deletion window in days (7-30; ValueError otherwise) and tags."""

    region: str
    deletion_window_days: int = 30  # a deleted key makes every encrypted byte unreadable: wait long
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 7 <= self.deletion_window_days <= 30:
            raise ValueError("KMS deletion windows are 7 to 30 days")


class Encryption(pulumi.ComponentResource):
    """The platform's customer-managed KMS key (rotated yearly). Output: key_arn."""

    key_arn: pulumi.Output[str]

    def __init__(self, name: str, args: EncryptionArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:Encryption", name, None, opts)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        policy = pulumi.Output.json_dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "AccountAdministers", "Effect": "Allow", "Action": "kms:*", "Resource": "*",
                 "Principal": {"AWS": pulumi.Output.concat("arn:aws:iam::", account, ":root")}},
                {"Sid": "CloudWatchLogsEncrypts", "Effect": "Allow", "Resource": "*",
                 "Principal": {"Service": f"logs.{args.region}.amazonaws.com"},
                 "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                 "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": pulumi.Output.concat(
                     "arn:aws:logs:", args.region, ":", account, ":*")}}},
            ],
        })
        key = aws.kms.Key(f"{name}-key", description=f"{name}: data at rest of the transcription platform",
                          enable_key_rotation=True, deletion_window_in_days=args.deletion_window_days,
                          policy=policy, tags=args.tags, opts=pulumi.ResourceOptions(parent=self))
        aws.kms.Alias(f"{name}-alias", name=f"alias/{name}", target_key_id=key.key_id,
                      opts=pulumi.ResourceOptions(parent=self))
        self.key_arn = key.arn
        self.register_outputs({"key_arn": key.arn})
