"""A restore to 'latest' first waits (up to restore.QUEUE_WAIT, 30 s) for the local WAL queue
to be uploaded. Breaker 15 C: the wait showed nothing, so half a minute read as a hang. It
now says once what it waits for; with no archiver running it does not wait, and says why."""
from __future__ import annotations

import logging
import threading

from opsctl.local.state import LocalState
from opsctl.pitr import local as pitr_local
from opsctl.pitr import restore

SEGMENT = "000000010000000000000007"


def _stop_archiver(pitr) -> None:
    """Stop the platform's WAL archiver: what is archived from now on waits in the local queue."""
    from opsctl.local import state as st

    folder = st.folder_for(pitr.root)
    with st.locked(folder):
        state = st.load(folder)
        pitr_local.stop_archiver(state)
        state.save()


def _state(tmp_path) -> LocalState:
    state = LocalState(folder=tmp_path)
    pitr_local.queue_dir(state).mkdir(parents=True)
    (pitr_local.queue_dir(state) / SEGMENT).write_bytes(b"wal")
    return state


def test_the_wait_says_once_what_it_waits_for_and_ends_when_the_queue_drains(tmp_path, monkeypatch, caplog):
    state = _state(tmp_path)
    monkeypatch.setattr(pitr_local, "archiver_pid", lambda _state: 4242)  # an archiver runs
    drained = threading.Timer(1.0, (pitr_local.queue_dir(state) / SEGMENT).unlink)
    drained.start()
    with caplog.at_level(logging.INFO, logger="opsctl.pitr.restore"):
        notes = restore._wait_for_queue(state, timeout=20)
    drained.join()
    assert notes == []
    waits = [r.getMessage() for r in caplog.records if "waiting up to 20 s" in r.getMessage()]
    assert waits == ["waiting up to 20 s for the WAL archiver to upload 1 queued WAL file(s), so 'latest' "
                     "includes them"], caplog.text


def test_with_no_archiver_it_does_not_wait_and_notes_what_latest_left_out(tmp_path, monkeypatch, caplog):
    state = _state(tmp_path)
    monkeypatch.setattr(pitr_local, "archiver_pid", lambda _state: None)
    with caplog.at_level(logging.INFO, logger="opsctl.pitr.restore"):
        notes = restore._wait_for_queue(state, timeout=20)
    assert len(notes) == 1 and "1 WAL file(s) were not archived yet" in notes[0], notes
    assert "the WAL archiver was not running; 'opsctl local up' starts it" in notes[0], notes
    assert "waiting" not in caplog.text, caplog.text


def test_a_stopped_servers_ready_segments_are_not_waited_for_and_are_named(tmp_path, monkeypatch, caplog):
    """Breaker 18 F11: PostgreSQL dead with segments marked .ready (its archive_command was
    failing): 'latest' waited 30 s for 'queued' files no one would ever hand to the archiver,
    then blamed the archiver's empty log. A stopped server's .ready segments are named as never
    archived, where their commits are, and not waited for."""
    state = LocalState(folder=tmp_path)
    pitr_local.queue_dir(state).mkdir(parents=True)
    status = state.data("postgres") / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for seg in (SEGMENT, "000000010000000000000008"):
        (status / f"{seg}.ready").touch()
    monkeypatch.setattr(pitr_local, "archiver_pid", lambda _state: 4242)  # an archiver runs; the server does not
    with caplog.at_level(logging.INFO, logger="opsctl.pitr.restore"):
        notes = restore._wait_for_queue(state, timeout=2)
    assert "waiting" not in caplog.text, caplog.text
    assert len(notes) == 1 and f"2 WAL segment(s) ({SEGMENT} first) were never archived" in notes[0], notes
    assert str(status.parent) in notes[0] and "archiver" not in notes[0], notes
    # in place, that pg_wal moves aside with its data directory: the note says so, not a path
    # that then holds the restored cluster (breaker 20 F1)
    in_place = restore._wait_for_queue(state, timeout=2, beside=False)
    assert "kept with its data directory" in in_place[0] and str(status.parent) not in in_place[0], in_place


def test_latest_starts_a_stopped_archiver_and_restores_what_was_queued(pitr, runner):
    """Breaker 36 F5: with the archiver killed, 'latest' restored without the queued segments
    (exit 0, a note), and the platform's start after the swap archived them a second later.
    It now starts the archiver first, as `local up` does, and waits for the queue."""
    import json

    from pitr_support import beside_ids

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    _stop_archiver(pitr)
    assert pitr_local.archiver_pid(pitr.state()) is None
    pitr.commit_and_queue("queued while no archiver ran")
    want = {r[0] for r in pitr.sql("select id from events")}

    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert beside_ids(doc) == want
    assert not any("not archived yet" in n for n in doc.get("notes", [])), doc.get("notes")
    assert pitr_local.archiver_pid(pitr.state()) is not None


def test_latest_restores_from_a_base_backup_whose_wal_was_still_queued_when_it_began(pitr, runner):
    """The chain is chosen and its unpacking started before the queue is waited for; a base
    backup whose own WAL only reaches the repository during that wait is then the newest
    restorable one: the restore starts over from it, not from the older one chosen first."""
    import json
    import re

    from pitr_support import beside_ids

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    _stop_archiver(pitr)
    taken = pitr.cli(runner, "backup", "base", "--incremental", "--json")
    assert taken.exit_code == 1 and "the base backup is kept" in taken.output, taken.output
    newer = re.search(r"base backup (\S+) was taken", taken.output).group(1)
    pitr.commit_and_queue("after the newer base backup")
    want = {r[0] for r in pitr.sql("select id from events")}

    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["chain"][-1] == newer, doc["chain"]
    assert beside_ids(doc) == want
    assert not any("wait for their WAL" in n for n in doc.get("notes", [])), doc.get("notes")
