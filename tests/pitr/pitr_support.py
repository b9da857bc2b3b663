"""A PostgreSQL 18 of the embedded platform with WAL archiving on, for the PITR tests.

Its own ops root (not the session's shared platform: an in-place restore rewinds the whole
cluster), started by the platform's own code (`platform.start_component("postgres")`, which passes
the archiving settings of opsctl.pitr.local) with the archiver process `opsctl local up`
supervises. The repository is a file:// folder, encrypted with a test key. archive_timeout
is 1 s so segments reach the archive within the tests' seconds, not the default 30 s.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KEY = base64.b64encode(b"p" * 32).decode()


@dataclass
class Pitr:
    root: Path

    def project(self):
        from opsctl.config import load_project

        return load_project(self.root)

    def env(self):
        return self.project().env("local")

    def state(self):
        from opsctl.local import state as st

        return st.load(st.folder_for(self.root))

    @property
    def port(self) -> int:
        return self.state().components["postgres"].port

    @property
    def pid(self) -> int:
        return self.state().components["postgres"].pid

    def url(self, db: str = "postgres") -> str:
        from opsctl.local import postgres as pg

        return pg.url(self.port, db)

    def repo(self):
        from opsctl.pitr.ops import repository

        return repository(self.project(), self.env())

    def key(self):
        from opsctl.backup import keys

        return keys.parse(KEY, "test")

    def sysid(self) -> str:
        from opsctl.pitr.archive import system_identifier

        return system_identifier(self.state().data("postgres"))

    def cli(self, runner, *args: str):
        from opsctl.cli import app

        return runner.invoke(app, ["--root", str(self.root), *args])

    def sql(self, query: str, params=(), db: str = "pitrdb"):
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def segment_archived(self, segment: str, timeout: float) -> bool:
        """Whether WAL file `segment` is in the repository within `timeout` seconds (polled)."""
        from opsctl.pitr import layout

        prefix = layout.wal_prefix(self.sysid()) + segment + "."
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.repo().names(prefix):
                return True
            time.sleep(0.2)
        return False

    def wait_archived(self, timeout: float = 120.0) -> str:
        """Switch to a new segment and wait until the finished one, and every earlier segment of
        its timeline PostgreSQL has not marked archived (.done), is in the repository.

        The earlier ones matter: once in CI, under load, a finished segment had neither a .ready
        nor a .done notice, so the archiver passed it over and archived the next; a test that
        then deleted the passed-over segment from the repository saw it arrive later (a
        checkpoint had written its notice again) and its restore succeed."""
        # a switch with no WAL since the previous one does nothing: write a record first
        self.sql("select pg_logical_emit_message(false, 'opsctl-test', 'mark')", db="postgres")
        (lsn,) = self.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0]
        deadline = time.monotonic() + timeout
        self._await_segment(lsn, deadline)
        for segment in self._not_done_before(lsn):
            self._await_segment(segment, deadline)
        return lsn

    def _not_done_before(self, lsn: str) -> list[str]:
        """Segments of `lsn`'s timeline before it, still in pg_wal, without a .done notice."""
        wal = self.state().data("postgres") / "pg_wal"
        done = {p.name[:24] for p in (wal / "archive_status").glob("*.done")}
        return sorted(p.name for p in wal.iterdir() if len(p.name) == 24 and p.name[:8] == lsn[:8]
                      and p.name < lsn and p.name not in done)

    def _await_segment(self, segment: str, deadline: float) -> None:
        """Wait until WAL file `segment` is in the repository, waking PostgreSQL's archiver after
        30 s; AssertionError with the archiving report at `deadline`."""
        if self.segment_archived(segment, min(30.0, max(0.0, deadline - time.monotonic()))):
            return
        # PostgreSQL's archiver naps 60 s after three failed tries of archive_command; a config
        # reload wakes it (its SIGHUP handler sets its latch). A finished segment with neither a
        # .ready nor a .done notice is one the archiver will never see (once in CI, under load,
        # after a pg_switch_wal: archive_status had no notice for it, pg_stat_archiver no
        # failure): a checkpoint writes the lost notice again (xlogarchive.c, XLogArchiveCheckDone,
        # "Retry creation of the .ready file"), once the segment is behind its redo point and
        # summarized (summarize_wal holds WAL back), so checkpoints are asked for until it is
        # there. What PostgreSQL's archiver saw is kept for the report
        import sys

        status = self.state().data("postgres") / "pg_wal" / "archive_status"

        def notices() -> list[str]:
            return sorted(p.name for p in status.glob(f"{segment}.*")) if status.is_dir() else []

        print(f"{segment} not archived after 30 s (its notices: {notices() or 'none'}); waking PostgreSQL's "
              "archiver. " + self.archiving_report(), file=sys.stderr)
        self.sql("select pg_reload_conf()", db="postgres")
        while time.monotonic() < deadline:
            if not notices():
                self.sql("checkpoint", db="postgres")
            if self.segment_archived(segment, min(5.0, max(0.0, deadline - time.monotonic()))):
                return
        import signal

        comp = self.state().components.get("archiver")
        if comp is not None and comp.pid:
            os.kill(comp.pid, signal.SIGUSR1)
            time.sleep(1)
        raise AssertionError(f"{segment} never reached the repository; " + self.archiving_report())

    def wait_failing(self, segment: str, timeout: float = 120.0) -> None:
        """Wait until PostgreSQL's archiver reports `segment` as its last failure (the test made
        archive_command fail). Once in CI, under load, it never tried the switched segment in
        30 s: the lost-notice case of `_await_segment`, so after 10 s the archiver is woken and
        checkpoints are asked for while the segment has no notice; AssertionError with the
        archiving report at the deadline."""
        self.wait_notice(segment, ".ready", timeout, what="a failed archive_command", wanted=lambda: self.sql(
            "select last_failed_wal from pg_stat_archiver", db="postgres")[0][0] == segment)

    def wait_notice(self, segment: str, suffix: str, timeout: float = 120.0, wanted=None, what: str = "") -> None:
        """Wait until `segment` has the archive notice `suffix` (".ready", ".done") in pg_wal, or
        until `wanted()` holds when given, nudging PostgreSQL as wait_failing says."""
        status = self.state().data("postgres") / "pg_wal" / "archive_status"
        wanted = wanted or (status / f"{segment}{suffix}").exists
        start = time.monotonic()
        nudged = False
        while not wanted():
            waited = time.monotonic() - start
            if waited > timeout:
                raise AssertionError(f"{segment}: no {what or 'notice ' + suffix} after {timeout:.0f} s; "
                                     + self.archiving_report())
            if waited > 10:
                if not nudged:
                    self.sql("select pg_reload_conf()", db="postgres")  # wakes a napping archiver
                    nudged = True
                if not list(status.glob(f"{segment}.*")):
                    self.sql("checkpoint", db="postgres")  # writes a lost .ready notice again
            time.sleep(0.5)

    def commit_archived(self, query: str, params=(), tries: int = 5) -> str:
        """Run `query` (a commit of its own) and archive the segment holding that commit; returns
        that segment. With archive_timeout at 1 s the server may switch segments on its own
        between the commit and wait_archived's switch, which then names the next segment, not
        the commit's: the commit is run again until no switch came between (the insert position
        before it is in the segment wait_archived names). Rows of the earlier tries stay."""
        for _ in range(tries):
            (before,) = self.sql("select pg_walfile_name(pg_current_wal_insert_lsn())", db="postgres")[0]
            self.sql(query, params)
            segment = self.wait_archived()
            if segment == before:
                return segment
        raise AssertionError(f"the server switched segments on its own during each of {tries} commits")

    def archiving_report(self) -> str:
        """What a test that waited in vain for archiving prints: PostgreSQL's own archiver
        (pg_stat_archiver, the .ready files), the queue, and both logs' tails."""
        state = self.state()
        try:
            stats = self.sql("select archived_count, last_archived_wal, failed_count, last_failed_wal, "
                             "last_failed_time, pg_walfile_name(pg_current_wal_lsn()) from pg_stat_archiver",
                             db="postgres")
            # what PostgreSQL's archiver is doing (ArchiveCommand: running one) and what it runs
            stats += self.sql("select wait_event_type, wait_event, pid from pg_stat_activity "
                              "where backend_type = 'archiver'", db="postgres")
            import psutil

            stats += [(c.pid, c.cmdline(), c.status()) for c in psutil.Process(stats[-1][2]).children(recursive=True)]
        except Exception as exc:  # the server is down: the report still shows the rest
            stats = repr(exc)
        try:
            settings = self.sql("select name, setting, source from pg_settings where name in "
                                "('archive_mode', 'archive_command', 'archive_timeout', 'wal_level', 'wal_recycle')",
                                db="postgres")
        except Exception as exc:  # noqa: BLE001 - the server is down
            settings = repr(exc)
        wal = state.data("postgres") / "pg_wal"
        status = wal / "archive_status"
        ready = sorted(p.name for p in status.iterdir()) if status.is_dir() else []
        segments = sorted(p.name for p in wal.iterdir() if p.is_file()) if wal.is_dir() else []
        queue = state.data("wal-queue")
        queued = sorted(os.listdir(queue)) if queue.is_dir() else []
        return (f"pg_stat_archiver (archived, last, failed, last failed, when, current): {stats}\n"
                f"settings: {settings}\npg_wal: {segments[-8:]}\narchive_status: {ready[-8:]}\nqueue: {queued}\n"
                f"postgres log:\n{state.log('postgres').read_text()[-3000:]}\n"
                f"archiver log:\n{state.log('archiver').read_text()[-3000:]}")

    def set_archive_timeout(self, seconds: int) -> None:
        """Restart the live server with backup.archive_timeout `seconds` (opsctl.yaml rewritten)."""
        import yaml

        from opsctl.local import postgres as pg

        path = self.root / "opsctl.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["environments"]["local"]["backup"]["archive_timeout"] = seconds
        path.write_text(yaml.safe_dump(doc))
        pg.stop(self.pid)
        self.start_postgres()

    def start_postgres(self) -> None:
        from opsctl.local import platform
        from opsctl.local import state as st

        folder = st.folder_for(self.root)
        with st.locked(folder):
            state = st.load(folder)
            platform.start_component("postgres", state, self.env())
            state.save()

    def queue_a_segment(self, timeout: float = 30.0) -> None:
        """Finish a WAL segment (a logical message, then a switch) and wait until it is in the
        local archive queue: what an archiver that is not running leaves waiting."""
        from opsctl.pitr import local as pitr_local

        self.sql("select pg_logical_emit_message(false, 'opsctl-test', 'x')", db="postgres")
        self.sql("select pg_switch_wal()", db="postgres")
        queue = pitr_local.queue_dir(self.state())
        deadline = time.monotonic() + timeout
        while not [p for p in queue.iterdir() if not p.name.startswith(".")] and time.monotonic() < deadline:
            time.sleep(0.1)

    def commit_and_queue(self, note: str, timeout: float = 60.0) -> str:
        """Insert an event row, switch the WAL segment holding it out (pg_switch_wal) and wait
        until the archive_command has put it in the local queue; returns the segment's name."""
        from opsctl.pitr import local as pitr_local

        self.sql("insert into events(note) values (%s)", (note,))
        (segment,) = self.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0]
        deadline = time.monotonic() + timeout
        while segment not in pitr_local.queued_wal(self.state()):
            assert time.monotonic() < deadline, f"{segment} was never queued"
            time.sleep(0.05)
        return segment

    def ensure_archiver(self) -> None:
        from opsctl.local import state as st
        from opsctl.pitr import local as pitr_local

        folder = st.folder_for(self.root)
        with st.locked(folder):
            state = st.load(folder)
            note = pitr_local.ensure_archiver(self.project(), self.env(), state)
            assert not note, note
            state.save()


