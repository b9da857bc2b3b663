import json

import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra.storage import Storage, StorageArgs

BUCKETS = ("t-audio", "t-backups")


def build(force_destroy: bool):
    def program():
        s = Storage("st", StorageArgs(audio_bucket="t-audio", backups_bucket="t-backups", kms_key_arn=KEY_ARN,
                                      force_destroy=force_destroy, tags=TAGS))
        return {"names": s.bucket_names, "arns": s.bucket_arns}
    return run_component(program)


@pytest.fixture(scope="module")
def run():
    return build(False)


def for_bucket(run, typ, bucket):
    found = [r.inputs for r in run.of_type(typ) if r.inputs["bucket"] == bucket]
    assert len(found) == 1, f"{typ} for {bucket}: {len(found)}"
    return found[0]


@pytest.mark.parametrize("bucket", BUCKETS)
def test_private_versioned_kms_encrypted(run, bucket):
    assert for_bucket(run, "aws:s3/bucketVersioning:BucketVersioning", bucket)["versioningConfiguration"] == {
        "status": "Enabled"}
    sse = for_bucket(run, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                     bucket)["rules"]
    assert sse == [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": KEY_ARN},
                    "bucketKeyEnabled": True}]
    block = for_bucket(run, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket)
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                          "restrictPublicBuckets"))
    owner = for_bucket(run, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket)
    assert owner["rule"] == {"objectOwnership": "BucketOwnerEnforced"}


@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_policy_refuses_requests_without_tls(run, bucket):
    policy = json.loads(for_bucket(run, "aws:s3/bucketPolicy:BucketPolicy", bucket)["policy"])
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


@pytest.mark.parametrize("bucket, archive, noncurrent", [("t-audio", "GLACIER", 30), ("t-backups", "GLACIER_IR", 90)])
def test_lifecycle_ia_after_30_days_glacier_after_90_old_versions_expire(run, bucket, archive, noncurrent):
    rules = for_bucket(run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", bucket)["rules"]
    [rule] = [r for r in rules if r["id"] == "tiering"]
    assert rule["status"] == "Enabled" and rule["filter"] == {"prefix": ""}
    assert rule["transitions"] == [{"days": 30, "storageClass": "STANDARD_IA"},
                                   {"days": 90, "storageClass": archive}]
    assert rule["noncurrentVersionExpiration"] == {"noncurrentDays": noncurrent}
    assert rule["abortIncompleteMultipartUpload"] == {"daysAfterInitiation": 7}


def test_upload_parts_expire_in_the_audio_bucket_only_and_never_a_completed_file(run):
    """The worker's part objects have a prefix of their own (`audio/upload-parts/`), expired
    after 2 days (a crash's leftovers; the worker deletes them within the hour an upload
    lives); completed files (`audio/uploads/...`, `audio/<sha>...`) are not under it, and the
    backups bucket has no such rule."""
    audio = for_bucket(run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "t-audio")["rules"]
    [parts] = [r for r in audio if r["id"] == "upload-parts-expire"]
    assert parts["status"] == "Enabled" and parts["filter"] == {"prefix": "audio/upload-parts/"}
    assert parts["expiration"] == {"days": 2} and parts["noncurrentVersionExpiration"] == {"noncurrentDays": 1}
    for completed in ("audio/uploads/upload_" + "0" * 32, "audio/ab/" + "ab" * 32 + ".wav"):
        assert not completed.startswith(parts["filter"]["prefix"])
    backups = for_bucket(run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "t-backups")
    assert [r["id"] for r in backups["rules"]] == ["tiering"]


def test_buckets_named_as_configured_and_force_destroy_follows_the_argument(run):
    buckets = {b.inputs["bucket"]: b.inputs for b in run.of_type("aws:s3/bucket:Bucket")}
    assert set(buckets) == set(BUCKETS)
    assert all(b["forceDestroy"] is False for b in buckets.values())
    assert run.outputs["names"] == {"audio": "t-audio", "backups": "t-backups"}
    assert run.outputs["arns"] == {"audio": "arn:aws:s3:::t-audio", "backups": "arn:aws:s3:::t-backups"}
    assert all(b.inputs["forceDestroy"] is True for b in build(True).of_type("aws:s3/bucket:Bucket"))


def test_lifecycle_arguments_are_validated():
    with pytest.raises(ValueError, match="30 days"):
        StorageArgs(audio_bucket="a", backups_bucket="b", kms_key_arn=KEY_ARN, force_destroy=False, ia_after_days=10)
    with pytest.raises(ValueError, match="after the infrequent-access"):
        StorageArgs(audio_bucket="a", backups_bucket="b", kms_key_arn=KEY_ARN, force_destroy=False,
                    glacier_after_days=30)
    with pytest.raises(ValueError, match="outlive an upload"):
        StorageArgs(audio_bucket="a", backups_bucket="b", kms_key_arn=KEY_ARN, force_destroy=False,
                    upload_parts_expire_days=1)
    with pytest.raises(ValueError, match="upload-parts/"):  # a prefix completed files share
        StorageArgs(audio_bucket="a", backups_bucket="b", kms_key_arn=KEY_ARN, force_destroy=False,
                    upload_parts_prefix="audio/uploads/")


def test_buckets_say_what_they_hold(run):
    """The least-privilege policy rule tells the backups bucket from the audio one by this tag."""
    tags = {r.inputs["bucket"]: r.inputs["tags"] for r in run.of_type("aws:s3/bucket:Bucket")}
    assert tags == {"t-audio": {**TAGS, "Name": "t-audio", "opsctl:purpose": "audio"},
                    "t-backups": {**TAGS, "Name": "t-backups", "opsctl:purpose": "backups"}}
