"""Retention of the chain: older full base backups go, and WAL only where no kept base backup needs it."""

from __future__ import annotations

import json
from functools import partial


def test_prune_keeps_the_newest_full_chain_and_the_wal_it_needs(pitr, runner):
    from opsctl.pitr import layout

    first = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)
    pitr.sql("insert into events(note) select 'old' from generate_series(1, 10)")
    pitr.wait_archived()
    second = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)
    inc = json.loads(pitr.cli(runner, "backup", "base", "--incremental", "--json").stdout)
    pitr.sql("insert into events(note) select 'new' from generate_series(1, 10)")
    pitr.wait_archived()
    sysid = pitr.sysid()
    keep_from = layout.segno(layout.lsn(second["start_lsn"]))

    def wal() -> list[int]:
        files, _ = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))
        return sorted(layout.parse_segment(f)[1] for f in files if len(f) == 24)

    assert min(wal()) < keep_from
    dry = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "1", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["removed"] == [first["id"]] and min(wal()) < keep_from  # nothing deleted
    r = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "1", "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["removed"] == [first["id"]] and doc["kept"] == [second["id"], inc["id"]] and doc["wal_removed"] > 0
    assert min(wal()) == keep_from
    v = pitr.cli(runner, "backup", "verify-chain", "--json")
    assert v.exit_code == 0, v.output
    assert [b["id"] for b in json.loads(v.stdout)["base_backups"]] == [second["id"], inc["id"]]
    latest = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert latest.exit_code == 0, latest.output
    from opsctl.local import postgres as pg

    restored = json.loads(latest.stdout)
    pg.stop(restored["pid"])
    assert restored["tables"]["public.events"] == pitr.sql("select count(*) from events")[0][0]
    before = pitr.cli(runner, "restore", "--to-time", first["finished_at"], "--beside")
    assert before.exit_code == 2 and "before the oldest base backup a restore can use" in before.output
    # its finish, the earliest restorable time, is given whole (breaker 20 F5: cut to the second,
    # "12:45:51.600 is before ... finished 12:45:51")
    import datetime as dt

    finished = dt.datetime.fromisoformat(second["finished_at"].replace("Z", "+00:00"))
    assert f"finished {finished.isoformat()}" in before.output, (before.output, second["finished_at"])


def test_keep_full_zero_is_refused(pitr, runner):
    r = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "0", "--yes")
    assert r.exit_code == 2 and "at least 1" in r.output


def test_a_base_backup_whose_wal_is_only_queued_is_waiting_not_damaged(pitr, runner):
    """Breaker F14: with the archiver stopped and backup.base_wal_wait 0, a new full base backup's
    WAL to consistency waits in the local queue; prune-chain called it damaged ("... is missing",
    `damaged` in --json) while verify-chain said "queued", and its text said "kept 2" while
    three stayed. It is not counted yet (`waiting`), never removed, and the count says what stays."""
    import os
    import re
    import signal

    import yaml

    from opsctl.pitr import local as pitr_local

    path = pitr.root / "opsctl.yaml"
    original = path.read_text()
    doc = yaml.safe_load(original)
    doc["environments"]["local"]["backup"]["base_wal_wait"] = 0
    pid = pitr_local.archiver_pid(pitr.state())
    try:
        path.write_text(yaml.safe_dump(doc))
        os.kill(pid, signal.SIGSTOP)
        try:
            queued = _base(pitr, runner)
            dry = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "1", "--dry-run", "--json")
            text = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "1", "--dry-run")
            chain = pitr.cli(runner, "backup", "verify-chain", "--json")
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        path.write_text(original)
    assert dry.exit_code == 0 and text.exit_code == 0, (dry.output, text.output)
    plan = json.loads(dry.stdout)
    assert queued not in plan["damaged"] and queued not in plan["removed"], plan
    assert "not archived yet" in plan["waiting"][queued] and "local WAL queue" in plan["waiting"][queued], plan
    assert queued in plan["left"] and queued not in plan["kept"], plan
    said = " ".join(text.output.split())
    assert "is missing" not in said and "(left for you)" not in said, said
    assert f"base backup {queued} not counted: its WAL is not archived yet" in said, said
    assert re.search(rf"left, not counted yet \(their WAL is not archived yet[^)]*\): {queued}", said), said
    # what stays is counted: the counted chain and the one waiting
    stay = len(plan["kept"]) + len(plan["left"])
    assert f"kept {stay} base backup(s) ({len(plan['left'])} of them not counted, below)" in said, said
    # verify-chain says the same segment is queued, not missing
    assert any(p["kind"] == "queued" for p in json.loads(chain.stdout)["problems"]), chain.stdout
    pitr.wait_archived()
    again = json.loads(pitr.cli(runner, "backup", "prune-chain", "--keep-full", "1", "--dry-run", "--json").stdout)
    assert again["waiting"] == {} and queued in again["kept"], again  # archived, it counts


