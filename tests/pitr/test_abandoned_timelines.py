"""Issue 22 review (breaker11): the repository's abandoned-timeline markers.

- A marker never outranks a live server on that timeline: a timeline number made again (the
  abandoned one's history never reached the archive) with the same history text was passed
  over while the server lived on it, and a restore to latest dropped its rows. An in-place
  restore bringing a timeline in removes that timeline's markers.
- An undone swap files its marker under the restored cluster, not under the data directory put
  back (after a lost disk that is another, empty cluster): the marker was filed under the new
  cluster and the next restore followed the abandoned branch, silently short.
- What a killed undo noted locally is filed by the next `local up`, restore or verify-chain,
  or dropped when the restored directory stayed live.
- After a lost disk, `--timeline N` is checked against the cluster restored (it was refused,
  naming the new empty cluster), and verify-chain looks at that cluster too.
The tests run in order on one cluster (the last one loses its disk).
"""
from __future__ import annotations

import json

import pytest

from test_restore_swap import _base_backup, _restore, _undone_swap  # noqa: E402


def _history(pitr, tli: int) -> str:
    return (pitr.state().data("postgres") / "pg_wal" / f"{tli:08X}.history").read_text()


def _path(pitr, runner, *extra: str) -> list[int]:
    checked = pitr.cli(runner, "backup", "verify-chain", "--json", *extra)
    return [p["timeline"] for p in json.loads(checked.stdout)["timeline_path"]]


def test_a_marker_never_outranks_the_live_server_on_its_timeline(pitr, runner):
    from opsctl.local import postgres as pg
    from opsctl.pitr import chain, layout

    _base_backup(pitr, runner)
    pitr.wait_archived()
    result = _restore(pitr)  # in place: the live server now lives on a new timeline
    tli = result.timeline
    pitr.sql("insert into events(note) select 'on the new timeline' from generate_series(1, 40)")
    pitr.wait_archived()
    rows = pitr.sql("select count(*) from events")[0][0]
    sysid = pitr.sysid()
    # a marker for this very timeline with its very history, as an earlier undone restore whose
    # history never reached the archive leaves it when the number is made again
    chain.abandon(pitr.repo(), pitr.key(), sysid, tli, _history(pitr, tli), "made again")
    assert _path(pitr, runner)[-1] == tli
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    pg.stop(doc["pid"])
    assert doc["tables"]["public.events"] == rows
    # the next in-place restore brings timeline tli + 1 in: a marker of that number goes
    chain.abandon(pitr.repo(), pitr.key(), sysid, tli + 1, "1\t0/0\tplanted\n", "made again")
    chain.unabandon(pitr.repo(), sysid, tli)
    assert _restore(pitr).timeline == tli + 1
    assert not pitr.repo().names(layout.abandoned_prefix(sysid))


def test_the_swap_notes_its_timeline_before_queueing_its_history_and_drops_it_when_final(pitr, runner,
                                                                                         monkeypatch):
    """Breaker 13: the note was written only in the undo, after the history was queued; the
    archiver (every 0.5 s) published the history first, so holding it back never applied. Now the
    note stands from before the history is queued until the swap is final or undone."""
    from opsctl.pitr import restore as pr

    seen, real = [], pr._queue_history

    def queue(live, q):
        seen.append([n["timeline"] for n in pr.read_notes(pr._notes_path(pitr.state()))])
        return real(live, q)

    monkeypatch.setattr(pr, "_queue_history", queue)
    result = _restore(pitr)
    assert seen == [[result.timeline]]
    assert not pr._notes_path(pitr.state()).exists()


def test_an_undone_swap_gives_a_built_standby_the_abandoned_history(pitr, runner, monkeypatch):
    """Breaker 13: a standby built before an undone restore promoted onto the abandoned timeline's
    number (its restore_command knew no history of it): the failover removed the record and
    archiving stopped on the history conflict. The undo stages the history for it now."""
    import shutil

    from opsctl.pitr import archive, layout, restore as pr

    state = pitr.state()
    stage = state.data("postgres-standby-wal")
    stage.mkdir(mode=0o700)
    try:
        before = archive.control_timeline(state.data("postgres"))
        _undone_swap(pitr, monkeypatch)
        staged = sorted(p.name for p in stage.iterdir())
        assert layout.history_file(before + 1) in staged, staged
        assert archive.control_timeline(pitr.state().data("postgres")) == before
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    assert not pr._notes_path(state).exists()