def beside_ids(doc: dict) -> set[int]:
    """The `events` ids of the copy a `restore --beside --json` answered with (`doc`), read
    from its `pitrdb`; the copy's server is stopped after, whatever happens."""
    import psycopg

    from opsctl.local import postgres as pg

    try:
        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            return {row[0] for row in conn.execute("select id from events")}
    finally:
        pg.stop(doc["pid"])


@dataclass
class Inserter:
    """Inserts one row per transaction until stopped; keeps the ids it saw committed."""

    url: str
    pause: float = 0.005
    committed: list[tuple[int, float]] = field(default_factory=list)  # (id, time.time() after commit)
    error: BaseException | None = None

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    (rid,) = conn.execute("insert into events(note) values ('x') returning id").fetchone()
                    self.committed.append((rid, time.time()))
                    time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - a killed server ends the run; kept for the test
            self.error = exc

    def start(self) -> "Inserter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def pitr(tmp_path_factory):
    from opsctl.local import postgres as pg
    from opsctl.pitr import local as pitr_local

    import tempfile

    # not under pytest's temporary folder: PostgreSQL runs as another user, and a second
    # pytest on this machine makes /tmp/pytest-of-<user> private again while this one runs
    root = Path(tempfile.mkdtemp(prefix="opsctl-pitr-"))
    (root / "opsctl.yaml").write_text(json.dumps({
        "version": 1,
        "environments": {"local": {
            "platform": "local",
            "database": {"name": "pitrdb", "user": "pitr"},
            "backup": {"repository": f"file://{root / 'repo'}", "archive_timeout": 1},
            "worker": {"auth": "none"},  # the drill's and failover's workers take the sample without a key
        }},
    }))
    mp = pytest.MonkeyPatch()
    mp.setenv("OPSCTL_BACKUP_KEY", KEY)
    p = Pitr(root)
    p.start_postgres()
    p.ensure_archiver()
    p.sql("create table events(id bigserial primary key, note text)")
    try:
        yield p
    finally:
        state = p.state()
        pitr_local.stop_archiver(state)
        for name in ("postgres",):
            comp = state.components.get(name)
            if comp is not None:
                pg.stop(comp.pid)
        mp.undo()
        if not os.environ.get("PITR_KEEP"):
            # removed by a detached rm -rf (as restore.remove_later does): freeing the servers'
            # data directories and the repository's WAL took seconds of each module's teardown
            from opsctl.pitr.restore import remove_later

            remove_later(root)