def test_prune_counts_only_base_backups_proven_restorable(pitr, runner):
    """A full base backup damaged inside (one byte of its tar flipped, size unchanged) and a newer
    one whose WAL to consistency is tampered are not counted by --keep-full 1: the older good one
    is kept with the WAL it needs, the damaged ones are named and left, and a restore still works."""
    from opsctl.pitr import layout

    good = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)
    pitr.sql("insert into events(note) values ('after good')")
    rotten = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)
    pitr.sql("insert into events(note) values ('after rotten')")
    unsound = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)
    pitr.wait_archived()
    sysid = pitr.sysid()
    repo_dir = pitr.root / "repo"
    tar = repo_dir / layout.base_prefix(sysid) / rotten["id"] / "base.tar.zst"
    raw = bytearray(tar.read_bytes())
    raw[len(raw) // 2] ^= 1
    tar.write_bytes(bytes(raw))
    files, _ = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))
    start = layout.segment(unsound["timeline"], layout.segno(layout.lsn(unsound["start_lsn"])))
    for obj in files[start]:
        seg = repo_dir / obj.name
        raw = bytearray(seg.read_bytes())
        raw[len(raw) // 2] ^= 1
        seg.write_bytes(bytes(raw))
    r = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "1", "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["kept"] == [good["id"]]
    assert set(doc["damaged"]) == {rotten["id"], unsound["id"]}
    assert "fails its check" in doc["damaged"][rotten["id"]] and start in doc["damaged"][unsound["id"]]
    assert f"base backup {rotten['id']} not counted" in r.output  # said to people too (stderr)
    assert good["id"] not in doc["removed"] and rotten["id"] not in doc["removed"]
    listed = {n.split("/")[-2] for n in pitr.repo().names(layout.base_prefix(sysid))}
    assert {good["id"], rotten["id"], unsound["id"]} <= listed
    # the WAL the good one needs is kept (the next test's restore replays it)
    assert doc["wal_kept_from"] == layout.segment(good["timeline"], layout.segno(layout.lsn(good["start_lsn"])))


def test_prune_removes_a_dead_interrupted_base_backup_and_never_a_running_one(pitr, runner):
    """A base backup killed (-9) mid-upload left its start record and a partial tar that no prune
    removed. Now prune removes one provably dead (its process gone, its PID reused by a newer
    process, another host's older than the lease, no start record) with its unfinished upload,
    and leaves one whose process still runs or another host's recent one."""
    import datetime as dt
    import os
    import subprocess

    from opsctl.backup import catalog
    from opsctl.pitr import base as bb
    from opsctl.pitr import layout

    gone = subprocess.Popen(["true"])
    gone.wait()
    now = dt.datetime.now(dt.timezone.utc)
    head = pitr.root / "repo" / layout.base_prefix(pitr.sysid())
    dead = {"killed": {"host": os.uname().nodename, "pid": gone.pid},
            "reused": {"host": os.uname().nodename, "pid": os.getpid()},  # this process started after it
            "elsewhere-old": {"host": "another-host", "pid": os.getpid()}}
    alive = {"running": {"host": os.uname().nodename, "pid": os.getpid()},
             "elsewhere-new": {"host": "another-host", "pid": os.getpid()}}
    ids = {}
    for n, (name, who) in enumerate([*dead.items(), *alive.items(), ("no-record", None)]):
        started = now - (dt.timedelta(days=2) if name in ("elsewhere-old", "reused") else dt.timedelta(0))
        bid = catalog.new_id(now - dt.timedelta(minutes=n + 1))
        ids[name] = bid
        folder = head / bid
        folder.mkdir(parents=True)
        if who is not None:
            (folder / bb.IN_PROGRESS).write_text(json.dumps({**who, "started_at": started.isoformat()}))
        (folder / "base.tar.zst.partial").write_bytes(b"half a tar")
        if name == "no-record":
            (folder / "base.tar.zst").write_bytes(b"a whole tar, never recorded")
    removed = {ids[n] for n in [*dead, "no-record"]}
    # verify-chain tells the dead from those that may still run, and counts neither as damage
    from opsctl.pitr import base as bb

    checked = pitr.cli(runner, "backup", "verify-chain", "--json")
    unusable = json.loads(checked.stdout)["unusable_base_backups"]
    assert {bid for bid, why in unusable.items() if why == bb.INTERRUPTED} == removed, unusable
    assert {bid for bid, why in unusable.items() if why == bb.UNFINISHED} == {ids[n] for n in alive}, unusable
    assert not set(json.loads(checked.stdout)["broken_base_backups"]) & (removed | {ids[n] for n in alive})
    told = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "5", "--dry-run")  # text: names each
    assert told.exit_code == 0, told.output
    said = " ".join(told.output.split()).split("would remove 4 interrupted (dead, unfinished): ", 1)[1]
    assert {i.strip() for i in said.split(";")[0].split(",")} == removed, told.output
    r = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "5", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)["interrupted"]) == removed
    left = {p.name for p in head.iterdir()}
    assert not removed & left and {ids[n] for n in alive} <= left
    assert (head / ids["running"] / "base.tar.zst.partial").exists()
    import shutil

    for name in alive:
        shutil.rmtree(head / ids[name])


