"""S3: the audio bucket and the backups bucket, both private, versioned and KMS-encrypted.

Public access is blocked at the bucket (account settings can change), ACLs are disabled
(bucket-owner-enforced), and a bucket policy refuses any request not made over TLS. Lifecycle
moves objects to infrequent access after 30 days and to Glacier after 90. Backups go to
Glacier Instant Retrieval, not Flexible: a restore at 2 a.m. must not wait hours for a thaw.
Old versions expire, so versioning protects against mistakes without growing forever. In the
audio bucket the worker's upload part objects (`<WORKER_S3_PREFIX>upload-parts/`, a prefix no
completed file shares) expire after `upload_parts_expire_days`: the backstop for parts a crash
left behind (the worker deletes them itself when an upload ends or expires, within
WORKER_UPLOAD_EXPIRY_SECONDS, an hour by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from transcribe_infra.settings import with_name


PURPOSE_TAG = "opsctl:purpose"  # audio | backups: what the policy checks tell the buckets apart by


@dataclass
class BucketSpec:
    """One bucket: its purpose (audio | backups), name, archive class and days noncurrent
    versions are kept."""

    purpose: str
    name: str
    archive_storage_class: str  # the class objects move to after `glacier_after_days`
    noncurrent_expire_days: int


@dataclass
class StorageArgs:
    """The two buckets' names, the key, whether destroy may empty them, and lifecycle days
    (ValueError when S3 would refuse the transitions)."""

    audio_bucket: str
    backups_bucket: str
    kms_key_arn: pulumi.Input[str]
    force_destroy: bool  # non-production only: lets `destroy` empty the bucket first
    ia_after_days: int = 30
    glacier_after_days: int = 90
    audio_noncurrent_expire_days: int = 30
    backup_noncurrent_expire_days: int = 90
    tags: dict[str, str] = field(default_factory=dict)
    # the worker's part objects (WORKER_S3_PREFIX + "upload-parts/"); S3 counts lifecycle days
    # from creation rounded to the next midnight UTC, so 2 days is at least 24 h: comfortably
    # above WORKER_UPLOAD_EXPIRY_SECONDS (an hour), after which the worker has deleted them
    upload_parts_prefix: str = "audio/upload-parts/"
    upload_parts_expire_days: int = 2

    def __post_init__(self) -> None:
        if not self.upload_parts_prefix.endswith("upload-parts/"):
            raise ValueError("upload_parts_prefix is the worker's WORKER_S3_PREFIX + 'upload-parts/'")
        if self.upload_parts_expire_days < 2:
            raise ValueError("upload parts must outlive an upload's expiry: at least 2 days")
        if not self.ia_after_days >= 30:
            raise ValueError("S3 refuses STANDARD_IA transitions earlier than 30 days")
        if self.glacier_after_days <= self.ia_after_days:
            raise ValueError("the Glacier transition must come after the infrequent-access one")

    @property
    def buckets(self) -> dict[str, BucketSpec]:
        """The audio and backups buckets' specs, by purpose."""

        return {
            "audio": BucketSpec("audio", self.audio_bucket, "GLACIER", self.audio_noncurrent_expire_days),
            "backups": BucketSpec("backups", self.backups_bucket, "GLACIER_IR", self.backup_noncurrent_expire_days),
        }


class Storage(pulumi.ComponentResource):
    """The audio and backups buckets: versioned, SSE-KMS, public access blocked, TLS only,
    lifecycle rules. Outputs: bucket_names and bucket_arns by purpose."""

    bucket_names: dict[str, pulumi.Output[str]]
    bucket_arns: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:Storage", name, None, opts)
        self.bucket_names, self.bucket_arns = {}, {}
        for kind, spec in args.buckets.items():
            bucket = self._bucket(f"{name}-{kind}", spec, args)
            self.bucket_names[kind], self.bucket_arns[kind] = bucket.bucket, bucket.arn
        self.register_outputs({"bucket_names": self.bucket_names, "bucket_arns": self.bucket_arns})

    def _bucket(self, res: str, spec: BucketSpec, args: StorageArgs) -> aws.s3.Bucket:
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(res, bucket=spec.name, force_destroy=args.force_destroy, opts=child,
                               tags={**with_name(args.tags, spec.name), PURPOSE_TAG: spec.purpose})
        after = pulumi.ResourceOptions(parent=self, depends_on=[bucket])
        aws.s3.BucketOwnershipControls(res, bucket=bucket.id, opts=after,
                                       rule={"object_ownership": "BucketOwnerEnforced"})
        block = aws.s3.BucketPublicAccessBlock(res, bucket=bucket.id, block_public_acls=True,
                                               block_public_policy=True, ignore_public_acls=True,
                                               restrict_public_buckets=True, opts=after)
        aws.s3.BucketVersioning(res, bucket=bucket.id, versioning_configuration={"status": "Enabled"}, opts=after)
        aws.s3.BucketServerSideEncryptionConfiguration(res, bucket=bucket.id, opts=after, rules=[{
            "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms",
                                                        "kms_master_key_id": args.kms_key_arn},
            "bucket_key_enabled": True,  # one data key per bucket: far fewer KMS calls
        }])
        aws.s3.BucketPolicy(res, bucket=bucket.id, opts=pulumi.ResourceOptions(parent=self, depends_on=[block]),
                            policy=pulumi.Output.json_dumps({
                                "Version": "2012-10-17",
                                "Statement": [{
                                    "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
                                    "Action": "s3:*",
                                    "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }],
                            }))
        rules = [{
            "id": "tiering",
            "status": "Enabled",
            "filter": {"prefix": ""},
            "transitions": [{"days": args.ia_after_days, "storage_class": "STANDARD_IA"},
                            {"days": args.glacier_after_days, "storage_class": spec.archive_storage_class}],
            "noncurrent_version_expiration": {"noncurrent_days": spec.noncurrent_expire_days},
            "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
        }]
        if spec.purpose == "audio":  # parts a crashed worker left: never a completed file
            rules.append({
                "id": "upload-parts-expire",
                "status": "Enabled",
                "filter": {"prefix": args.upload_parts_prefix},
                "expiration": {"days": args.upload_parts_expire_days},
                "noncurrent_version_expiration": {"noncurrent_days": 1},
            })
        aws.s3.BucketLifecycleConfiguration(res, bucket=bucket.id, opts=after, rules=rules)
        return bucket
