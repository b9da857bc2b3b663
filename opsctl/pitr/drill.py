"""`opsctl dr drill`: restore the database to the newest restorable time into scratch
resources, serve from them, measure what the recovery achieved, tear down.

- **RTO achieved**: seconds from the drill's start (the pretended failure instant) until the
  restored database answered its checks (every table read, the replayed commit known).
- **RPO achieved**: seconds of commits the restore would have lost: the newest commit of the
  live database at the failure instant (`pg_last_committed_xact()`, track_commit_timestamp)
  minus the newest commit the restore recovered (the same function on the restored server,
  still in recovery: a commit, never an abort, though a window's end is dated by either);
  0 when it recovered everything. On RDS, the failure instant minus RDS's LatestRestorableTime.

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

from pathlib import Path

from opsctl.config import Environment, Project
from opsctl.pitr.health import seconds


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
    backup_id: str | None = None  # the backup Redis and the audio came from
    redis_keys: int = 0
    audio_objects: int = 0
    transcription: str | None = None  # the sample's verdict through the preview color
    load_test: str | None = None  # the short load test's verdict through it
    problems_note: str = ""


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


def drill(project: Project, env: Environment, report=None, junit_path: Path | None = None,
          metrics_path: Path | None = None) -> DrillResult:
    """Run one drill inside the environment's operation window ("drill": announced, no check
    held); never touches the live database. OpsError when the restore itself fails.

    `junit_path` / `metrics_path`: where the result is written, pass or fail, as JUnit XML
    (`junit`) and Prometheus text (`metrics`), each whole (write_reports). The command and
    the runbook step both hand their paths here: the one place reports are written."""
    from opsctl.pitr.ops import window

    with window(project, env, "drill", "restore to the newest restorable time into scratch") as w:
        out = _drill(project, env, report)
        if not out.passed:
            w.outcome = "targets missed: " + "; ".join(out.problems)
    write_reports(out, junit_path, metrics_path)
    return out


def write_reports(result: DrillResult, junit_path: Path | None = None, metrics_path: Path | None = None) -> None:
    """`result` as JUnit XML at `junit_path` and Prometheus text at `metrics_path` (None: not
    written): the folder created, each file written to a temporary name beside it and renamed
    over it, so a scraper or CI never reads half a report."""
    import os

    for path, render in ((junit_path, junit), (metrics_path, metrics)):
        if path is None:
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(render(result))
        os.replace(tmp, path)


def _drill(project: Project, env: Environment, report=None) -> DrillResult:
    started = dt.datetime.now(dt.timezone.utc)
    began = time.monotonic()
    rto_target, rpo_target = seconds(env.dr.rto), seconds(env.dr.rpo)
    if env.platform == "kubernetes":
        return _rds(env, started, began, rto_target, rpo_target)
    import shutil
    from contextlib import ExitStack

    from opsctl.local import postgres as pg
    from opsctl.pitr import restore as pr

    live = _live_newest_commit(project, env)
    with ExitStack() as teardown:  # everything the drill starts is stopped and removed, pass or fail
        plan = pr.plan(project, env, "latest", None, beside=True, report=report)
        try:
            result = pr.run(plan)
        finally:
            pr.discard(plan)
        teardown.callback(shutil.rmtree, result.data_dir, True)
        teardown.callback(pg.stop, result.pid)
        db_seconds = time.monotonic() - began
        rpo = None
        if result.recovered_to is not None:
            rpo = max(0.0, ((live or started) - result.recovered_to).total_seconds())
        out = DrillResult(env.name, env.platform, started, round(db_seconds, 2),
                          None if rpo is None else round(rpo, 3), rto_target, rpo_target, False,
                          result.recovered_to, live, result.data_dir, rows=result.rows, tables=len(result.tables),
                          phases=dict(result.phases))
        out.phases["database"] = round(db_seconds, 2)
        services = _services_ready(project, env)
        if services:
            out.not_covered = []
            _serve(project, env, result, out, teardown, began, services)
        else:
            out.not_covered = ["redis", "audio objects", "preview color + transcription", "load test"]
            out.problems_note = "the platform runs no Redis/S3/worker: the drill covers the database only"
    out.torn_down = True
    _judge(out)
    return out


def _services_ready(project: Project, env: Environment) -> dict | None:
    """The platform's Redis, S3 and a worker when all run, else None (database-only drill)."""
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.local import worker as wk

    state = st.load(st.folder_for(project.root))
    comps = state.components
    worker = comps.get(wk.name(state.active_color))
    if not all(n in comps and procs.alive(comps[n].pid) for n in ("redis", "s3")) or worker is None \
            or not procs.alive(worker.pid):
        return None
    return {"state": state, "worker": worker}