def test_drop_damaged_removes_what_restores_nothing_and_never_an_unauthentic_record(pitr, runner):
    """Breaker 27 F6: a damaged base backup stayed for good (prune-chain leaves it for a person),
    so the nightly's verify-chain failed every night with nothing in opsctl to remove it.
    `--drop-damaged` is that person's decision: the damaged one and the incremental built on it
    go; a folder whose record is not authentic (another key's, planted) never does."""
    import os
    import shutil

    from opsctl.pitr import layout

    base = partial(_base, pitr, runner)
    rotten = base()
    pitr.sql("insert into events(note) values ('on the rotten one')")
    on_rotten = base("--incremental")
    pitr.sql("insert into events(note) values ('before the good one')")
    good = base()
    pitr.sql("insert into events(note) values ('on the good one')")
    good_inc = base("--incremental")  # damaged below: a kept chain's damaged link (breaker 28 F11)
    pitr.wait_archived()
    folder = pitr.root / "repo" / layout.base_prefix(pitr.sysid())
    tar = folder / good_inc / "base.tar.zst"
    tar.write_bytes(os.urandom(tar.stat().st_size))
    # every full one but the newest damaged (this module's earlier ones too): no older one is
    # proven, so only the damaged ones' WAL is older than what `good` needs
    for f in folder.iterdir():
        record = f / "base.json"
        if f.name != good and record.exists() and json.loads(record.read_text())["kind"] == "full":
            tar = f / "base.tar.zst"
            tar.write_bytes(os.urandom(tar.stat().st_size))
    planted = folder / "20261201T000000Z-beef"  # a copy of a whole one under another id: its record's seal fails
    shutil.copytree(folder / good, planted)
    assert pitr.cli(runner, "backup", "verify-chain").exit_code == 1

    left = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "2", "--dry-run", "--json")
    doc = json.loads(left.stdout)
    assert doc["dropped"] == {} and rotten in doc["damaged"] and (folder / rotten).is_dir(), doc
    # left for a person with its WAL: repaired, it restores the times it covered (breaker 27 F13)
    start = json.loads((folder / rotten / "base.json").read_text())["start_lsn"]
    assert layout.parse_segment(doc["wal_kept_from"])[1] <= layout.segno(layout.lsn(start)), doc
    r = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "2", "--drop-damaged", "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert good in doc["kept"] and {rotten, on_rotten, good_inc} <= set(doc["dropped"]), doc
    assert not set(doc["kept"]) & set(doc["dropped"]), doc
    assert "fails its check" in doc["dropped"][rotten], doc  # read now, not taken from the record
    assert planted.name not in doc["dropped"] and planted.is_dir()
    # left, and said (breaker 28 F5): a copy of another folder's record, not "another key's"
    assert f"belongs to base backup {good}: copied here?" in doc["unauthentic"][planted.name], doc
    told = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "2", "--dry-run")
    assert "record not authentic (check, then remove by hand)" in " ".join(told.output.split()), told.output
    assert not (folder / rotten).exists() and not (folder / on_rotten).exists()
    shutil.rmtree(planted)
    after = pitr.cli(runner, "backup", "verify-chain", "--json")  # (an earlier test's tampered WAL still fails it)
    assert not {rotten, on_rotten} & set(json.loads(after.stdout)["unusable_base_backups"]), after.stdout


