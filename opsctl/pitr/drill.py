"""`opsctl dr drill`: restore the database to the newest restorable time into scratch
resources, serve from them, measure what the recovery achieved, tear down.

- **RTO achieved**: seconds from the drill's start (the pretended failure instant) until the
  restored database answered its checks (every table read, the replayed commit known).
- **RPO achieved**: seconds of commits the restore would have lost: the newest commit of the
  live database at the failure instant (`pg_last_committed_xact()`, track_commit_timestamp)
  minus the newest commit the restore recovered; 0 when it recovered everything. On RDS,
  the failure instant minus RDS's LatestRestorableTime.

Both are judged against `dr: {rto, rpo}` in opsctl.yaml. The embedded platform restores
beside the live server (`restore --to-time latest --beside`) and stops and removes the copy
afterwards; a cloud environment restores RDS into a scratch instance `<rds>-drill-<time>`
and deletes it. Redis, the audio objects and a preview color on the restored data are not
part of this drill yet: the result says so (`scope`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from opsctl.config import Environment, Project
from opsctl.pitr.health import seconds


@dataclass
class DrillResult:
    environment: str
    platform: str
    started_at: dt.datetime
    rto_seconds: float
    rpo_seconds: float | None
    rto_target_seconds: float
    rpo_target_seconds: float
    passed: bool
    restored_to: dt.datetime | None
    live_newest_commit: dt.datetime | None
    scratch: str
    rows: int = 0
    tables: int = 0
    torn_down: bool = False
    scope: list[str] = field(default_factory=lambda: ["database"])
    not_covered: list[str] = field(default_factory=lambda: ["redis", "audio objects", "preview color + transcription",
                                                            "load test"])
    phases: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _live_newest_commit(project: Project, env: Environment) -> dt.datetime | None:
    import psycopg

    from opsctl.local import postgres as pg
    from opsctl.local import state as st

    comp = st.load(st.folder_for(project.root)).components.get("postgres")
    if comp is None:
        return None
    try:
        with psycopg.connect(pg.url(comp.port), connect_timeout=5) as conn:
            row = conn.execute("select timestamp from pg_last_committed_xact()").fetchone()
            return row[0] if row else None
    except psycopg.Error:
        return None  # the live server is down: the drill is the recovery, RPO is what the archive holds


def drill(project: Project, env: Environment, report=None) -> DrillResult:
    """Run one drill inside the environment's operation window ("drill": announced, no check
    held); never touches the live database. OpsError when the restore itself fails."""
    from opsctl.pitr.ops import window

    with window(project, env, "drill", "restore to the newest restorable time into scratch") as w:
        out = _drill(project, env, report)
        if not out.passed:
            w.outcome = "targets missed: " + "; ".join(out.problems)
        return out


def _drill(project: Project, env: Environment, report=None) -> DrillResult:
    started = dt.datetime.now(dt.timezone.utc)
    began = time.monotonic()
    rto_target, rpo_target = seconds(env.dr.rto), seconds(env.dr.rpo)
    if env.platform == "kubernetes":
        return _rds(env, started, began, rto_target, rpo_target)
    from opsctl.local import postgres as pg
    from opsctl.pitr import restore as pr

    live = _live_newest_commit(project, env)
    plan = pr.plan(project, env, "latest", None, beside=True, report=report)
    try:
        result = pr.run(plan)
    finally:
        pr.discard(plan)
    rto = time.monotonic() - began
    rpo = None
    if result.recovered_to is not None:
        rpo = max(0.0, ((live or started) - result.recovered_to).total_seconds())
    out = DrillResult(env.name, env.platform, started, round(rto, 2), None if rpo is None else round(rpo, 3),
                      rto_target, rpo_target, False, result.recovered_to, live, result.data_dir,
                      rows=result.rows, tables=len(result.tables), phases=result.phases)
    import shutil

    out.torn_down = pg.stop(result.pid) or True
    shutil.rmtree(result.data_dir, ignore_errors=True)
    _judge(out)
    return out


def _judge(out: DrillResult) -> None:
    if out.rto_seconds > out.rto_target_seconds:
        out.problems.append(f"RTO {out.rto_seconds:.0f} s above the target {out.rto_target_seconds:.0f} s")
    if out.rpo_seconds is None:
        out.problems.append("RPO unknown: the restore replayed no commit")
    elif out.rpo_seconds > out.rpo_target_seconds:
        out.problems.append(f"RPO {out.rpo_seconds:.0f} s above the target {out.rpo_target_seconds:.0f} s")
    out.passed = not out.problems


def _rds(env: Environment, started: dt.datetime, began: float, rto_target: float, rpo_target: float) -> DrillResult:
    from opsctl.pitr import rds

    scratch = f"{env.database.rds_instance or 'db'}-drill-{started.strftime('%Y%m%d%H%M%S')}"
    r = rds.restore_to_time(env, scratch, None)
    rto = time.monotonic() - began
    latest = r.latest_restorable
    rpo = max(0.0, (started - latest).total_seconds()) if latest else None
    out = DrillResult(env.name, env.platform, started, round(rto, 2), None if rpo is None else round(rpo, 3),
                      rto_target, rpo_target, False, latest, None, scratch)
    client = rds._client(env)
    client.delete_db_instance(DBInstanceIdentifier=scratch, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
    out.torn_down = True
    _judge(out)
    return out


def junit(result: DrillResult) -> str:
    """The drill as a JUnit document (junitparser): one test case per target."""
    from junitparser import Failure, JUnitXml, TestCase, TestSuite

    suite = TestSuite(f"dr drill {result.environment}")
    for name, value, target in (("rto", result.rto_seconds, result.rto_target_seconds),
                                ("rpo", result.rpo_seconds, result.rpo_target_seconds)):
        case = TestCase(f"{name} within {target:.0f} s", classname=f"dr.{result.environment}")
        case.time = value or 0.0
        if value is None or value > target:
            case.result = [Failure(f"{name.upper()} {value} s above the target {target:.0f} s")]
        suite.add_testcase(case)
    xml = JUnitXml()
    xml.add_testsuite(suite)
    return xml.tostring().decode() if isinstance(xml.tostring(), bytes) else xml.tostring()


def metrics(result: DrillResult) -> str:
    """Prometheus text format (for node_exporter's textfile collector) the alert rules can use."""
    labels = f'env="{result.environment}"'
    lines = [
        "# HELP opsctl_dr_drill_rto_seconds Seconds from the drill's start until the restored database served.",
        "# TYPE opsctl_dr_drill_rto_seconds gauge",
        f"opsctl_dr_drill_rto_seconds{{{labels}}} {result.rto_seconds}",
        "# HELP opsctl_dr_drill_rpo_seconds Seconds of commits the restore did not recover.",
        "# TYPE opsctl_dr_drill_rpo_seconds gauge",
        f"opsctl_dr_drill_rpo_seconds{{{labels}}} {result.rpo_seconds if result.rpo_seconds is not None else 'NaN'}",
        "# HELP opsctl_dr_drill_success 1 when the last drill met both targets.",
        "# TYPE opsctl_dr_drill_success gauge",
        f"opsctl_dr_drill_success{{{labels}}} {1 if result.passed else 0}",
        "# HELP opsctl_dr_drill_timestamp_seconds When the last drill started (Unix time).",
        "# TYPE opsctl_dr_drill_timestamp_seconds gauge",
        f"opsctl_dr_drill_timestamp_seconds{{{labels}}} {result.started_at.timestamp():.0f}",
    ]
    return "\n".join(lines) + "\n"
