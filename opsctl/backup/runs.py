"""What a restore killed outright leaves, and the next one removes: run folders and their records.

A restore (and `backup verify --restore-test`, a restore beside the live data) works in a
folder under the temporary directory: the decrypted dump, the Redis RDB and the scratch
redis-server started there. Its run record (RUN_RECORD, written first) names the process
(pid and start time: a reused pid is not it), the database server and the scratch database
it is filling. A process killed outright (kill -9, a lost machine) never cleans up; the next
restore or restore test finds the folders whose process is gone and removes what they name
(`clean_dead`), after undoing a swap one died in. A folder counts as opsctl's only with its
record, and is touched only when its process is provably gone (breaker 42 R7).

The temporary directory does not outlive a CronJob pod, a PrivateTmp service or a CI runner,
so the scratch database also carries the run's mark on the server itself (`mark`,
pgb.RUN_SETTING), and the run holds a session advisory lock there for as long as it lives
(`folder`): PostgreSQL lets go of it when the session ends, however the process died and on
whichever machine it ran. The next restore or restore test on that server drops every marked
copy whose lock is free (breaker 54 F9).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import socket
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from opsctl.backup import postgres as pgb
from opsctl.errors import OperationFailed
from opsctl.local import pidstart

log = logging.getLogger("opsctl.backup")

RUN_PREFIX = "opsctl-restore-"
RUN_RECORD = "opsctl-run.json"
LOCK_SESSION = "opsctl restore run lock"  # the application_name of the session holding a run's lock


def note(folder: Path, **fields) -> None:
    """Write (or update) fields of the run record in `folder`, atomically: `scratch` (the
    database being filled, None once it is dropped or kept on purpose), `live`, `in_place`."""
    path = folder / RUN_RECORD
    doc = {}
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_text())
    doc.update(fields)
    tmp = folder / f".{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@contextlib.contextmanager
def folder(database_url: str | None, sessions: int = 1) -> Iterator[Path]:
    """A run folder (0700, removed on the way out) whose record names this process and the
    database server `database_url` reaches (None: no database in this run); with a server,
    the run's advisory lock is held there until the block ends (`mark` names it), on a session
    of its own, only while the role and the server leave room for the `sessions` more the run
    opens at once (pg_restore's --jobs)."""
    with tempfile.TemporaryDirectory(prefix=RUN_PREFIX) as tmp, _lock_held(database_url, sessions) as lock:
        note(Path(tmp), pid=os.getpid(), start=pidstart.start_ticks(os.getpid()), server=_server(database_url),
             lock=lock)
        yield Path(tmp)


@contextlib.contextmanager
def _lock_held(url: str | None, sessions: int = 1) -> Iterator[int | None]:
    """A session advisory lock of a random bigint key, held on its own connection to the
    server at `url` (the maintenance database, application_name LOCK_SESSION, so a reaper of
    idle sessions can leave it) until the block ends; None without a server, or when that
    session can't be had or would take one the run needs (`_room`: breaker 55 F2, a role
    with CONNECTION LIMIT 2 could no longer restore with --jobs 2): the run goes unmarked."""
    if not url:
        yield None
        return
    key = secrets.randbits(63)
    conn = None
    try:  # whatever fails here is no verdict on a backup: the run goes on unmarked, and says so
        conn = pgb.connect(url, "postgres", autocommit=True)
        room = _room(conn)
        if room < sessions:
            raise OperationFailed(f"a session holding it would leave {room} of the {sessions} sessions the run "
                                  "needs (the role's or the server's connection limit)")
        conn.execute("select set_config('application_name', %s, false), pg_advisory_lock(%s)", (LOCK_SESSION, key))
    except Exception as exc:  # noqa: BLE001 - see above
        log.info("this run's copy carries no run mark (no session for its lock: %s); a restore killed outright "
                 "is cleaned up only from its run folder", exc)
        if conn is not None:
            conn.close()
        yield None
        return
    with conn:
        yield key


def _room(conn) -> int:
    """How many more sessions this role may open on the server `conn` is a session of: the
    lesser of its CONNECTION LIMIT and max_connections (less the reserved ones), less those
    open."""
    limit, mine, most, reserved, total, superuser = conn.execute(
        "select r.rolconnlimit, (select count(*) from pg_stat_activity a where a.usesysid = r.oid), "
        "current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int "
        "+ coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0), "
        "(select count(*) from pg_stat_activity a where a.backend_type = 'client backend'), r.rolsuper "
        "from pg_roles r where r.rolname = current_user").fetchone()
    rooms = [most - (0 if superuser else reserved) - total]
    if limit >= 0 and not superuser:
        rooms.append(limit - mine)
    return min(rooms)


def mark(run: Path, scratch: str, live: str | None = None, swapping: bool = False) -> str | None:
    """The RUN_SETTING text for the scratch database `scratch` of the run in folder `run`
    (pgb.restore_into sets it; `live`: the database an in-place restore swaps it into;
    `swapping` once that swap begins: `swap_begins`), as JSON; None when the run holds no lock."""
    rec = json.loads((run / RUN_RECORD).read_text())
    if rec.get("lock") is None:
        return None
    text = {"lock": rec["lock"], "name": scratch, "pid": rec["pid"], "start": rec.get("start"),
            "machine": pidstart.boot_id(), "host": socket.gethostname(),
            "at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return json.dumps(text | ({"live": live, "swapping": swapping} if live else {}), separators=(",", ":"))


def swap_begins(run: Path, url: str, scratch: str, live: str) -> None:
    """Say, in the run record and the copy's run mark, that the in-place swap of `scratch` into
    `live` begins: only a run killed from here on may have left `live` renamed away or refusing
    connections, so only its clean-up repairs `live` (breaker 55 F3: a run killed during
    pg_restore had the next restore reopen a database an administrator closed since)."""
    note(run, swapping=True)
    text = mark(run, scratch, live, swapping=True)
    if not text:
        return
    try:
        with pgb.connect(url, "postgres", autocommit=True) as conn:
            if pgb.run_mark_of(conn, scratch) is not None:  # an unmarked run (no privilege) stays so
                pgb.mark_run(conn, scratch, text)
    except Exception as exc:  # noqa: BLE001 - the swap says what the server does; the folder record has it
        log.warning("could not record in the run mark of %s that its swap begins: %s", scratch, exc)


def handed_over(url: str, name: str, kept_as_scratch: bool = False) -> None:
    """The run's copy is now `name` for good (swapped in, renamed, kept on purpose): its run
    mark is removed, so no later clean-up takes it for a dead run's. A failure is logged, never
    raised: the restore stands, and a mark naming another database is cleared by the next
    clean-up anyway (`_clean_marked`); one left on a copy kept under its scratch name is not."""
    try:
        pgb.clear_run_mark(url, name)
    except Exception as exc:  # noqa: BLE001 - see above
        if kept_as_scratch:  # its mark still names it: the next clean-up would take it for a dead run's copy
            log.warning("could not remove the run mark of the kept copy %s (%s): remove it now, or the next restore "
                        "or restore test drops the copy as a dead run's: ALTER DATABASE %s RESET %s", name, exc,
                        pgb.quote(name), pgb.RUN_SETTING)
        else:  # swapped in or renamed: a mark naming another database is only cleared, never acted on
            log.info("could not remove the run mark of database %s (%s); the next restore or restore test clears "
                     "it", name, exc)


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = pidstart.start_ticks(pid)
    return start is None or now is None or now == start


def _server(url: str | None) -> str | None:
    """The database server a URL reaches (host, port): never its password."""
    if not url:
        return None
    p = pgb.params(url)
    return f"{p.get('host') or os.environ.get('PGHOST') or 'localhost'}:{p.get('port') or os.environ.get('PGPORT') or 5432}"


def _processes_in(folder: Path) -> list[int]:
    """Our own processes working in `folder` (their cwd or command line inside it): the scratch
    redis-server a dead restore started there."""
    found = []
    inside = str(folder.resolve())
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if entry.stat().st_uid != os.getuid() or int(entry.name) == os.getpid():
                continue
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if cwd == inside or cwd.startswith(inside + "/") or inside + "/" in cmd:
                found.append(int(entry.name))
    return found


def clean_dead(database_url: str | None, say: Callable[[str], None], swaps: bool = True) -> list[str]:
    """Remove what restores killed outright left (RUN_RECORD folders whose process is gone):
    their scratch Redis servers, decrypted files and, on the server `database_url` reaches,
    their scratch databases, after undoing a swap one died in (pgb.repair_interrupted_swap).
    A live database a swap left refusing connections is repaired too. Says each thing done
    (`say`) and returns them; never fails the restore that asks (what can't be done is logged).
    `swaps=False` (a restore test, which never writes the live database) leaves the runs of
    in-place restores and the live database alone: those are the next restore's to repair."""
    done: list[str] = []
    base = Path(tempfile.gettempdir())
    here = _server(database_url)
    for run in sorted(base.glob(f"{RUN_PREFIX}*")):
        try:
            if run.is_symlink() or not run.is_dir() or run.stat().st_uid != os.getuid():
                continue
            rec = json.loads((run / RUN_RECORD).read_text())
            pid = int(rec["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not provably a restore's of opsctl: left alone
        if _alive(pid, rec.get("start")) or (not swaps and rec.get("in_place") and rec.get("live")):
            continue
        what = []
        try:
            for other in _processes_in(run):
                with contextlib.suppress(OSError):
                    os.kill(other, signal.SIGTERM)
                    what.append(f"its scratch process {other}")
            scratch, live = rec.get("scratch"), rec.get("live")
            if scratch and database_url and rec.get("server") == here:
                if live and rec.get("in_place") and rec.get("swapping", True):  # records before swap_begins: True
                    repaired = pgb.repair_interrupted_swap(database_url, live, known=True)
                    if repaired:
                        what.append(repaired)
                if pgb.database_exists(database_url, scratch):
                    pgb.drop_scratch(database_url, scratch)  # subscriptions it holds dropped first
                    what.append(f"its scratch database {scratch}")
                scratch = None
            if scratch:  # on another server: its record stays for a restore there
                for item in run.iterdir():
                    if item.name != RUN_RECORD:
                        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
            else:
                shutil.rmtree(run)
            what.append(f"its decrypted files ({run})")
        except Exception as exc:  # noqa: BLE001 - the restore asked for goes on; this is said
            log.warning("could not clean up after the dead restore %s (pid %s): %s", run, pid, exc)
            continue
        line = f"removed what a restore (or restore test) killed earlier (pid {pid}) left: {'; '.join(what)}"
        say(line)
        done.append(line)
    if database_url:
        for name, text in pgb.run_marks(database_url):
            line = _clean_marked(database_url, name, text, swaps)
            if line:
                say(line)
                done.append(line)
    live = pgb.url_database(database_url) if database_url and swaps else None
    if live:  # a swap killed outright with no run folder left to say so (another machine's restore)
        try:
            repaired = pgb.repair_interrupted_swap(database_url, live)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("could not check database %s for a swap a killed restore left: %s", live, exc)
            repaired = None
        if repaired:
            say(repaired)
            done.append(repaired)
    return done


def _clean_marked(url: str, name: str, text: str, swaps: bool) -> str | None:
    """Drop database `name` when its run mark (`mark`) says a run made it under that name and
    that run is gone: on this machine, its process is (pid and start time); made elsewhere, its
    lock is free. First, for an in-place restore's copy killed once its swap began (`swapping`,
    and `name` a `<live>_restoring_...` copy), repair the swap (only when `swaps`, as for
    folders). A mark naming another database (the copy was swapped in or renamed since) is
    cleared, the database kept. Returns what was done, in words; never raises an Exception."""
    try:
        rec = json.loads(text)
        key, pid = rec["lock"], rec["pid"]
        made_as, live = rec["name"], rec.get("live")
        if not (isinstance(key, int) and isinstance(pid, int) and isinstance(made_as, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return None  # not a mark opsctl wrote: left alone
    if made_as != name:  # handed over under another name: the mark alone is stale
        try:
            pgb.clear_run_mark(url, name)
        except Exception as exc:  # noqa: BLE001 - said; the database is kept either way
            log.warning("database %s carries a stale run mark of a restore that made it as %s (it is kept, not a "
                        "scratch copy); it could not be cleared: %s", _shown(name), _shown(made_as), exc)
        return None
    try:
        here = rec.get("machine") is not None and rec.get("machine") == pidstart.boot_id()
        if (here and _alive(pid, rec.get("start"))) or (not here and not pgb.lock_free(url, key)):
            return None  # its run is alive
        swapped = live and rec.get("swapping") is True and isinstance(live, str) and pgb.derived_from(
            name, live, "restoring")
        if live and not swaps:  # an in-place restore's: left to the next restore, which may repair its swap
            state = pgb.database_state(url, live) if swapped else None
            if state:  # breaker 55 F7: a restore test said nothing of it
                log.warning("database %s is %s: a restore killed during its swap (pid %s on %s) left it so; the "
                            "next restore of it, or 'opsctl local up', repairs it", _shown(live), state, pid,
                            _shown(rec.get("host")))
            return None
        what = []
        if swapped:
            repaired = pgb.repair_interrupted_swap(url, live, known=True)
            if repaired:
                what.append(repaired)
        pgb.drop_scratch(url, name)
        what.append(f"its scratch database {_shown(name)}")
    except Exception as exc:  # noqa: BLE001 - the restore asked for goes on; this is said
        log.warning("could not clean up the scratch database %s a dead restore left: %s", _shown(name), exc)
        return None
    return (f"removed what a restore (or restore test) killed earlier (pid {pid} on {_shown(rec.get('host'))}, "
            f"{_shown(rec.get('at'))}) left: {'; '.join(what)}")


def _shown(value) -> str:
    """A value read from the server, on one line and never run by the terminal (breaker 55 F4)."""
    from opsctl.output import visible

    return visible(str(value)).replace("\n", "\\n")