def record_windows(monkeypatch, note=None) -> list[tuple]:
    """Replaces opsctl.health.notify.operation_window with a recorder and returns the list it
    fills: one (env_name, operation, outcome) per window closed, plus `note(kw)` when given
    (kw: the keyword arguments the window was opened with). A failure inside marks the
    outcome "failed", as the real window does."""
    from contextlib import contextmanager

    from opsctl.health import notify

    seen: list[tuple] = []

    @contextmanager
    def window(project, env_name, operation, subject, **kw):
        w = notify.Window(env_name, operation, subject, [], "now")
        try:
            yield w
        except BaseException:
            w.outcome = "failed"
            raise
        finally:
            seen.append((env_name, operation, w.outcome) + ((note(kw),) if note else ()))

    monkeypatch.setattr(notify, "operation_window", window)
    return seen


def set_dr(pitr: Pitr, **dr: str) -> None:
    """Set the local environment's `dr` targets (e.g. rpo="1s", rto="4h") in the PITR root's
    opsctl.yaml."""
    import yaml

    path = pitr.root / "opsctl.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["environments"]["local"]["dr"] = dr
    path.write_text(yaml.safe_dump(doc))


def rds_environment(ops_root: Path, s3, instance: str, replica: str | None = None):
    """Add environment `cloud` (platform kubernetes, AWS at the moto server `s3`) whose database
    is RDS instance `instance` with 7 days of backups, and `replica` as its read replica when
    given; creates them in moto and returns the RDS client."""
    import boto3
    import yaml

    doc = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    database = {"rds_instance": instance} | ({"replica_instance": replica} if replica else {})
    doc["environments"]["cloud"] = {"platform": "kubernetes", "aws": {"endpoint_url": s3.endpoint_url},
                                    "database": database}
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    rds = boto3.client("rds", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    rds.create_db_instance(DBInstanceIdentifier=instance, DBInstanceClass="db.r6g.large", Engine="postgres",
                           AllocatedStorage=50, MasterUsername="admin", MasterUserPassword="not-a-secret-1",
                           BackupRetentionPeriod=7)
    if replica:
        rds.create_db_instance_read_replica(DBInstanceIdentifier=replica, SourceDBInstanceIdentifier=instance)
    return rds


def delete_rds_instances(rds, prefix: str = "") -> None:
    """Delete the moto RDS instances whose name starts with `prefix`, replicas before their
    primary; one already gone is no error."""
    for inst in sorted(rds.describe_db_instances()["DBInstances"],
                       key=lambda i: not i.get("ReadReplicaSourceDBInstanceIdentifier")):
        if inst["DBInstanceIdentifier"].startswith(prefix):
            try:
                rds.delete_db_instance(DBInstanceIdentifier=inst["DBInstanceIdentifier"], SkipFinalSnapshot=True)
            except rds.exceptions.DBInstanceNotFoundFault:
                pass