def test_drop_damaged_leaves_a_full_whose_own_wal_is_damaged_and_the_incremental_that_restores(pitr, runner):
    """Breaker 28 F2: a full base backup whose WAL from start to stop is damaged restores nothing
    alone, but an incremental on it combines its tar with the incremental's own WAL and
    restores: `--drop-damaged` deleted both, the only chain that restored to now."""
    from opsctl.pitr import layout

    full = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)
    pitr.sql("insert into events(note) values ('on the full one')")
    inc = pitr.cli(runner, "backup", "base", "--incremental", "--json")
    assert inc.exit_code == 0, inc.output
    pitr.wait_archived()
    sysid = pitr.sysid()
    files, _ = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))
    start = layout.segment(full["timeline"], layout.segno(layout.lsn(full["start_lsn"])))
    for obj in files[start]:
        seg = pitr.root / "repo" / obj.name
        raw = bytearray(seg.read_bytes())
        raw[len(raw) // 2] ^= 1
        seg.write_bytes(bytes(raw))
    plan = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "3", "--drop-damaged", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output
    doc = json.loads(plan.stdout)
    assert start in doc["damaged"].get(full["id"], ""), doc  # named: its WAL to consistency fails
    assert not {full["id"], json.loads(inc.stdout)["id"]} & set(doc["dropped"]), doc


def test_a_drop_cut_short_after_a_record_is_finished_by_the_next_run(pitr, runner):
    """Breaker 28 F4: `--drop-damaged` deletes each base backup's record first; killed right
    after one, the next run removed the folder (interrupted) but spared the incrementals on it
    as "built on a record that is not authentic", and only a third run dropped them, while
    verify-chain failed on them. A provably dead folder without a record is nobody's record:
    what is built on it restores nothing and goes in the same run."""
    from opsctl.pitr import layout

    base = partial(_base, pitr, runner)
    cut = base()
    pitr.sql("insert into events(note) values ('on the cut one')")
    on_cut = base("--incremental")
    pitr.sql("insert into events(note) values ('on its incremental')")
    on_on_cut = base("--incremental")
    pitr.wait_archived()
    folder = pitr.root / "repo" / layout.base_prefix(pitr.sysid())
    (folder / cut / "base.json").unlink()  # the drop's first delete, then the kill
    # breaker 30 F7: the plan called the incrementals "damaged", which they are not: it says why each goes
    plan = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "3", "--drop-damaged", "--dry-run")
    assert plan.exit_code == 0 and "damaged:" not in plan.stdout, plan.output
    assert f"{on_cut} (its parent base backup {cut} is missing" in " ".join(plan.stdout.split()), plan.stdout
    r = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "3", "--drop-damaged", "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert cut in doc["interrupted"] and {on_cut, on_on_cut} <= set(doc["dropped"]), doc
    assert f"its parent base backup {cut} is missing" in doc["dropped"][on_cut], doc
    assert not doc["unauthentic"], doc
    assert not any((folder / b).exists() for b in (cut, on_cut, on_on_cut))


def test_a_record_that_is_a_folder_is_left_for_a_person(pitr, runner):
    """Breaker 30 F6: base.json replaced by a folder read as "no record": the base backup was
    taken for an interrupted one, and prune-chain deleted its sound tar (with --drop-damaged,
    its incrementals too). Objects under the record's name are neither a record nor the
    absence of one: left, and said."""
    import shutil

    from opsctl.pitr import layout

    base = partial(_base, pitr, runner)
    full = base()
    pitr.sql("insert into events(note) values ('on the shadowed one')")
    on_full = base("--incremental")
    folder = pitr.root / "repo" / layout.base_prefix(pitr.sysid()) / full
    record = folder / "base.json"
    shutil.move(record, folder / "aside")
    record.mkdir()
    (record / "x").write_text("not a record")
    try:
        r = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "3", "--drop-damaged", "--yes", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        assert full not in doc["interrupted"] and not {full, on_full} & set(doc["dropped"]), doc
        assert "base.json is not a file" in doc["unauthentic"][full], doc
        assert (folder / "base.tar.zst").is_file() and (folder.parent / on_full).is_dir()
    finally:
        shutil.rmtree(record)
        shutil.move(folder / "aside", record)


def _base(pitr, runner, *args: str) -> str:
    """`backup base ARGS` (full by default); the new base backup's id."""
    r = pitr.cli(runner, "backup", "base", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["id"]


def test_local_down_stops_a_beside_restored_server(pitr, runner):
    """A `restore --beside` copy kept running after `local down --purge` deleted its data
    directory. Now down stops every PostgreSQL on a data directory of the platform's folder.
    (Last in the module: it takes the platform down.)"""
    from opsctl.local import platform, procs

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    beside = json.loads(r.stdout)["pid"]
    assert procs.alive(beside)
    stopped = platform.down(pitr.project(), purge=True)
    assert "postgres-beside" in stopped and not procs.alive(beside), stopped
