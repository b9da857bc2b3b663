"""Issue 22 review: `backup verify-chain` said a chain was restorable when the restore
could not use it: it checked only each base backup's record (base.json), never that its tar is
there and whole, nor that an incremental's parent exists; restore picked one tip and failed
("unexpected NotFound", "needs X, which is missing or damaged", "failed authentication").

Now verify names the broken base backup (exit 1, in unusable_base_backups) and its windows
leave it out; restore takes the newest whole chain (every row live restored) or, when none is
left, refuses in one line with exit 2 naming what is damaged. Never "unexpected".
"""
from __future__ import annotations

import json
import shutil


def _verify(pitr, runner):
    r = pitr.cli(runner, "backup", "verify-chain", "--json")
    return r.exit_code, json.loads(r.stdout)


def _restore_latest(pitr, runner, broken: str, older: bool = True) -> None:
    """Restore 'latest' beside: all rows live now from an older whole chain, or a one-line refusal
    (exit 2) naming `broken` when no `older` whole chain exists."""
    import psycopg

    from opsctl.local import postgres as pg

    live = {r[0] for r in pitr.sql("select id from events")}
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert "unexpected" not in r.output, r.output
    print("RESTORE", r.exit_code, r.output[-300:])
    if older:
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        try:
            assert broken not in doc["chain"], doc
            # said, with why (breaker 60 F2: left out silently when the inventory found it unusable)
            assert any(broken in note for note in doc["notes"]), doc
            with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
                got = {row[0] for row in conn.execute("select id from events")}
        finally:
            pg.stop(doc["pid"])
        assert got == live
    else:
        assert r.exit_code == 2 and broken in r.output and "\n" not in r.output.strip(), r.output


def _assert_named(code: int, doc: dict, broken: str) -> None:
    assert code == 1 and not doc["ok"], doc
    assert broken in doc["unusable_base_backups"], doc
    assert broken not in {w["base"] for w in doc["windows"]}, doc


def test_verify_names_a_base_backup_whose_tar_is_gone_and_restore_passes_over_it(pitr, runner, tmp_path):
    from opsctl.pitr import layout

    r = pitr.cli(runner, "backup", "base", "--json")
    assert r.exit_code == 0, r.output
    bid = json.loads(r.stdout)["id"]
    pitr.sql("insert into events(note) select 'x' from generate_series(1, 20)")
    pitr.wait_archived()
    tar = pitr.root / "repo" / layout.base_prefix(pitr.sysid()) / bid / "base.tar.zst"
    shutil.move(str(tar), str(tmp_path / "tar"))
    try:
        code, doc = _verify(pitr, runner)
        _assert_named(code, doc, bid)
        assert "missing" in doc["unusable_base_backups"][bid]
        _restore_latest(pitr, runner, bid, older=False)  # the module's first base backup: none older
    finally:
        shutil.move(str(tmp_path / "tar"), str(tar))


def test_verify_names_an_incremental_whose_parent_is_gone(pitr, runner, tmp_path):
    from opsctl.pitr import layout

    r = pitr.cli(runner, "backup", "base", "--json")
    full = json.loads(r.stdout)["id"]
    pitr.sql("insert into events(note) select 'y' from generate_series(1, 20)")
    r = pitr.cli(runner, "backup", "base", "--incremental", "--json")
    assert r.exit_code == 0, r.output
    inc = json.loads(r.stdout)["id"]
    pitr.sql("insert into events(note) select 'z' from generate_series(1, 20)")
    pitr.wait_archived()
    folder = pitr.root / "repo" / layout.base_prefix(pitr.sysid()) / full
    shutil.move(str(folder), str(tmp_path / "full"))
    try:
        code, doc = _verify(pitr, runner)
        _assert_named(code, doc, inc)
        assert full in doc["unusable_base_backups"][inc]
        _restore_latest(pitr, runner, inc)
    finally:
        shutil.move(str(tmp_path / "full"), str(folder))


