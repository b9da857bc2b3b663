"""`local down` when PostgreSQL's stop is not a clean shutdown, and `local up` after a restore
killed in its swap. A shutdown checkpoint that PANICs (a full disk, an I/O error) or a server killed after the fast shutdown's timeout leaves
its control file saying 'in production', and the next start runs crash recovery. `down` said
"stopped: postgres" and exited 0 all the same, so a person copied the data folder of a server
that had not shut down. It now says so, in one line, exit 1, the rest still stopped."""

from __future__ import annotations

import os
import signal

from opsctl.cli import app
from opsctl.local import postgres as pg
from opsctl.local import procs
from opsctl.local import state as st


def test_a_postgres_that_did_not_shut_down_cleanly_is_said_not_stopped_cleanly(tmp_path, runner, monkeypatch):
    from opsctl.pitr.archive import control_data
    from opsctl.starter import starter_text

    (tmp_path / "opsctl.yaml").write_text(starter_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    folder = st.folder_for(tmp_path)
    state = st.LocalState(folder)
    port = procs.free_port()
    pid = pg.start(state.data("postgres"), port, state.log("postgres"))
    state.components["postgres"] = st.Component(port=port, pid=pid)
    state.save()
    # the server can't take its fast shutdown (stopped), so `down` kills it after the timeout:
    # what a shutdown checkpoint that never ends (or PANICs) leaves behind
    os.kill(pid, signal.SIGSTOP)
    real_stop = pg.stop
    monkeypatch.setattr(pg, "stop", lambda p, timeout=30.0: real_stop(p, 1.0))
    try:
        r = runner.invoke(app, ["local", "down"])
    finally:
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not procs.alive(pid, "postgres")
    assert control_data(state.data("postgres"))["Database cluster state"] == "in production"
    assert r.exit_code == 1, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("opsctl: error: ")]
    assert "stopped postgres, but PostgreSQL did not shut down cleanly (its cluster state is 'in production'" \
        in line, line
    assert str(state.log("postgres")) in line and "crash recovery" in line and "Traceback" not in r.output

    # started again, it recovers; stopped cleanly, `down` says stopped and exits 0
    pid = pg.start(state.data("postgres"), port, state.log("postgres"))
    state = st.LocalState(folder)
    state.components["postgres"] = st.Component(port=port, pid=pid)
    state.save()
    monkeypatch.setattr(pg, "stop", real_stop)
    clean = runner.invoke(app, ["local", "down"])
    assert clean.exit_code == 0, clean.output
    assert "stopped: postgres" in clean.stdout
    assert control_data(state.data("postgres"))["Database cluster state"] == "shut down"


def test_local_up_puts_back_a_database_a_killed_restore_left_closed(tmp_path):
    """Breaker 42 R1: a restore killed outright during its swap left the live database
    refusing connections, and `local up` then failed on the worker's migrations; it is put back
    before them (the repair the next restore makes), and a database closed by hand is not."""
    import psycopg

    from opsctl.backup import postgres as pgb
    from opsctl.config import Environment
    from opsctl.local import platform

    state = st.LocalState(tmp_path / "local")
    port = procs.free_port()
    pid = pg.start(state.data("postgres"), port, state.log("postgres"))
    try:
        state.components["postgres"] = st.Component(port=port, pid=pid)
        env = Environment(name="local", platform="local")
        live = env.database.name
        with psycopg.connect(pg.url(port), autocommit=True) as conn:
            conn.execute(f'create database "{live}"')
            conn.execute(f'alter database "{live}" allow_connections false')  # closed by hand: no restore beside
        assert platform._repair_interrupted_restore(state, env) is None
        with psycopg.connect(pg.url(port), autocommit=True) as conn:
            conn.execute(f'create database "{pgb.derived_name(live, "restoring")}"')  # what a killed swap leaves
        said = platform._repair_interrupted_restore(state, env)
        assert said and f"database {live} refused connections" in said, said
        with psycopg.connect(pg.url(port, live)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        pg.stop(pid)


def test_local_status_lists_a_copy_a_restore_left_running_beside_the_live_server(ops_root, runner):
    """Breaker 42 R18: `restore --to-time latest --beside` leaves its copy running (on purpose),
    and `local status` did not list it; `local down` stops it."""
    import json

    folder = st.folder_for(ops_root)
    state = st.LocalState(folder)
    live_port, copy_port = procs.free_port(), procs.free_port()
    live = pg.start(state.data("postgres"), live_port, state.log("postgres"))
    beside = state.data("postgres").parent / "postgres.beside-20261203T010000Z"
    copy = pg.start(beside, copy_port, state.log("postgres-beside"))
    try:
        state.components["postgres"] = st.Component(port=live_port, pid=live)
        state.save()
        r = runner.invoke(app, ["local", "status", "--json"])
        rows = {c["name"]: c for c in json.loads(r.stdout)["components"]}
        row = rows[f"postgres ({beside.name})"]
        assert row["pid"] == copy and row["port"] == copy_port and row["healthy"], row
        assert "'opsctl local down' stops it" in row["note"]
        assert runner.invoke(app, ["local", "down"]).exit_code == 0
        assert not procs.alive(copy, "postgres") and not procs.alive(live, "postgres")
    finally:
        for pid in (live, copy):
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_local_status_finds_a_server_by_its_pid_file_when_the_state_file_is_gone(ops_root, runner):
    """Breaker 44 T12: after the advised `mv state.json state.json.damaged`, `local status` said
    every running server was "never started"."""
    import json

    from opsctl.local import redis as rd

    state = st.LocalState(st.folder_for(ops_root))
    port = procs.free_port()
    pid = rd.start(state.data("redis"), port, state.log("redis"), pidfile=state.pidfile("redis"))
    try:
        r = runner.invoke(app, ["local", "status", "--json"])
        rows = {c["name"]: c for c in json.loads(r.stdout)["components"]}
        assert rows["redis"]["pid"] == pid and "found by its PID file" in rows["redis"]["note"], rows["redis"]
        assert rows["postgres"]["note"] == "never started"
    finally:
        rd.stop(pid, port, keep=False)
