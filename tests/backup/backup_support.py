"""Backup fixtures: real data on the session's embedded platform, and one environment per repository kind.

The shared platform's opsctl.yaml gets two extra environments on the same local platform,
`bk-file` (file:// repository in a temp folder) and `bk-s3` (s3:// in the platform's backup
bucket), so every test runs against both kinds through the same commands; the original file
is put back at the end. Seeded data lives in its own tables, Redis keys and audio prefix.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass

import pytest
import yaml

KEY = base64.b64encode(b"k" * 32).decode()
OTHER_KEY = base64.b64encode(b"z" * 32).decode()
ROWS, NOTES, REDIS_KEYS, AUDIO = 30_000, 5_000, 2_000, 4


@dataclass
class BackupEnv:
    name: str
    kind: str
    repository: str
    platform: object

    def endpoints(self):
        from opsctl.endpoints import resolve

        proj = self.platform.project()
        return resolve(proj, proj.env(self.name))

    def repo(self):
        from opsctl.backup.repository import open_repository

        proj = self.platform.project()
        return open_repository(self.repository, proj, self.endpoints())


@pytest.fixture(scope="session")
def backup_envs(local_platform, tmp_path_factory):
    config = local_platform.root / "opsctl.yaml"
    original = config.read_text()
    doc = yaml.safe_load(original)
    folder = tmp_path_factory.mktemp("backup-repo")
    prefix = f"bk-{uuid.uuid4().hex[:8]}"
    repos = {"file": f"file://{folder}", "s3": f"s3://transcribe-backups/{prefix}"}
    for kind, url in repos.items():
        doc["environments"][f"bk-{kind}"] = {"platform": "local", "backup": {"repository": url}}
    # the same platform and repository, marked protected: restores over it need its name
    doc["environments"]["bk-protected"] = {"platform": "local", "protected": True,
                                           "backup": {"repository": repos["file"]}}
    config.write_text(yaml.safe_dump(doc))
    yield {kind: BackupEnv(f"bk-{kind}", kind, url, local_platform) for kind, url in repos.items()}
    config.write_text(original)


@pytest.fixture(params=["file", "s3"])
def benv(request, backup_envs, seeded, monkeypatch) -> BackupEnv:
    monkeypatch.setenv("OPSCTL_ROOT", str(backup_envs[request.param].platform.root))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    monkeypatch.setenv("CI", "true")
    return backup_envs[request.param]


@dataclass
class Seeded:
    db_url: str
    redis_url: str
    bucket: str
    audio: dict[str, bytes]


def _seed_db(db_url: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("set role transcribe")
        conn.execute("drop table if exists bk_events, bk_notes")
        conn.execute("create table bk_events (id bigint primary key, kind text not null, payload jsonb, "
                     "at timestamptz not null default now())")
        conn.execute("insert into bk_events select i, 'kind-' || (i % 17), jsonb_build_object('n', i, 'h', md5(i::text)) "
                     f"from generate_series(1, {ROWS}) i")
        conn.execute("create index on bk_events (kind)")
        conn.execute("create table bk_notes (id serial primary key, event bigint references bk_events, body text)")
        conn.execute(f"insert into bk_notes (event, body) select i, repeat(md5(i::text), 4) from generate_series(1, {NOTES}) i")


def _seed_redis(redis_url: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    pipe = r.pipeline(transaction=False)
    pipe.delete(*(k for k in r.scan_iter("bk:*")), "bk:hash")
    for i in range(REDIS_KEYS):
        pipe.set(f"bk:str:{i}", f"value-{i}")
    pipe.hset("bk:hash", mapping={f"f{i}": i for i in range(100)})
    pipe.rpush("bk:list", *range(50))
    pipe.zadd("bk:zset", {f"m{i}": i for i in range(50)})
    pipe.set("bk:ttl", "keeps its ttl", ex=3600)
    pipe.execute()


@pytest.fixture(scope="session")
def _seed(local_platform) -> Seeded:
    ep = local_platform.endpoints()
    _seed_db(ep.database_url)
    _seed_redis(ep.redis_url)
    audio = {f"bktest/audio-{i}.wav": os.urandom(768 * 1024 + i) for i in range(AUDIO)}
    return Seeded(ep.database_url, ep.redis_url, ep.audio_bucket, audio)


@pytest.fixture
def seeded(_seed, local_platform) -> Seeded:
    """Tens of thousands of rows, a few MB of audio objects and Redis keys of every type.

    Seeded once per session and made whole again before each test that asks for it: the
    platform is shared by the whole session (and, with pytest-xdist, files run in any order),
    so a test of another folder that restarts Redis or restores PostgreSQL may have run since.
    """
    import psycopg
    import redis

    try:
        with psycopg.connect(_seed.db_url) as conn:
            rows = conn.execute("select (select count(*) from bk_events), (select count(*) from bk_notes)").fetchone()
    except psycopg.errors.UndefinedTable:
        rows = None
    if rows != (ROWS, NOTES):
        _seed_db(_seed.db_url)
    r = redis.Redis.from_url(_seed.redis_url)
    if sum(1 for _ in r.scan_iter("bk:*")) != REDIS_KEYS + 4 or r.ttl("bk:ttl") <= 0:
        _seed_redis(_seed.redis_url)
    s3 = local_platform.endpoints().s3_client()
    have = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=_seed.bucket, Prefix="bktest/")
            for o in page.get("Contents", [])}
    for key, body in _seed.audio.items():
        if have.get(key) != len(body):
            s3.put_object(Bucket=_seed.bucket, Key=key, Body=body)
    return _seed


def snapshot_state(seeded: Seeded) -> dict:
    """What the seeded data looks like now: row counts and sums, Redis keys, audio bytes."""
    import boto3  # noqa: F401
    import psycopg
    import redis

    from opsctl.local import s3 as s3mod

    with psycopg.connect(seeded.db_url) as conn:
        events = conn.execute("select count(*), sum(id), md5(string_agg(payload::text, ',' order by id)) from bk_events").fetchone()
        notes = conn.execute("select count(*), md5(string_agg(body, ',' order by id)) from bk_notes").fetchone()
        dbs = {r[0] for r in conn.execute("select datname from pg_database")}
    r = redis.Redis.from_url(seeded.redis_url)
    keys = {k: r.dump(k) for k in r.scan_iter("bk:*")}
    return {"events": events, "notes": notes, "redis": keys, "databases": dbs, "ttl": r.ttl("bk:ttl") > 0}


def audio_state(local_platform, seeded: Seeded) -> dict[str, bytes | None]:
    s3 = local_platform.endpoints().s3_client()
    out = {}
    for key in seeded.audio:
        try:
            out[key] = s3.get_object(Bucket=seeded.bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            out[key] = None
    return out


def side_env(root, monkeypatch, seeded: Seeded, repository: str, database_url: str | None = None,
             name: str = "side", **extra) -> str:
    """An ops root at `root` whose environment `name` reaches the session platform's
    PostgreSQL and Redis through URLs (as a cloud environment would), with its own repository."""
    import json as _json

    root.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "environments": {name: {
        "platform": "kubernetes", "database": {"url_env": "SIDE_DATABASE_URL", **extra.pop("database", {})},
        "redis": {"url_env": "SIDE_REDIS_URL"}, "backup": {"repository": repository}, **extra}}}
    (root / "opsctl.yaml").write_text(_json.dumps(doc))
    monkeypatch.setenv("OPSCTL_ROOT", str(root))
    monkeypatch.setenv("SIDE_DATABASE_URL", database_url or seeded.db_url)
    monkeypatch.setenv("SIDE_REDIS_URL", seeded.redis_url)
    monkeypatch.setenv("CI", "true")
    return name


def one_line_error(result, code, *words: str) -> str:
    codes = code if isinstance(code, tuple) else (code,)
    assert result.exit_code in codes, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("opsctl: error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


PG15_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture(scope="session")
def pg15(tmp_path_factory):
    """A PostgreSQL 15 server from Debian's postgresql-15 package (installed by `make`),
    started like the embedded one; skipped with the reason where the package is absent."""
    from opsctl.local import postgres as pg
    from opsctl.local import procs

    if not os.path.isfile(f"{PG15_BIN}/postgres"):
        pytest.skip(f"PostgreSQL 15 is not installed ({PG15_BIN}): apt-get install postgresql-15 (make does it)")
    base = tmp_path_factory.mktemp("pg15")
    port = procs.free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pg, "tool", lambda name: f"{PG15_BIN}/{name}")
        pid = pg.start(base / "data", port, base / "log" / "postgres.log")
    yield pg.url(port)
    pg.stop(pid)


# helpers the test modules share (one definition each)

def ok(result) -> dict:
    """The JSON output of a command that must have succeeded."""
    import json as _json

    assert result.exit_code == 0, result.output
    return _json.loads(result.stdout)


def flip(data: bytes) -> bytes:
    """`data` with one bit flipped in the middle: damage a checksum or MAC must catch."""
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]


def rows(runner, env: str) -> dict:
    """{id: row} of `backup list --json` of environment `env`."""
    from opsctl.cli import app

    return {b["id"]: b for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]}


def index_of(repo_path) -> dict:
    """{id: summary} held by the catalog index of a file:// repository (not checked)."""
    import json as _json

    return _json.loads((repo_path / "opsctl-catalog.json").read_text())["backups"]