def test_verify_names_a_tampered_base_backup_tar_and_restore_passes_over_it(pitr, runner, tmp_path):
    from opsctl.pitr import layout

    r = pitr.cli(runner, "backup", "base", "--json")
    bid = json.loads(r.stdout)["id"]
    pitr.sql("insert into events(note) select 't' from generate_series(1, 20)")
    pitr.wait_archived()
    tar = pitr.root / "repo" / layout.base_prefix(pitr.sysid()) / bid / "base.tar.zst"
    shutil.copy(tar, tmp_path / "tar")
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the authenticated read finds it
    tar.write_bytes(bytes(data))
    try:
        code, doc = _verify(pitr, runner)
        _assert_named(code, doc, bid)
        _assert_readable_at_80_columns(pitr, runner, doc, bid)
        # the restore's plan lists (no tar read) and picks it; unpacking finds the damage and
        # the restore goes on from the older whole chain
        _restore_latest(pitr, runner, bid)
    finally:
        shutil.copy(tmp_path / "tar", tar)


def _assert_readable_at_80_columns(pitr, runner, doc: dict, damaged: str) -> None:
    """verify-chain's text at 80 columns: each window's base backup id whole, no line wider,
    and the damaged base backup's reason said once (it was printed three times)."""
    from opsctl.cli import app

    r = runner.invoke(app, ["--root", str(pitr.root), "backup", "verify-chain"], env={"COLUMNS": "80"})
    print(r.output)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    # errors are one line, and so are log records without a terminal (output._RichLater)
    report = [line for line in lines if not line.startswith(("opsctl: error:", "WARNING ", "INFO "))]
    assert all(len(line) <= 80 for line in report), [line for line in report if len(line) > 80]
    for w in doc["windows"]:
        assert any(w["base"] in line for line in lines), (w["base"], r.output)
    why = doc["unusable_base_backups"][damaged]
    assert " ".join(r.output.split()).count(" ".join(why.split())) == 1, r.output
    assert why.count(f"/{damaged}/base.tar.zst") == 1, why  # the object named once in its reason


def test_a_record_copied_from_another_base_backup_is_named_where_restore_leaves_it_out(pitr, runner):
    """Breaker 60 F2: an incremental's base.json and tar copied over another one's (its record
    fails its seal there, and every incremental after it loses its parent): the restore from
    the older chain named none of the base backups it left out. It names each newer one, with
    why; a target before them names none (they could not have been chosen)."""
    import datetime as dt
    import time

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    def take(*flags) -> dict:
        r = pitr.cli(runner, "backup", "base", *flags, "--json")
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    def restore(target: str) -> tuple[dict, list[str]]:
        """A restore beside to `target` (its server stopped): its document and its note on the
        newer unusable base backups ([] or one line)."""
        r = pitr.cli(runner, "restore", "--to-time", target, "--beside", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        pg.stop(doc["pid"])
        return doc, [n for n in doc["notes"] if "newer than the chain used are unusable" in n]

    full = take()
    pitr.sql("insert into events(note) select 'c' from generate_series(1, 20)")
    pitr.wait_archived()
    before = dt.datetime.now(dt.timezone.utc).isoformat()
    time.sleep(1.1)  # ids name the second a base backup started: the next one's is after `before`
    inc1 = take("--incremental")["id"]
    pitr.sql("insert into events(note) select 'd' from generate_series(1, 20)")
    inc2 = take("--incremental")["id"]
    pitr.sql("insert into events(note) select 'e' from generate_series(1, 20)")
    pitr.wait_archived()
    folder = pitr.root / "repo" / layout.base_prefix(pitr.sysid())
    saved = {name: (folder / inc1 / name).read_bytes() for name in ("base.json", "base.tar.zst")}
    for name in saved:
        shutil.copy(folder / inc2 / name, folder / inc1 / name)
    try:
        doc, said = restore("latest")
        assert doc["chain"][-1] == full["id"], doc
        assert len(said) == 1 and inc1 in said[0] and inc2 in said[0] and "copied here" in said[0], doc
        doc, said = restore(before)
        assert not said, doc
    finally:
        for name, data in saved.items():
            (folder / inc1 / name).write_bytes(data)
    # inc1 whole again but its tar altered (same size): found while unpacking and passed over;
    # inc2, whole, is built on it and left out too, and named (breaker 61 G3)
    tar = folder / inc1 / "base.tar.zst"
    data = bytearray(saved["base.tar.zst"])
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    try:
        doc, said = restore("latest")
        assert doc["chain"][-1] == full["id"], doc
        assert [n for n in doc["notes"] if n.startswith("passed over damaged base backup(s): ") and inc1 in n], doc
        assert len(said) == 1 and f"{inc2} (built on a base backup passed over as damaged)" in said[0], doc
        assert inc1 not in said[0], doc  # named once, by the passed-over note
    finally:
        tar.write_bytes(saved["base.tar.zst"])
