"""`opsctl dr drill`: restore the database to the newest restorable time into scratch
resources, serve from them, measure what the recovery achieved, tear down.

- **RTO achieved**: seconds from the drill's start (the pretended failure instant) until the
  restored database answered its checks (every table read, the replayed commit known).
- **RPO achieved**: seconds of commits the restore would have lost: the newest commit of the
  live database at the failure instant (`pg_last_committed_xact()`, track_commit_timestamp)
  minus the newest commit the restore recovered (the same function on the restored server,
  still in recovery: a commit, never an abort, though a window's end is dated by either);
  0 when it recovered everything. When the live server does not answer (it is down: the drill
  is the recovery) the newest commit it held is unknown, and the RPO is the drill's start minus
  the newest commit recovered: an upper bound, said in `rpo_basis`. On RDS, the failure
  instant minus RDS's LatestRestorableTime.
- **RPO of Redis and of the audio objects** (`part_rpo_seconds`), when the drill restores them:
  each comes from the newest complete backup holding it (the hourly Redis snapshot, the
  nightly audio copy), and its RPO is the drill's start minus that backup's start: what a
  failure at the drill's start would lose of it at most (the backup took its copy at some
  instant after its start).

Both are judged against `dr: {rto, rpo}` in opsctl.yaml. The embedded platform restores
beside the live server (`restore --to-time latest --beside`) and stops and removes the copy
afterwards; a cloud environment restores RDS into a scratch instance `<rds>-drill-<time>`
and deletes it. With Redis, S3 and a worker running, the embedded drill also restores Redis
and the audio objects and serves a preview color from the restored data (`_serve`); a cloud
drill, or one of a platform without them, covers the database alone. The result lists what
the drill covered (`scope`) and what it did not (`not_covered`).

A drill that fails (its restore, the serve phase, the RDS wait) or is cancelled still writes its
reports, failing, with the reason (`error`). Every scratch resource is recorded in
`.opsctl/drill/<env>-<time>.json` (0600) before it is created and torn down on every exit path;
what a drill killed outright (kill -9) left is removed by the next drill (`clean_abandoned`); the
embedded restored copy is the restore's own record, so the next restore or `opsctl local down`
also removes it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from opsctl.config import Environment, Project
from opsctl.pitr.health import seconds


# what the RPO was measured between (DrillResult.rpo_basis)
RPO_LIVE = "from the newest commit recovered to the live server's newest commit"
RPO_DOWN = ("from the newest commit recovered to the drill's start: the live server did not answer, so "
            "its newest commit is unknown and this is an upper bound (it grows while the server is down)")
RPO_RDS = "from RDS's LatestRestorableTime to the drill's start"
STALLED = "the WAL archive is not advancing"  # how the problem of a `wal archive` check CRITICAL begins

# what a drill of the embedded platform covers when Redis, S3 and a worker run (DrillResult.scope)
PARTS = ("database", "redis", "audio objects", "preview color + transcription", "load test")


@dataclass
class DrillResult:
    """One drill: RTO achieved (seconds from start to serving) and RPO achieved (seconds of commits
    not recovered; None when unknown) against the `dr:` targets (seconds), what was restored and
    from which backup, the sample transcription's and the load test's verdicts through the
    preview color, phase durations (seconds), what the drill did not cover and why, and the
    problems that fail it."""
    environment: str
    platform: str
    started_at: dt.datetime
    rto_seconds: float | None  # None: not achieved (the drill failed before the copy served)
    rpo_seconds: float | None
    rto_target_seconds: float
    rpo_target_seconds: float
    passed: bool
    restored_to: dt.datetime | None
    live_newest_commit: dt.datetime | None
    scratch: str
    rows: int | None = None  # None: no row was read (a failed restore; RDS, never connected to)
    tables: int | None = None
    torn_down: bool = False
    scope: list[str] = field(default_factory=lambda: list(PARTS[:1]))
    not_covered: list[str] = field(default_factory=lambda: list(PARTS[1:]))
    not_covered_reasons: dict[str, str] = field(default_factory=dict)  # part -> why the drill did not cover it
    checked: str = ""  # what the drill checked of the restored database ("3 tables, 120 rows read")
    phases: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    backups: dict[str, str] = field(default_factory=dict)  # part ("redis", "audio objects") -> the backup it came from
    part_rpo_seconds: dict[str, float] = field(default_factory=dict)  # part -> the drill's start minus its backup's start
    redis_keys: int = 0
    audio_objects: int = 0
    transcription: str | None = None  # the sample's verdict through the preview color
    load_test: str | None = None  # the short load test's verdict through it
    problems_note: str = ""
    error: str | None = None  # why the drill itself failed (restore, serve, RDS), redacted; None when it ran
    rpo_basis: str = ""  # what the RPO was measured between (RPO_LIVE, RPO_DOWN, RPO_RDS); "" when unknown
    wal_archive: str | None = None  # the `wal archive` check at the drill's start ("STATUS: message"); None: not asked
    duration_seconds: float | None = None  # the drill's own duration, start to torn down
    worker_log: str | None = None  # the preview worker's log, kept (0600) when the serve phase failed after starting it


CANCELLED = "cancelled (Ctrl-C or SIGTERM)"  # DrillResult.error of a cancelled drill


class Cancelled(KeyboardInterrupt):
    """A drill cancelled by Ctrl-C or SIGTERM, raised by `drill` once its failing reports are
    written: still a KeyboardInterrupt (a runbook's run stops, the CLI exits 130), carrying the
    failing result (`result`, its `error` CANCELLED) for the caller to print."""

    def __init__(self, result: "DrillResult"):
        super().__init__(CANCELLED)
        self.result = result


def _uncovered(out: "DrillResult", why: str | dict[str, str]) -> None:
    """`not_covered` and its reasons: every part not in `scope`, each with `why` (one reason
    for all, or part -> reason; a part missing from the dict gets the first one given);
    `problems_note` sums them up in one line."""
    out.not_covered = [p for p in PARTS if p not in out.scope]
    reasons = why if isinstance(why, dict) else {}
    default = why if isinstance(why, str) else next(iter(why.values()), "")
    out.not_covered_reasons = {p: reasons.get(p, default) for p in out.not_covered}
    distinct = list(dict.fromkeys(out.not_covered_reasons.values()))
    out.problems_note = "; ".join(distinct)


def _owner_alive(doc: dict) -> bool:
    """Whether the opsctl process a record names (PID and create time) still runs."""
    import psutil

    try:
        owner = psutil.Process(doc["opsctl_pid"])
        return abs(owner.create_time() - doc["opsctl_started"]) < 1.0 and owner.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError):
        return False


class _Record:
    """`.opsctl/drill/<env>-<time>.json` (0600): this drill's process and each scratch resource,
    written before the resource is created, so a drill killed outright is cleaned up by the next."""

    def __init__(self, project: Project, env: Environment, started: dt.datetime):
        import psutil

        me = psutil.Process()
        self.path = project.state_dir / "drill" / f"{env.name}-{started.strftime('%Y%m%d%H%M%S%f')}.json"
        self.doc = {"opsctl_pid": me.pid, "opsctl_started": me.create_time(), "environment": env.name,
                    "resources": []}

    def add(self, kind: str, **fields) -> dict:
        from opsctl.files import write_json

        item = {"kind": kind, **fields}
        self.doc["resources"].append(item)
        write_json(self.path, self.doc, private=True)
        return item

    def update(self) -> None:
        from opsctl.files import write_json

        write_json(self.path, self.doc, private=True)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def _remove(project: Project, env: Environment, item: dict) -> None:
    """Tear down one recorded scratch resource if it is still there (never raises for one gone)."""
    import shutil

    from opsctl.local import procs

    kind = item["kind"]
    if kind == "rds":
        _delete_rds(env, item["name"])
    elif kind == "bucket":
        from opsctl.endpoints import resolve

        _drop_bucket(resolve(project, env).s3_client(), item["name"])
    elif kind in ("worker", "redis"):
        hint = "transcription-worker" if kind == "worker" else "redis"
        pid = item.get("pid")
        if pid is None and item.get("port"):
            pid = _listener(item["port"], hint)
        if pid is not None and procs.alive(pid, hint) and procs.listens(pid, [item.get("port")]):
            procs.stop(pid, 10, hint)
    elif kind == "folder":
        shutil.rmtree(item["path"], ignore_errors=True)


def _listener(port: int, hint: str) -> int | None:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if hint in " ".join(proc.info["cmdline"] or []) and any(
                    c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                    for c in proc.net_connections("tcp")):
                return proc.pid
        except psutil.Error:
            continue
    return None


def clean_abandoned(project: Project, env: Environment) -> list[str]:
    """Tear down what drills of `env` killed outright left (their records, their process gone):
    the RDS scratch instance, the scratch bucket, Redis and preview worker, the temporary folder.
    A drill still running is left alone. Returns what was removed ("kind name")."""
    import json

    removed = []
    for path in sorted((project.state_dir / "drill").glob(f"{env.name}-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not a record we can read: leave it for a person
        if _owner_alive(doc):
            continue
        for item in reversed(doc.get("resources", [])):
            _remove(project, env, item)
            removed.append(f"{item['kind']} {item.get('name') or item.get('path') or item.get('port')}")
        path.unlink(missing_ok=True)
    return removed


def clean_for_down(project: Project) -> list[str]:
    """`opsctl local down`'s hook: what killed drills of the embedded environments left (their
    preview worker, scratch Redis and bucket, folder; see clean_abandoned). Never raises: a
    down goes on."""
    removed = []
    for env in project.config.environments.values():
        if env.platform != "local":
            continue
        try:
            removed += clean_abandoned(project, env)
        except Exception:  # noqa: BLE001 - the next drill tries again
            pass
    return removed


def _live_newest_commit(project: Project, env: Environment) -> tuple[bool, dt.datetime | None]:
    """(the live server answered, the newest commit it holds: restore.newest_commit, which
    reads past a restart since the last commit)."""
    import psycopg

    from opsctl.local import state as st
    from opsctl.pitr.restore import newest_commit

    comp = st.load(st.folder_for(project.root)).components.get("postgres")
    if comp is None:
        return False, None
    try:
        return True, newest_commit(comp.port)
    except psycopg.Error:
        return False, None  # the live server is down: the drill is the recovery, RPO is what the archive holds


def drill(project: Project, env: Environment, report=None, junit_path: str | Path | None = None,
          metrics_path: str | Path | None = None) -> DrillResult:
    """Run one drill inside the environment's operation window ("drill": announced, no check
    held); never touches the live database. A drill that fails (OpsError: the restore, the
    serve phase, RDS) returns a failing result whose `error` says why, with no achieved RTO or
    RPO (None: nothing served, the time it took to fail is no recovery time); bad input
    (UsageError from _preflight: a platform never started, no backup key) and any other
    exception is raised after the failing reports are written; a cancel (KeyboardInterrupt,
    a load test's included) raises Cancelled, its failing result in it. When only a phase after
    the database's restore failed, the result keeps what the database part achieved (restored
    to, rows, its RPO).

    `junit_path` / `metrics_path`: where the result is written, pass or fail, as JUnit XML
    (`junit`) and Prometheus text (`metrics`), each whole (write_reports). The command and
    the runbook step both hand their paths here: the one place reports are written."""
    from opsctl.errors import OpsError, UsageError
    from opsctl.files import report_path
    from opsctl.pitr.ops import window
    from opsctl.redact import credentials

    # before anything runs: a drill must not end on a report path it can't write
    junit_path, metrics_path = report_path(junit_path, "--junit"), report_path(metrics_path, "--metrics-file", example="drill.prom")
    started = dt.datetime.now(dt.timezone.utc)
    began = time.monotonic()
    with window(project, env, "drill", "restore to the newest restorable time into scratch") as w:
        bad_input = True  # until the preflight passed: a UsageError then is the caller's
        partial: list[DrillResult] = []  # _drill's result once the database part is done
        try:
            _preflight(project, env)
            bad_input = False
            out = _drill(project, env, report, started, began, partial)
        except BaseException as exc:
            # a failed or cancelled drill is a result too: the reports say it failed, and why
            reason = credentials(str(exc)) or type(exc).__name__
            if isinstance(exc, KeyboardInterrupt):
                reason = CANCELLED
            first = f"not reached: the drill {'was cancelled' if reason == CANCELLED else 'failed'} first"
            if partial:  # a later phase failed: what the database part achieved stays (breaker F8)
                out = partial[0]
                out.error, out.torn_down = reason, True
                out.problems.insert(0, f"the drill failed: {reason}")
                _uncovered(out, first)
                _judge(out)
            else:  # nothing it covers was restored (breaker 25 F14: `scope` said ["database"])
                out = DrillResult(env.name, env.platform, started, None, None,
                                  seconds(env.dr.rto), seconds(env.dr.rpo), False, None, None, "", torn_down=True,
                                  scope=[], error=reason, problems=[f"the drill failed: {reason}"])
                _uncovered(out, first)
            out.duration_seconds = round(time.monotonic() - began, 2)
            write_reports(out, junit_path, metrics_path)
            if isinstance(exc, KeyboardInterrupt):
                raise Cancelled(out) from exc  # the caller prints the result, then exits 130
            if not isinstance(exc, OpsError) or (bad_input and isinstance(exc, UsageError)):
                raise  # bad input exits 2 in one line, like every command
            w.outcome = "failed: " + reason
            return out
        if not out.passed:
            w.outcome = "targets missed: " + "; ".join(out.problems)
    out.duration_seconds = round(time.monotonic() - began, 2)
    write_reports(out, junit_path, metrics_path)
    return out


def _preflight(project: Project, env: Environment) -> None:
    """What a drill needs of its caller, checked before it starts: on the embedded platform, a
    platform that was started and a backup key for its repository (UsageError otherwise). What
    the drill then finds (no base backup, a broken chain) fails the drill, not the input. On a
    cloud environment, an AWS profile this machine lacks (breaker 65 G8)."""
    if env.platform != "local":
        from opsctl.endpoints import aws_session

        aws_session(env.aws.profile)
        return
    from opsctl.pitr import ops

    ops.local_state(project, env)
    ops.sealed_repository(project, env)


@contextmanager
def _teardown() -> Iterator[ExitStack]:
    """An ExitStack for what a drill starts, unwound whole: a Ctrl-C or SIGTERM that comes while
    it unwinds waits until every step ran (signals.deferred), then cancels the drill. Breaker 65
    G4: one that came during the removal of the restored copy left 100 MB half-removed, its
    record already dropped, and `torn_down: true`. Each step has its own bound (a server's
    stop, a worker's 30 s); kill -9 still leaves the drill's record to the next drill."""
    from opsctl.signals import deferred

    stack = ExitStack()
    try:
        yield stack
    finally:
        with deferred():
            stack.close()


def write_reports(result: DrillResult, junit_path: Path | None = None, metrics_path: Path | None = None) -> None:
    """`result` as JUnit XML at `junit_path` and Prometheus text at `metrics_path` (None: not
    written): the folder created, each file written to a temporary name beside it and renamed
    over it, so a scraper or CI never reads half a report. A new JUnit file is 0600; the metrics
    file as the umask makes it: node_exporter's textfile collector, another user, must read it
    (breaker 65 G6: made 0600, the drill alerts got no metrics). An existing file keeps its mode."""
    from opsctl.files import write_text

    for path, render, private in ((junit_path, junit, True), (metrics_path, metrics, False)):
        if path is None:
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, render(result), private=private)


def _drill(project: Project, env: Environment, report, started: dt.datetime, began: float,
           partial: list) -> DrillResult:
    """The drill; `partial` gets its result as soon as the database part is done, so a later
    phase cancelled or failing unexpectedly still reports what that part achieved."""
    from opsctl.errors import OpsError
    from opsctl.redact import credentials

    rto_target, rpo_target = seconds(env.dr.rto), seconds(env.dr.rpo)
    clean_abandoned(project, env)  # what a drill killed earlier left
    if env.platform == "kubernetes":
        return _rds(project, env, started, began, rto_target, rpo_target)
    import shutil

    from opsctl.local import postgres as pg
    from opsctl.pitr import restore as pr

    answered, live = _live_newest_commit(project, env)
    # the archive at the failure instant: a restore recovers only what was archived, so an archive
    # that is not advancing fails the drill even when this restore met the RPO (breaker 42 R13)
    archive = _archive_check(project, env)
    record = _Record(project, env, started)
    with _teardown() as teardown:  # everything the drill starts is stopped and removed, pass or fail
        teardown.callback(record.close)
        # what the repository holds now, as a disaster at this instant would find it: the live
        # server's open segment not switched out, the queue not waited for, a stopped archiver
        # not started (restore's 'latest' does all three)
        plan = pr.plan(project, env, "latest", None, beside=True, report=report, as_it_is=True)
        # the restore's record (its server's PID, the copy's folders) stays until the copy is torn
        # down: a drill killed meanwhile leaves it to the next restore, drill or `local down`
        teardown.callback(pr.discard, plan)
        result = pr.run(plan)
        teardown.callback(shutil.rmtree, result.data_dir, True)
        teardown.callback(pg.stop, result.pid)
        db_seconds = time.monotonic() - began
        rpo = None
        if result.recovered_to is not None:
            if answered:  # the newest commit the live server holds (none known: none newer than recovered)
                newest = max(live or result.recovered_to, result.recovered_to)
                live = newest
                basis = RPO_LIVE
            else:  # the live server is down: the drill is the recovery; loss up to the failure instant
                newest = started
                basis = RPO_DOWN
            rpo = max(0.0, (newest - result.recovered_to).total_seconds())
        out = DrillResult(env.name, env.platform, started, round(db_seconds, 2),
                          None if rpo is None else round(rpo, 3), rto_target, rpo_target, False,
                          result.recovered_to, live, result.data_dir, rows=result.rows, tables=len(result.tables),
                          phases=dict(result.phases), checked=f"{len(result.tables)} tables, {result.rows} rows read")
        out.phases["database"] = round(db_seconds, 2)
        if rpo is not None:
            out.rpo_basis = basis
        partial.append(out)
        services, missing = _services_ready(project, env)
        if services:  # breaker 20 F7: `scope` said ["database"] after a drill that covered all of it;
            # each part is in it once done (breaker 22 F3: all of it after a serve phase that stopped early)
            try:
                _serve(project, env, result, out, teardown, began, services, record)
            except OpsError as exc:  # the serve phase failed: the database part's result stays (breaker F8)
                out.error = credentials(str(exc)) or type(exc).__name__
                out.problems.append(f"the serve phase failed: {out.error}")
            _uncovered(out, "not reached: the serve phase stopped before it (see the problems)")
        else:  # what the platform lacks to serve from the restored data, said part by part (breaker F6)
            out.scope = list(PARTS[:1])
            _uncovered(out, missing)
    out.torn_down = True
    _judge(out)
    _judge_archive(out, archive)  # after the targets: their problems come first
    out.passed = not out.problems
    return out


def _archive_check(project: Project, env: Environment):
    """The `wal archive` health check (pitr.health.archive_lag, its own rules) as it stands now;
    None when it could not be asked (said in the result as UNKNOWN, never a pass by silence)."""
    from opsctl.health.model import CheckResult, Status
    from opsctl.pitr.health import archive_lag
    from opsctl.redact import credentials

    try:
        return archive_lag(project, env)
    except Exception as exc:  # noqa: BLE001 - the drill goes on; what it could not check is said
        return CheckResult("wal archive", "backup", Status.UNKNOWN,
                           f"the check failed: {credentials(str(exc)) or type(exc).__name__}")


def _judge_archive(out: DrillResult, archive) -> None:
    """The archive not advancing at the drill's start is a problem of the drill, so a real
    recovery would lose what waits or what comes next (the drill's own RPO does not show it):
    a `wal archive` check that is CRITICAL, and also one that is only a WARNING because no
    segment has waited yet while no archiver runs or the one running is stuck (breaker 44 T8:
    the drill passed right after the archiver was killed; its own restore then queued the
    segments that made the next check CRITICAL)."""
    if archive is None:
        return
    from opsctl.health.model import Status

    out.wal_archive = f"{archive.status.name}: {archive.message}"
    details = archive.details or {}
    if archive.status == Status.CRITICAL:
        out.problems.append(f"{STALLED} (the 'wal archive' check is CRITICAL at the drill's start): {archive.message}")
    elif details.get("archiver_running") is False or details.get("archiver_stuck"):
        why = "no WAL archiver runs" if details.get("archiver_running") is False else "the WAL archiver is stuck"
        out.problems.append(f"{STALLED} ({why} at the drill's start): {archive.message}")


def _services_ready(project: Project, env: Environment) -> tuple[dict | None, dict[str, str]]:
    """(what the serve phase needs of the platform, or None; why each part beyond the database
    can't be drilled when it is None).

    The drill restores from backups, so the live Redis and the live worker need not run (breaker
    F6: a killed Redis shrank the drill to the database, its note blaming S3 and the worker
    too): Redis comes from its backup into a scratch Redis, the preview worker is started from
    the recorded worker's settings. What it does need: a platform that runs Redis, S3 and a
    worker (`opsctl local up` recorded them), and the platform's S3 running, which holds the
    drill's scratch audio bucket."""
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.local import worker as wk

    state = st.load(st.folder_for(project.root))
    comps = state.components
    worker = comps.get(wk.name(state.active_color))
    absent = [label for name, label in (("redis", "Redis"), ("s3", "S3")) if name not in comps]
    if worker is None:
        absent.append("worker")
    if absent:
        names = ", ".join(absent[:-1]) + (" or " if len(absent) > 1 else "") + absent[-1]
        return None, {p: f"the platform runs no {names}: 'opsctl local up' started none" for p in PARTS[1:]}
    if not procs.alive(comps["s3"].pid):
        why = f"the platform's S3 (port {comps['s3'].port}) is not running: the serve phase restores the audio into " \
              "a scratch bucket on it"
        return None, {p: why for p in PARTS[1:]}
    return {"state": state, "worker": worker}, {}


def _serve(project: Project, env: Environment, result, out: DrillResult, teardown, began: float,
           services: dict, record: _Record) -> None:
    """Redis and the audio objects of the newest backup holding them into scratch resources, a
    preview worker on the restored database and them, the sample transcription and a short
    load test through it. Fills `out` (RTO: start to the preview serving); registers every
    teardown on `teardown`. Until the preview serves, no RTO is achieved (None): a serve phase
    that stops early (no backup with Redis and audio) reports none, not the database's time."""
    import tempfile

    out.rto_seconds = None

    from opsctl.backup import catalog, files
    from opsctl.backup import redis as rdb
    from opsctl.backup.verify import fetch
    from opsctl.endpoints import resolve
    from opsctl.local import procs
    from opsctl.local import worker as wk
    mark = time.monotonic()
    ep = resolve(project, env)
    from opsctl.backup.repository import open_repository
    from opsctl.backup import keys
    from opsctl.redact import credentials

    key = keys.load(project, env, required=False)
    repo = open_repository(env.backup.repository, project, ep)
    repo.key = key
    # each part from the newest complete backup holding it: the hourly Redis snapshot is
    # newer than the nightly backup that also holds the audio (a drill restoring the Redis of
    # the nightly one recovered up to a day less than the repository held, and said nothing)
    chosen: dict[str, str] = {}
    missing: list[tuple[str, Exception]] = []
    for part, component in (("redis", "redis"), ("audio objects", "files")):
        try:
            chosen[part] = catalog.resolve(repo, None, None, True, [component], [])
        except Exception as exc:  # noqa: BLE001 - no such backup: said in the result, the drill fails
            missing.append(("Redis" if part == "redis" else "audio", exc))
    if missing:
        # the serve phase ends here: `error` says why, as for any other failed phase (breaker 22 F3)
        out.error = credentials(f"no backup with {' and '.join(n for n, _ in missing)} to drill: {missing[0][1]}")
        out.problems.append(out.error)
        return
    manifests = {part: catalog.load(repo, backup_id, key) for part, backup_id in chosen.items()}
    out.backups = dict(chosen)
    out.part_rpo_seconds = {part: round(max(0.0, (out.started_at - m.created_at).total_seconds()), 3)
                            for part, m in manifests.items()}
    tmp = Path(teardown.enter_context(tempfile.TemporaryDirectory(prefix="opsctl-drill-")))
    record.add("folder", path=str(tmp))
    rdb_file = tmp / "redis" / "dump.rdb"
    redis_part = manifests["redis"].redis
    fetch(repo, redis_part.object, key, rdb_file)
    redis_url = teardown.enter_context(rdb.scratch_server(rdb_file))
    record.add("redis", port=int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    rdb.check_counts(redis_url, redis_part.keys, redis_part.expires)
    out.redis_keys = sum(redis_part.keys.values())
    out.scope.append("redis")
    s3 = ep.s3_client()
    bucket = scratch_bucket(env.buckets.audio, out.started_at)
    record.add("bucket", name=bucket)
    teardown.callback(_drop_bucket, s3, bucket)
    s3.create_bucket(Bucket=bucket)
    audio = manifests["audio objects"].files
    files.check(repo, audio)
    out.audio_objects = files.restore(s3, bucket, repo, audio.objects)
    out.scope.append("audio objects")
    out.phases["redis+audio"] = round(time.monotonic() - mark, 2)
    mark = time.monotonic()
    # the preview color: the platform's own worker settings, pointed at the scratch resources
    state, worker = services["state"], services["worker"]
    port, metrics = procs.free_port(), procs.free_port()
    variables = wk.environment(state, env, "preview", worker.version or "drill", worker.settings)
    variables.update({"WORKER_DATABASE_URL": f"postgresql://{env.database.user}@{procs.HOST}:"
                                             f"{result.url.rsplit(':', 1)[1].split('/')[0]}/{env.database.name}",
                      "WORKER_REDIS_URL": redis_url, "WORKER_S3_BUCKET": bucket,
                      "WORKER_METRICS_PORT": str(metrics), "WORKER_COLOR": "preview"})
    log = tmp / "preview-worker.log"
    item = record.add("worker", port=port, pid=None)
    pid = procs.spawn([wk.executable(), "serve", "--host", procs.HOST, "--port", str(port)], log, env=variables)
    teardown.callback(procs.stop, pid, 30, "transcription-worker")
    item["pid"] = pid
    record.update()
    try:
        _preview(project, env, out, began, mark, result, redis_url, bucket, port, pid, log)
    except Exception as exc:
        # the log the error names is in the folder teardown removes: kept beside the drill's
        # record, and the error names the kept copy (breaker F8)
        kept = _keep_log(project, env, out, log)
        if kept is None or str(log) not in str(exc):
            raise
        from opsctl.errors import OperationFailed

        raise OperationFailed(str(exc).replace(str(log), kept)) from exc


def _keep_log(project: Project, env: Environment, out: DrillResult, log: Path) -> str | None:
    """The preview worker's log copied to `.opsctl/drill/<env>-<time>-preview-worker.log`
    (0600), which teardown does not remove; its path (also `out.worker_log`), or None when
    there is no log to keep."""
    from opsctl.files import write_text

    try:
        text = log.read_bytes()
    except OSError:
        return None
    kept = project.state_dir / "drill" / f"{env.name}-{out.started_at.strftime('%Y%m%d%H%M%S%f')}-preview-worker.log"
    write_text(kept, text, private=True)
    out.worker_log = str(kept)
    return out.worker_log


def _preview(project: Project, env: Environment, out: DrillResult, began: float, mark: float, result,
             redis_url: str, bucket: str, port: int, pid: int, log: Path) -> None:
    """The serve phase's end: wait for the preview worker, then the sample transcription and
    a 10 s load test through it. A load test cut short by Ctrl-C or SIGTERM is the drill's
    cancel (KeyboardInterrupt), not a failed load test: the load test takes the signal to save
    what it measured and returns, marked interrupted (breaker F3)."""
    from opsctl.deploy import analysis
    from opsctl.local import procs
    from opsctl.local import worker as wk

    procs.wait_until(lambda: wk.ready(port), env.deploy.ready_timeout, "the drill's preview worker", log, pid,
                     interval=0.25)
    out.rto_seconds = round(time.monotonic() - began, 2)  # start to serving
    out.phases["preview"] = round(time.monotonic() - mark, 2)
    out.scratch = f"{result.data_dir}; redis {redis_url}; bucket {bucket}; preview {wk.base_url(port)}"
    mark = time.monotonic()
    headers = analysis.analysis_headers(env.deploy.api_key_env)
    verdict = analysis.transcribe_check(wk.base_url(port), headers)
    out.transcription = verdict.detail
    out.scope.append("preview color + transcription")
    if not verdict.ok:
        out.problems.append(f"the sample transcription through the preview failed: {verdict.detail}")
    from opsctl.loadtest.operation import load_test

    # errors only: the drill proves the restored stack serves; latency is the load gates' business
    # requests in flight when the 10 s end get 120 s to finish: a slow answer is not an error
    outcome = load_test(project, env, "light", users=2, spawn_rate=2, duration="10s",
                        host=wk.base_url(port), slo="error_rate<5%", stop_timeout="120s")
    outcome.raise_if_interrupted()  # its partial run is saved to the history; the drill is cancelled
    out.load_test = outcome.verdict()
    out.scope.append("load test")
    if not outcome.passed:
        out.problems.append(f"the load test through the preview failed: {out.load_test}")
    out.phases["checks"] = round(time.monotonic() - mark, 2)


def scratch_bucket(audio_bucket: str, started: dt.datetime) -> str:
    """The drill's own audio bucket: `<audio>-drill-<UTC second>-<6 random hex>`, the audio
    bucket's name shortened so the whole stays within S3's 63 characters and the random part
    is never cut. Two drills started in the same second get two buckets: S3 (us-east-1) answers
    CreateBucket of a bucket one already owns with 200, so a shared name would have let one
    drill's teardown drop the bucket the other still reads."""
    import secrets

    suffix = f"-drill-{started.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    return audio_bucket[:63 - len(suffix)].rstrip("-.") + suffix


def _drop_bucket(s3, bucket: str) -> None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - teardown goes on; the bucket is named in the result
        pass


def _judge(out: DrillResult) -> None:
    if out.error is not None:  # a failed drill never served: no RTO (breaker 25 F7: RPO 0.0 reported)
        # the database's RPO stays when its restore was done and checked (a failed restore has
        # none); a part's only when the part was restored (breaker F8)
        out.rto_seconds = None
        out.part_rpo_seconds = {p: v for p, v in out.part_rpo_seconds.items() if p in out.scope}
    if out.rto_seconds is None:
        out.problems.append("RTO not achieved: the restored copy never served")
    elif out.rto_seconds > out.rto_target_seconds:
        out.problems.append(f"RTO {out.rto_seconds:.0f} s above the target {out.rto_target_seconds:.0f} s")
    if out.rpo_seconds is None:
        out.problems.append("RPO not achieved: the drill failed" if out.error else
                            "RPO unknown: the restore replayed no commit")
    elif out.rpo_seconds > out.rpo_target_seconds:
        out.problems.append(f"RPO {out.rpo_seconds:.0f} s above the target {out.rpo_target_seconds:.0f} s")
    for part, value in out.part_rpo_seconds.items():
        if value > out.rpo_target_seconds:
            out.problems.append(f"RPO of {part} {value:.0f} s above the target {out.rpo_target_seconds:.0f} s: "
                                f"its newest backup, {out.backups.get(part)}, began that long before the drill")
    out.passed = not out.problems


def _delete_rds(env: Environment, name: str) -> None:
    """Delete the scratch instance `name` (no final snapshot, its automated backups with it); one
    that does not exist (never created, deleted already) is done."""
    from opsctl.pitr import rds

    client = rds.client(env)
    try:
        client.delete_db_instance(DBInstanceIdentifier=name, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
    except client.exceptions.DBInstanceNotFoundFault:
        pass


def _rds(project: Project, env: Environment, started: dt.datetime, began: float, rto_target: float,
         rpo_target: float) -> DrillResult:
    from opsctl.pitr import rds

    # RDS takes 63 characters: a long source name is cut so the 21 after it fit
    scratch = f"{(env.database.rds_instance or 'db')[:42].rstrip('-')}-drill-{started.strftime('%Y%m%d%H%M%S')}"
    rds.check_instance_identifier(scratch, "the drill's scratch instance",
                                  f"correct database.rds_instance of '{env.name}' in opsctl.yaml")
    if env.database.rds_instance and rds.client(env).describe_db_instances(
            Filters=[{"Name": "db-instance-id", "Values": [scratch]}])["DBInstances"]:
        from opsctl.errors import UsageError

        raise UsageError(f"RDS instance {scratch} already exists (another drill this second?); nothing was changed; "
                         "re-run")  # never deleted below: it is not this drill's
    record = _Record(project, env, started)
    record.add("rds", name=scratch)  # before it exists: a drill killed while RDS creates it leaves its name
    try:
        r = rds.restore_to_time(env, scratch, None)
        rto = time.monotonic() - began
        latest = r.latest_restorable
        # the data lost had the source failed as the drill began: how far RDS's latest
        # restorable time lags the source's own clock, both AWS's (the response's Date header;
        # this machine's clock only when AWS sent none): a local clock running fast or slow
        # would otherwise move the RPO by its error
        rpo = max(0.0, ((r.aws_now or started) - latest).total_seconds()) if latest else None
        out = DrillResult(env.name, env.platform, started, round(rto, 2), None if rpo is None else round(rpo, 3),
                          rto_target, rpo_target, False, latest, None, scratch,
                          rpo_basis=RPO_RDS if rpo is not None else "",
                          # never connected to: what RDS said of it, no row figures (breaker F17)
                          checked=f"RDS reports it available at {r.endpoint}; not connected to, no rows read")
        _uncovered(out, "a cloud drill restores the database alone")
    finally:  # pass, fail or cancel: the scratch instance is deleted (the record kept if that fails)
        left = None
        try:
            _delete_rds(env, scratch)
            record.close()
        except Exception as exc:  # noqa: BLE001 - said in the result; the next drill deletes it by the record
            from opsctl.redact import credentials

            left = f"the scratch instance {scratch} was not deleted ({credentials(str(exc))}); the next drill " \
                   "deletes it"
    out.torn_down = left is None
    _judge(out)
    if left:
        out.problems.append(left)
        out.passed = False
    return out


def junit(result: DrillResult) -> str:
    """The drill as a JUnit document (junitparser): one test case per target, one skipped case
    per part the drill did not cover (its reason the message). A case's `time` is seconds it
    took (the RTO case: the recovery's); an RPO is no duration: its case takes 0 s and says the
    figure in its output. The suite's time is the drill's own duration."""
    from junitparser import Failure, JUnitXml, Skipped, TestCase, TestSuite

    suite = TestSuite(f"dr drill {result.environment}")
    stalled = [p for p in result.problems if p.startswith(STALLED)]
    for name, value, target in (("rto", result.rto_seconds, result.rto_target_seconds),
                                ("rpo", result.rpo_seconds, result.rpo_target_seconds)):
        case = TestCase(f"{name} within {target:.0f} s", classname=f"dr.{result.environment}")
        case.time = (value or 0.0) if name == "rto" else 0.0
        if name == "rpo" and value is not None:
            case.system_out = f"RPO {value} s" + (f", measured {result.rpo_basis}" if result.rpo_basis else "")
        if value is None:  # a failed drill achieved none: the time it took to fail is no RTO
            case.result = [Failure(f"{name.upper()} not achieved"
                                   + (f": the drill failed: {result.error}" if result.error else
                                      ": the restore replayed no commit" if name == "rpo" else ""))]
        elif value > target:
            case.result = [Failure(f"{name.upper()} {value} s above the target {target:.0f} s")]
        if name == "rpo" and stalled:  # commits at risk now: the RPO a real recovery would miss
            if case.result:
                case.result[0].message = f"{case.result[0].message}; {stalled[0]}"
            else:
                case.result = [Failure(stalled[0])]
        suite.add_testcase(case)
    for part, value in result.part_rpo_seconds.items():
        case = TestCase(f"rpo of {part} within {result.rpo_target_seconds:.0f} s", classname=f"dr.{result.environment}")
        case.time = 0.0
        case.system_out = f"RPO {value} s: from the start of backup {result.backups.get(part)} to the drill's start"
        if value > result.rpo_target_seconds:
            case.result = [Failure(f"RPO of {part} {value} s above the target {result.rpo_target_seconds:.0f} s "
                                   f"(backup {result.backups.get(part)})")]
        suite.add_testcase(case)
    if result.error is not None:
        case = TestCase("drill ran", classname=f"dr.{result.environment}")
        case.result = [Failure(f"the drill failed: {result.error}")]
        suite.add_testcase(case)
    for name, detail in (("sample transcription through the preview color", result.transcription),
                         ("load test through the preview color", result.load_test)):
        if detail is None:
            continue
        case = TestCase(name, classname=f"dr.{result.environment}")
        failed = [p for p in result.problems if name.split(" through")[0] in p]
        if failed:
            case.result = [Failure(failed[0])]
        suite.add_testcase(case)
    for part in result.not_covered:
        case = TestCase(f"{part} covered", classname=f"dr.{result.environment}")
        case.time = 0.0
        case.result = [Skipped(result.not_covered_reasons.get(part) or "not covered")]
        suite.add_testcase(case)
    suite.time = result.duration_seconds or 0.0  # not the sum of the cases: the RTO overlaps every phase
    from opsctl.health.junit import tostring

    xml = JUnitXml()
    xml.add_testsuite(suite)
    return tostring(xml).decode()  # control characters of an error as escapes: the XML parses


def metrics(result: DrillResult) -> str:
    """Prometheus text format (for node_exporter's textfile collector) the alert rules can use
    (templates/monitoring/alert-rules.yml.j2, group dr-drill): the achieved RTO and RPO beside
    the targets they were judged against, success and the start time. An RTO or RPO not
    achieved (a failed drill) is NaN, never a number an alert could take for a recovery time
    (NaN compares false, so only `opsctl_dr_drill_success == 0` fires for it)."""
    labels = f'env="{result.environment}"'

    def value(v: float | None) -> str:
        return "NaN" if v is None else str(v)
    lines = [
        "# HELP opsctl_dr_drill_rto_seconds Seconds from the drill's start until the restored database served.",
        "# TYPE opsctl_dr_drill_rto_seconds gauge",
        f"opsctl_dr_drill_rto_seconds{{{labels}}} {value(result.rto_seconds)}",
        "# HELP opsctl_dr_drill_rpo_seconds Seconds of commits the restore did not recover.",
        "# TYPE opsctl_dr_drill_rpo_seconds gauge",
        f"opsctl_dr_drill_rpo_seconds{{{labels}}} {value(result.rpo_seconds)}",
        "# HELP opsctl_dr_drill_part_rpo_seconds Seconds from the start of the backup a part was restored from "
        "to the drill's start (NaN: the drill did not restore it).",
        "# TYPE opsctl_dr_drill_part_rpo_seconds gauge",
        *(f'opsctl_dr_drill_part_rpo_seconds{{{labels},part="{part}"}} {value(result.part_rpo_seconds.get(part))}'
          for part in ("redis", "audio objects")),
        "# HELP opsctl_dr_drill_rto_target_seconds The RTO the drill was judged against (dr.rto).",
        "# TYPE opsctl_dr_drill_rto_target_seconds gauge",
        f"opsctl_dr_drill_rto_target_seconds{{{labels}}} {result.rto_target_seconds:g}",
        "# HELP opsctl_dr_drill_rpo_target_seconds The RPO the drill and each part were judged against (dr.rpo).",
        "# TYPE opsctl_dr_drill_rpo_target_seconds gauge",
        f"opsctl_dr_drill_rpo_target_seconds{{{labels}}} {result.rpo_target_seconds:g}",
        "# HELP opsctl_dr_drill_success 1 when the last drill met both targets.",
        "# TYPE opsctl_dr_drill_success gauge",
        f"opsctl_dr_drill_success{{{labels}}} {1 if result.passed else 0}",
        "# HELP opsctl_dr_drill_timestamp_seconds When the last drill started (Unix time).",
        "# TYPE opsctl_dr_drill_timestamp_seconds gauge",
        f"opsctl_dr_drill_timestamp_seconds{{{labels}}} {result.started_at.timestamp():.0f}",
    ]
    return "\n".join(lines) + "\n"