def keyed_file_repo(runner, seeded: Seeded, tmp_path, monkeypatch, count: int) -> tuple[str, object, list[str]]:
    """(env name, repository folder, ids) of an encrypted file:// repository holding `count`
    Redis backups labelled n0, n1, ..., made through the CLI by a side environment."""
    from opsctl.cli import app

    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    ids = [ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--label", f"n{i}",
                                  "--json"]))["id"] for i in range(count)]
    return env, tmp_path / "repo", ids


def with_damaged_newer(runner, seeded: Seeded, tmp_path, monkeypatch) -> tuple[str, str, str]:
    """(env name, older id, newer id): two Redis backups in an encrypted file:// repository,
    the newer one recorded damaged by a failed `backup verify` (its bytes put back since, so
    only the recorded verdict says damaged)."""
    from opsctl.cli import app

    env, repo_path, (older, newer) = keyed_file_repo(runner, seeded, tmp_path, monkeypatch, 2)
    obj = repo_path / newer / "redis.rdb.zst"
    original = obj.read_bytes()
    obj.write_bytes(flip(original))
    one_line_error(runner.invoke(app, ["backup", "verify", newer, "--env", env]), 1, "marked damaged")
    obj.write_bytes(original)
    return env, older, newer


def keyed_file_repository(path):
    """A file:// repository at `path` (made here) with KEY as its key and its record
    initialised, as `backup create` leaves a new repository."""
    from opsctl.backup import record
    from opsctl.backup.keys import parse
    from opsctl.backup.repository import FileRepository

    path.mkdir()
    r = FileRepository(path, f"file://{path}")
    r.key = parse(KEY, "test")
    record.ensure(r, r.key)
    return r


def keyed_s3_repository(s3, bucket_name: str):
    """An s3:// repository on the session's moto server (`s3` fixture), in bucket
    `bucket_name` under a fresh prefix, keyed and initialised like keyed_file_repository."""
    from opsctl.backup import record
    from opsctl.backup.keys import parse
    from opsctl.backup.repository import S3Repository

    bucket = s3.make_bucket(bucket_name)
    prefix = f"p{uuid.uuid4().hex[:8]}"
    r = S3Repository(s3.client(), bucket, f"/{prefix}", f"s3://{bucket}/{prefix}")
    r.key = parse(KEY, "test")
    record.ensure(r, r.key)
    return r
