"""Run history where the platform is: the journals of a `kubernetes` environment's runs are
kept in its backup bucket under `runbook-runs/<run id>.jsonl`, so a run from CI or a
CronJob is visible from any laptop (`opsctl runbook history --env staging`) and can be
resumed from another machine.

The prefix lies outside the backup repository's own prefix, so backup cleanup and prune
never see these objects. Journals are masked before they are written (journal.py); the
bucket's encryption and access policy apply to them as to the backups.
"""

from __future__ import annotations

from pathlib import Path

from opsctl.config import Environment, Project
from opsctl.errors import UsageError, not_empty
from opsctl.runbook import journal as jr

PREFIX = "runbook-runs/"
LIST_LIMIT = 200  # newest journals read by `history`
TIMEOUT = 10.0  # seconds to connect to the bucket, and for each read


class BucketHistory:
    """The journals of one environment in its backup bucket."""

    def __init__(self, project: Project, env: Environment):
        from opsctl.endpoints import resolve

        endpoints = resolve(project, env)
        self.bucket = endpoints.backup_bucket
        self._endpoints = endpoints
        self._client = None

    @property
    def s3(self):
        """The S3 client of the environment (created on first use). Journals are small: a
        bucket that does not answer within TIMEOUT seconds, twice, has failed; with botocore's
        defaults a stalled endpoint held a run five minutes before its first step (breaker 35)."""
        if self._client is None:
            self._client = self._endpoints.s3_client(retries=1, timeout=TIMEOUT)
        return self._client

    def save(self, path: Path) -> None:
        """Store the journal file `path` whole (journals are small: one line per step)."""
        self.s3.put_object(Bucket=self.bucket, Key=PREFIX + path.name, Body=path.read_bytes(),
                           ContentType="application/x-ndjson")

    def read(self, run_id: str) -> list[dict]:
        """The records of run `run_id`; UsageError when the bucket has no such run."""
        key = PREFIX + jr.check_run_id(run_id) + ".jsonl"
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise UsageError(f"no run '{run_id}' in s3://{self.bucket}/{PREFIX}; "
                             "'opsctl runbook history --env ENV' lists them") from None
        return jr.parse(body)

    def fetch(self, run_id: str, target: Path) -> None:
        """Copy run `run_id`'s journal to `target` (0600 in a 0700 folder), to resume it here."""
        key = PREFIX + jr.check_run_id(run_id) + ".jsonl"
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise UsageError(f"no run '{run_id}' on this machine nor in s3://{self.bucket}/{PREFIX}") from None
        jr.write_private(target, body)

    def summaries(self, name: str | None = None) -> list[dict]:
        """Summaries of the newest `LIST_LIMIT` runs, newest first."""
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=PREFIX):
            keys += [o["Key"] for o in page.get("Contents", [])]
        out = []
        for key in sorted(keys, reverse=True)[:LIST_LIMIT]:
            run_id = key[len(PREFIX):].removesuffix(".jsonl")
            if not jr.RUN_ID.match(run_id):
                continue
            found = jr.summary(run_id, jr.parse(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()))
            if found and (not name or found["runbook"] == name):
                out.append(found)
        return out


def for_env(project: Project, env: Environment) -> BucketHistory | None:
    """The bucket history of a kubernetes environment; None elsewhere (local journals)."""
    return BucketHistory(project, env) if env.platform == "kubernetes" else None


def runs(project: Project, env_name: str | None = None, name: str | None = None) -> list[dict]:
    """Past runs, newest first (of runbook `name` when given), as journal.summary rows: a
    kubernetes environment's from its bucket (the newest LIST_LIMIT), otherwise the
    journals on this machine (of `env_name` when given). UsageError for an unknown
    environment, and for an empty `env_name` or `name` (an unset CI variable listed every run:
    reviewer 39 R10)."""
    not_empty(env_name, "--env", "give an environment of opsctl.yaml, or leave --env out for every one")
    not_empty(name, "NAME", "give a runbook's name, or leave it out for every runbook")
    store = for_env(project, project.env(env_name)) if env_name is not None else None
    return store.summaries(name) if store else jr.summaries(project.root, name, env_name)


def records(project: Project, run_id: str, env_name: str | None = None) -> list[dict]:
    """Every journal record of run `run_id`: from a kubernetes environment's bucket when
    `env_name` names one, else from this machine. UsageError when there is no such run, and
    for an empty `run_id` or `env_name`."""
    not_empty(run_id, "--run", "give a run id ('opsctl runbook history' lists them), or leave --run out")
    not_empty(env_name, "--env", "give an environment of opsctl.yaml, or leave --env out for this machine's runs")
    store = for_env(project, project.env(env_name)) if env_name is not None else None
    return store.read(run_id) if store else jr.read(project.root, run_id)
