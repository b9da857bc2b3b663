"""The repository's trust boundary (issue 18): opsctl touches only its own folders, restores
only what its key sealed, keeps passwords off command lines and outputs, and never lets a
name from data become a path. Each attack is one test, run against file:// and s3://."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import threading

import psycopg
import pytest
import redis

from backup_support import KEY, ok, one_line_error, side_env, snapshot_state
from opsctl.cli import app

pytestmark = pytest.mark.slow


def _create(runner, env: str, *args: str) -> dict:
    return ok(runner.invoke(app, ["backup", "create", "--env", env, "--json", *args]))


def test_foreign_folder_survives_create_and_prune(benv, seeded, runner):
    _create(runner, benv.name, "--type", "redis")  # the repository exists (initialised)
    repo = benv.repo()
    foreign = {"other-tool/wal/000001": b"another tool's WAL",
               "20200101T000000Z-abcd/notes.txt": b"named like a backup, without opsctl's start record"}
    for name, data in foreign.items():
        repo.put_bytes(name, data)
    try:
        made = _create(runner, benv.name, "--type", "redis")
        assert made["cleaned"] == [] and {"other-tool/", "20200101T000000Z-abcd/"} <= set(made["foreign"])
        pruned = ok(runner.invoke(app, ["backup", "prune", "--env", benv.name, "--keep-last", "1", "--yes", "--json"]))
        assert {"other-tool/", "20200101T000000Z-abcd/"} <= set(pruned["foreign"])
        assert pruned["removed"] and made["id"] in pruned["kept"]
        for name, data in foreign.items():
            assert benv.repo().get_bytes(name) == data
        listed = ok(runner.invoke(app, ["backup", "list", "--env", benv.name, "--json"]))
        assert "other-tool/" in listed["foreign"] and listed["encrypted"] is True
        assert all(b["id"] != "20200101T000000Z-abcd" for b in listed["backups"])
    finally:
        for name in foreign:
            benv.repo().delete_prefix(name)


def test_create_refuses_a_location_that_is_not_an_opsctl_repository(seeded, runner, tmp_path, monkeypatch):
    (tmp_path / "repo" / "other-tool" / "wal").mkdir(parents=True)
    (tmp_path / "repo" / "other-tool" / "wal" / "000001").write_bytes(b"wal")
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    one_line_error(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis"]), 2,
                   "not an opsctl backup repository", "other-tool/")
    assert sorted(p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*")) == \
        ["other-tool", "other-tool/wal", "other-tool/wal/000001"]


def _plant(benv, seeded) -> str:
    """A backup folder planted as the issue describes: a Redis snapshot holding a key the
    live server does not have, `key_id: null` and a bare SHA-256 where the MAC goes."""
    from opsctl.backup import catalog, redis as rdb
    from opsctl.backup import manifest as mf
    from opsctl.backup.pipeline import StreamStats, pack

    repo = benv.repo()
    real_id = next(e.id for e in reversed(catalog.entries(repo)) if e.complete and "redis" in e.components)
    real = mf.parse(repo.get_bytes(f"{real_id}/{mf.NAME}"), real_id)
    live = redis.Redis.from_url(seeded.redis_url)
    live.set("bk:planted", "attacker's value")
    path, info = rdb.snapshot(seeded.redis_url)
    live.delete("bk:planted")
    planted = catalog.new_id(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    stats = StreamStats()
    with open(path, "rb") as fh:
        repo.put(f"{planted}/redis.rdb.zst", pack(fh, 1, None, stats))
    m = real.model_copy(deep=True)
    m.id, m.key_id, m.encryption, m.db, m.files = planted, None, None, None, None
    m.redis = mf.RedisPart(object=mf.StoredObject(name=f"{planted}/redis.rdb.zst", size=stats.stored_bytes,
                                                  sha256=stats.sha256, raw_size=stats.raw_bytes, compressed=True),
                           **info)
    m.sign(None)
    repo.put_bytes(f"{planted}/{mf.NAME}", m.to_bytes())
    return planted


def test_planted_unauthenticated_backup_is_never_trusted(benv, seeded, runner):
    good = _create(runner, benv.name, "--type", "redis")["id"]
    planted = _plant(benv, seeded)
    try:
        listed = ok(runner.invoke(app, ["backup", "list", "--env", benv.name, "--json"]))
        row = next(b for b in listed["backups"] if b["id"] == planted)
        assert row["status"] == "untrusted" and "not sealed" in row["note"]
        before = snapshot_state(seeded)
        one_line_error(runner.invoke(app, ["backup", "verify", planted, "--env", benv.name, "--json"]), 1, "untrusted")
        one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", planted, "--components", "redis",
                                           "--yes"]), 1, "untrusted")
        assert snapshot_state(seeded) == before
        done = runner.invoke(app, ["restore", "--env", benv.name, "--latest", "--components", "redis", "--yes", "--json"])
        assert done.exit_code == 0, done.output
        doc = json.loads(done.stdout)
        assert doc["backup_id"] == good and any(planted in s for s in doc["skipped"])
        assert f"skipped newer backups that can't be restored: {planted} (untrusted)" in done.stderr
        assert not redis.Redis.from_url(seeded.redis_url).exists("bk:planted")
        # --no-encrypt into this encrypted repository is refused
        one_line_error(runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "redis", "--no-encrypt"]),
                       2, "--no-encrypt is refused")
        pruned = ok(runner.invoke(app, ["backup", "prune", "--env", benv.name, "--keep-last", "1", "--yes", "--json"]))
        assert planted in pruned["untrusted"] and planted not in pruned["removed"]
        assert benv.repo().names(f"{planted}/")
    finally:
        benv.repo().delete_prefix(f"{planted}/")


def test_unencrypted_repository_says_so(seeded, runner, tmp_path, monkeypatch):
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.delenv("OPSCTL_BACKUP_KEY", raising=False)
    _create(runner, env, "--type", "redis", "--no-encrypt")
    listed = runner.invoke(app, ["backup", "list", "--env", env])
    assert listed.exit_code == 0 and "NOT encrypted" in listed.stdout, listed.output
    assert ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["encrypted"] is False
    doctor = runner.invoke(app, ["doctor", "--json"])
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == f"backup repository {env}")
    assert not check["ok"] and "NOT encrypted" in check["detail"]
    # the repository is unencrypted for good: an encrypted backup into it is refused
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    one_line_error(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis"]), 2, "unencrypted")


class ArgvSampler:
    """Reads every process's /proc/PID/cmdline in a loop until stopped."""

    def __init__(self):
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            self.seen.add(fh.read().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_no_password_in_any_argv_during_backup_restore_and_verify(seeded, runner, tmp_path, monkeypatch):
    secret = "Pw-" + os.urandom(6).hex()
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute("drop role if exists bk_pw_role")
        conn.execute(f"create role bk_pw_role login superuser password '{secret}'")
    url = seeded.db_url.replace("postgresql://postgres@", f"postgresql://bk_pw_role:{secret}@")
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url)
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    outputs = []
    with ArgvSampler() as sampler:
        made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"])
        outputs.append(made.output)
        backup_id = ok(made)["id"]
        checked = runner.invoke(app, ["--debug", "backup", "verify", backup_id, "--env", env, "--restore-test", "--json"])
        outputs.append(checked.output)
        assert ok(checked)["restore_test"]["db"]["matches_manifest"]
        done = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", "bk_pw_copy",
                                   "--yes", "--json"])
        outputs.append(done.output)
        ok(done)
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute("drop database if exists bk_pw_copy with (force)")
        conn.execute("drop role bk_pw_role")
    tools = {t for t in ("psql", "pg_dump", "pg_restore") if any(f"/{t} " in s for s in sampler.seen)}
    assert tools == {"psql", "pg_dump", "pg_restore"}, "the sampler must have seen every client tool run"
    assert [s for s in sampler.seen if secret in s] == []
    assert all(secret not in o for o in outputs)
    assert stat.S_IMODE(os.stat(tmp_path / "repo").st_mode) == 0o700


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_malformed_url_with_a_password_never_shows_it(seeded, runner, tmp_path, monkeypatch, as_json):
    secret = "Pw-" + os.urandom(6).hex()
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                   database_url=f"postgresql://app:{secret}@[::1/transcribe")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    for argv in (["backup", "create", "--env", env, "--type", "db"],
                 ["restore", "--env", env, "--latest", "--components", "db", "--yes"]):
        result = runner.invoke(app, [*argv, *as_json])
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
        assert secret not in result.output and secret not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("opsctl: error: ")
    line = one_line_error(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", *as_json]), 2)
    assert "database URL is not valid" in line and "app:***@" in line


@pytest.mark.parametrize("bad", ["../outside/bk", "20260101T000000Z-abcd/../../x", "x\ny", "/etc", ""])
def test_backup_ids_are_checked_before_any_use(benv, seeded, runner, tmp_path, bad):
    for argv in (["backup", "verify", bad, "--env", benv.name],
                 ["restore", "--env", benv.name, "--id", bad, "--yes"]):
        line = one_line_error(runner.invoke(app, argv), 2, "is not a backup id")
        assert "\n" not in line
    if benv.kind == "file":
        root = benv.repository[len("file://"):]
        assert not os.path.exists(os.path.join(root, "..", "outside"))


def test_repository_files_are_private(backup_envs, seeded, runner, monkeypatch):
    benv = backup_envs["file"]
    monkeypatch.setenv("OPSCTL_ROOT", str(benv.platform.root))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    _create(runner, benv.name)
    root = benv.repository[len("file://"):]
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(folder, d)).st_mode) == 0o700, os.path.join(folder, d)
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(folder, f)).st_mode) == 0o600, os.path.join(folder, f)


def test_file_repository_refuses_names_outside_it(tmp_path):
    from opsctl.backup.repository import FileRepository
    from opsctl.errors import UsageError

    repo = FileRepository(tmp_path / "repo", f"file://{tmp_path / 'repo'}")
    for name in ("../x", "a/../../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(UsageError, match="would leave the repository folder"):
            repo.put_bytes(name, b"x")
        with pytest.raises(UsageError):
            list(repo.get(name))
    assert not (tmp_path / "x").exists()
