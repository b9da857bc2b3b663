"""Round trip on the embedded platform, for file:// and s3:// repositories alike.

backup create -> list -> verify --restore-test -> damage the live data -> restore by id
and by date -> every row, key and audio object is back, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
import redis

from backup_support import NOTES, REDIS_KEYS, ROWS, audio_state, ok, snapshot_state
from opsctl.cli import app

pytestmark = pytest.mark.slow


def test_backup_list_verify_restore_by_id_and_date(benv, seeded, runner, local_platform):
    before = snapshot_state(seeded)
    audio_before = audio_state(local_platform, seeded)
    assert before["events"][0] == ROWS and before["notes"][0] == NOTES
    assert len(before["redis"]) == REDIS_KEYS + 4

    made = ok(runner.invoke(app, ["backup", "create", "--env", benv.name, "--label", "round trip", "--json"]))
    assert made["components"] == ["db", "redis", "files"]
    assert made["encrypted"] and made["key_id"] and made["stored_bytes"] > 0
    assert made["raw_bytes"] > made["stored_bytes"] - 4 * 800 * 1024  # db and redis compress

    listed = ok(runner.invoke(app, ["backup", "list", "--env", benv.name, "--json"]))
    row = next(b for b in listed["backups"] if b["id"] == made["id"])
    assert row["status"] == "complete" and row["label"] == "round trip" and row["components"] == made["components"]
    assert "OPSCTL_BACKUP_KEY" not in json.dumps(listed) and benv.repo().get_bytes(f"{made['id']}/manifest.json").find(b"kkkk") < 0

    checked = ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", benv.name, "--restore-test", "--json"]))
    assert checked["ok"] and checked["decrypted"]
    assert checked["restore_test"]["db"]["rows"] >= ROWS + NOTES
    assert checked["restore_test"]["redis"]["keys"] >= REDIS_KEYS + 4
    assert checked["objects"] >= 2 + len(audio_before)

    # damage the live data: rows deleted and changed, keys flushed, audio deleted
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute("delete from bk_notes where id % 3 = 0")
        conn.execute("update bk_events set payload = '{}' where id < 500")
    r = redis.Redis.from_url(seeded.redis_url)
    r.delete(*[k for k in r.scan_iter("bk:str:1*")])
    r.set("bk:new-after-backup", "x")
    s3 = local_platform.endpoints().s3_client()
    first_audio = sorted(seeded.audio)[0]
    s3.delete_object(Bucket=seeded.bucket, Key=first_audio)
    assert snapshot_state(seeded)["events"] != before["events"]

    done = ok(runner.invoke(app, ["restore", "--env", benv.name, "--id", made["id"], "--jobs", "2", "--yes", "--json"]))
    assert done["database"] == "transcribe" and done["previous_database"].startswith("transcribe_before_")
    assert done["files_restored"] >= 1
    after = snapshot_state(seeded)
    assert after["events"] == before["events"] and after["notes"] == before["notes"]
    assert after["redis"] == before["redis"] and after["ttl"]
    assert audio_state(local_platform, seeded) == audio_before

    # by date, only the database, into a database of its own: the live one is left alone
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    target = f"bk_copy_{benv.kind}"
    done = ok(runner.invoke(app, ["restore", "--env", benv.name, "--date", today, "--components", "db",
                                   "--target-db", target, "--yes", "--json"]))
    assert done["backup_id"] == made["id"] and done["database"] == target
    copy_url = psycopg.conninfo.make_conninfo(seeded.db_url, dbname=target)
    with psycopg.connect(copy_url) as conn:
        assert conn.execute("select count(*), sum(id) from bk_events").fetchone() == before["events"][:2]
        owner = conn.execute("select tableowner from pg_tables where tablename = 'bk_events'").fetchone()[0]
        assert owner == "transcribe"
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute(f"drop database {target} with (force)")
        for (name,) in conn.execute("select datname from pg_database where datname like 'transcribe_before_%'").fetchall():
            conn.execute(f'drop database "{name}"')


def test_row_counts_match_the_dump_while_rows_are_written(benv, seeded, runner):
    """The manifest's counts come from the dump's own snapshot: rows inserted while pg_dump
    runs are in neither, so a restore test of that backup finds exactly the counted rows."""
    if benv.kind != "file":
        pytest.skip("the snapshot does not depend on the repository")
    import threading

    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute("drop table if exists bk_writes")
        conn.execute("create table bk_writes (id bigserial primary key, at timestamptz default now())")
    stop, written = threading.Event(), threading.Event()

    def write() -> None:
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("insert into bk_writes default values")
                if conn.execute("select count(*) from bk_writes").fetchone()[0] >= 50:
                    written.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        assert written.wait(30)
        made = ok(runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "db", "--json"]))
    finally:
        stop.set()
        writer.join()
    manifest = json.loads(benv.repo().get_bytes(f"{made['id']}/manifest.json"))
    counted = {(s, t): n for s, t, n in manifest["db"]["tables"]}[("public", "bk_writes")]
    with psycopg.connect(seeded.db_url) as conn:
        final = conn.execute("select count(*) from bk_writes").fetchone()[0]
    assert 50 <= counted < final  # rows went in before and after the snapshot
    checked = ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", benv.name, "--restore-test", "--json"]))
    assert checked["ok"] and checked["restore_test"]["db"]["rows"] >= counted