def test_a_note_a_killed_undo_left_is_filed_or_dropped(pitr, runner):
    """restore.record_abandoned on the notes _note_abandoned writes: a timeline the live data
    directory is not on is filed as abandoned; one it is on is dropped (and its marker removed)."""
    from opsctl.pitr import archive, layout
    from opsctl.pitr import restore as pr

    state, sysid = pitr.state(), pitr.sysid()
    live_tli = archive.control_timeline(state.data("postgres"))
    earlier = set(pitr.repo().names(layout.abandoned_prefix(sysid)))  # what earlier tests' undos recorded
    pr._note_abandoned(state, sysid, live_tli + 5, "1\t0/0\tno recovery target specified\n")
    pr._note_abandoned(state, sysid, live_tli, _history(pitr, live_tli))
    # the live timeline's number with another history (made again elsewhere) is no proof of life
    pr._note_abandoned(state, sysid, live_tli, "1\t0/0\tanother history\n")
    # while another restore runs (its swap may be mid-undo) nothing is decided
    record = state.folder / "restores" / "pitr-run-20990101T000000Z-1-ab.json"
    me = __import__("psutil").Process()
    record.write_text(json.dumps({"opsctl_pid": me.pid, "opsctl_started": me.create_time()}))
    try:
        assert pr.record_abandoned(pitr.project(), pitr.env(), state) == []
        assert pr._notes_path(state).exists()
    finally:
        record.unlink()
    assert pr.record_abandoned(pitr.project(), pitr.env(), state) == [live_tli + 5, live_tli]
    marked = [n.rpartition("/")[2][:8] for n in set(pitr.repo().names(layout.abandoned_prefix(sysid))) - earlier]
    assert sorted(marked) == sorted([f"{live_tli + 5:08X}", f"{live_tli:08X}"])
    assert _path(pitr, runner)[-1] == live_tli  # a record of another history does not touch this one
    assert not pr._notes_path(state).exists()
    pitr.repo().delete_names(list(set(pitr.repo().names(layout.abandoned_prefix(sysid))) - earlier))


@pytest.mark.parametrize("damage", ["null", '{"a": 1}', "[{", '[{"sysid": 1}]'])
def test_a_damaged_notes_file_is_moved_aside_and_stops_nothing(pitr, runner, damage):
    """A notes file that is not a list of notes made verify-chain and restore fail with an
    'unexpected' TypeError, and an undo reading it stopped half-way."""
    from opsctl.pitr import restore as pr

    state = pitr.state()
    path = pr._notes_path(state)
    path.write_text(damage)
    try:
        checked = pitr.cli(runner, "backup", "verify-chain", "--json")
        assert "unexpected" not in checked.output and checked.exit_code in (0, 1), checked.output
        assert not path.exists() and path.with_name(path.name + ".damaged").exists()
        pr._note_abandoned(state, pitr.sysid(), 99, "x")  # an undo's note after damage: a fresh list
        assert [n["timeline"] for n in json.loads(path.read_text())] == [99]
    finally:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".damaged").unlink(missing_ok=True)


def test_the_archiver_holds_back_a_noted_history_until_its_marker_is_filed(pitr, tmp_path):
    """The undo's marker could not be filed (the repository unreachable): the archiver still
    published the abandoned history, and after a lost disk (the note with it) restores
    followed the abandoned timeline. A history a note names now waits in the queue (a queue of
    its own here: the platform's archiver drains the real one)."""
    from opsctl.pitr import archive, layout

    sysid = pitr.sysid()
    queue = tmp_path / "queue"
    queue.mkdir()
    archiver = archive.Archiver(pitr.repo(), pitr.key(), sysid, queue, data=pitr.state().data("postgres"))
    name, text = layout.history_file(77), "1\t0/3000000\tno recovery target specified\n"
    (queue / archive.NOTES).write_text(json.dumps([{"sysid": sysid, "timeline": 77, "history": text}]))
    (queue / name).write_text(text)
    stored = f"{layout.wal_prefix(sysid)}{name}."
    try:
        archiver.drain()
        assert (queue / name).exists() and not pitr.repo().names(stored)
        (queue / archive.NOTES).unlink()  # the marker was filed (or the note dropped): it goes
        archiver.drain()
        assert not (queue / name).exists() and pitr.repo().names(stored)
    finally:
        pitr.repo().delete_names(list(pitr.repo().names(stored)))


def test_after_a_lost_disk_an_undone_swap_marks_the_restored_cluster_and_timeline_n_works(
        pitr, runner, monkeypatch):
    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    pitr.sql("insert into events(note) select 'archived' from generate_series(1, 25)")
    pitr.wait_archived()
    rows = pitr.sql("select count(*) from events")[0][0]
    old = pitr.sysid()
    (old_tli,) = pitr.sql("select timeline_id from pg_control_checkpoint()", db="postgres")[0]
    pg.stop(pitr.pid)
    data = pitr.state().data("postgres")
    data.rename(data.with_name("postgres.lost-disk"))  # the disk holding it is lost
    pitr.start_postgres()  # `opsctl local up`: a new, empty cluster
    new = pitr.sysid()
    assert new != old
    # verify-chain and --timeline look at the cluster a restore restores, not the empty one
    assert _path(pitr, runner)[-1] == old_tli
    assert _path(pitr, runner, "--timeline", str(old_tli))[-1] == old_tli
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--timeline", str(old_tli), "--json")
    assert r.exit_code == 0, r.output
    pg.stop(json.loads(r.stdout)["pid"])
    assert json.loads(r.stdout)["tables"]["public.events"] == rows
    # an in-place restore of the old cluster, undone after its swap: its timeline is the old
    # cluster's, and so is the marker
    _undone_swap(pitr, monkeypatch)
    assert pitr.sysid() == new  # the empty cluster is back in place
    assert not pitr.repo().names(layout.abandoned_prefix(new))
    assert f"{old_tli + 1:08X}" in [n.rpartition("/")[2][:8] for n in pitr.repo().names(layout.abandoned_prefix(old))]
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    pg.stop(doc["pid"])
    assert doc["tables"]["public.events"] == rows


@pytest.fixture(autouse=True)
def _no_notes_left(pitr):
    from opsctl.pitr import restore as pr

    yield
    assert not pr._notes_path(pitr.state()).exists()