def _serve(project: Project, env: Environment, result, out: DrillResult, teardown, began: float,
           services: dict) -> None:
    """Redis and the audio objects of the newest backup holding them into scratch resources, a
    preview worker on the restored database and them, the sample transcription and a short
    load test through it. Fills `out` (RTO: start to the preview serving); registers every
    teardown on `teardown`."""
    import tempfile

    from opsctl.backup import catalog, files
    from opsctl.backup import redis as rdb
    from opsctl.backup.verify import fetch
    from opsctl.deploy import analysis
    from opsctl.endpoints import resolve
    from opsctl.local import procs
    from opsctl.local import worker as wk
    mark = time.monotonic()
    ep = resolve(project, env)
    from opsctl.backup.repository import open_repository
    from opsctl.backup import keys

    key = keys.load(project, env, required=False)
    repo = open_repository(env.backup.repository, project, ep)
    repo.key = key
    skipped: list[str] = []
    try:
        chosen = catalog.resolve(repo, None, None, True, ["redis", "files"], skipped)
    except Exception as exc:  # noqa: BLE001 - no such backup: said in the result, the drill fails
        out.problems.append(f"no backup with Redis and audio to drill: {exc}")
        return
    manifest = catalog.load(repo, chosen, key)
    out.backup_id = chosen
    tmp = Path(teardown.enter_context(tempfile.TemporaryDirectory(prefix="opsctl-drill-")))
    rdb_file = tmp / "redis" / "dump.rdb"
    fetch(repo, manifest.redis.object, key, rdb_file)
    redis_url = teardown.enter_context(rdb.scratch_server(rdb_file))
    rdb.check_counts(redis_url, manifest.redis.keys, manifest.redis.expires)
    out.redis_keys = sum(manifest.redis.keys.values())
    s3 = ep.s3_client()
    bucket = f"{env.buckets.audio}-drill-{out.started_at.strftime('%Y%m%d%H%M%S')}"[:63]
    s3.create_bucket(Bucket=bucket)
    teardown.callback(_drop_bucket, s3, bucket)
    files.check(repo, manifest.files)
    out.audio_objects = files.restore(s3, bucket, repo, manifest.files.objects)
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
    pid = procs.spawn([wk.executable(), "serve", "--host", procs.HOST, "--port", str(port)], log, env=variables)
    teardown.callback(procs.stop, pid, 30, "transcription-worker")
    procs.wait_until(lambda: wk.ready(port), env.deploy.ready_timeout, "the drill's preview worker", log, pid,
                     interval=0.25)
    out.rto_seconds = round(time.monotonic() - began, 2)  # start to serving
    out.phases["preview"] = round(time.monotonic() - mark, 2)
    out.scratch = f"{result.data_dir}; redis {redis_url}; bucket {bucket}; preview {wk.base_url(port)}"
    mark = time.monotonic()
    headers = analysis.analysis_headers(env.deploy.api_key_env)
    verdict = analysis.transcribe_check(wk.base_url(port), headers)
    out.transcription = verdict.detail
    if not verdict.ok:
        out.problems.append(f"the sample transcription through the preview failed: {verdict.detail}")
    from opsctl.loadtest.operation import load_test

    # errors only: the drill proves the restored stack serves; latency is the load gates' business
    # requests in flight when the 10 s end get 120 s to finish: a slow answer is not an error
    outcome = load_test(project, env, "light", users=2, spawn_rate=2, duration="10s",
                        host=wk.base_url(port), slo="error_rate<5%", stop_timeout="120s")
    out.load_test = outcome.verdict()
    if not outcome.passed:
        out.problems.append(f"the load test through the preview failed: {out.load_test}")
    out.phases["checks"] = round(time.monotonic() - mark, 2)


def _drop_bucket(s3, bucket: str) -> None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - teardown goes on; the bucket is named in the result
        pass


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
    client = rds.client(env)
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
    for name, detail in (("sample transcription through the preview color", result.transcription),
                         ("load test through the preview color", result.load_test)):
        if detail is None:
            continue
        case = TestCase(name, classname=f"dr.{result.environment}")
        failed = [p for p in result.problems if name.split(" through")[0] in p]
        if failed:
            case.result = [Failure(failed[0])]
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
