"""The WAL archive health check: how old the oldest commit not yet in the repository can be.

Judged against the environment's RPO (`dr.rpo` in opsctl.yaml, default 1h): commits in the
segment PostgreSQL is writing reach the archive within `backup.archive_timeout`, and a
finished segment still waiting in the local queue has been at risk since PostgreSQL finished
it (the file's time). So the lag is `archive_timeout` plus the age of the oldest queued
segment. A failing `archive_command` (a full disk, a queue it can't write) keeps segments in
`pg_wal` instead: the server itself is asked (pg_stat_archiver: failed_count, last_failed_wal,
last_failed_time after last_archived_time; pg_ls_archive_statusdir: the oldest `.ready` file,
the segment waiting longest), and that wait counts in the lag too. CRITICAL when the lag exceeds
the RPO, when segments wait and no archiver runs, when a queued file conflicts with a stored
one of the same name (archive.WalConflict), when a queued segment's header names no cluster
(quarantined), or when the queue dropped segments (a gap: restores can't cross it until a base
backup starting after it, so it stays named until one exists); WARNING when the
`archive_command` fails but the lag is still within the RPO, when the archiver is not
running but nothing waits yet, or when it runs but is stuck (pitr.local.stalled: stopped, or
not moving for STALL_S).
"""

from __future__ import annotations

import os
import time

from opsctl.errors import UsageError
from opsctl.health.model import CheckResult, Status

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SWITCH_GRACE_S = 5.0  # seconds past archive_timeout a commit may wait for its segment's switch
# the wal archive check's own timeout (seconds) unless health.timeouts sets one: it lists the WAL
# since the newest base backup (breaker 22 F11: 17 listings, 3.7 s, on moto with a day of WAL);
# it waits for the repository two seconds less, then answers without it
TIMEOUT_S = 30.0
_READY = ("(select extract(epoch from min(modification))::float8 from pg_ls_archive_statusdir() "
          "where name like '%.ready'), (select count(*) from pg_ls_archive_statusdir() where name like '%.ready')")


# the newest commit's time (pg_last_committed_xact needs track_commit_timestamp, which the
# embedded platform runs with; NULL without it)
_LAST_COMMIT = ("case when current_setting('track_commit_timestamp') = 'on' then (select extract(epoch from "
                "x.timestamp)::float8 from pg_last_committed_xact() x) end")


def _archiver_sql(ready: str = _READY) -> str:
    """pg_stat_archiver's failure and success times, the `ready` columns (oldest .ready file's
    time, their count), the newest commit's time and the server's now, in epoch seconds."""
    return ("select a.failed_count, a.last_failed_wal, extract(epoch from a.last_failed_time)::float8, "
            f"extract(epoch from a.last_archived_time)::float8, {ready}, {_LAST_COMMIT}, "
            "extract(epoch from now())::float8 from pg_stat_archiver a")


_ARCHIVER_SQL = _archiver_sql()
_ARCHIVER_SQL_UNPRIVILEGED = _archiver_sql("null, null")  # pg_ls_archive_statusdir needs a superuser


def seconds(duration: str) -> float:
    """'90s', '30m', '4h', '7d' -> seconds (the format opsctl.yaml's dr settings are checked against)."""
    return float(duration[:-1]) * UNITS[duration[-1]]


def _server_archiver(state) -> dict | None:
    """What the embedded platform's PostgreSQL says of its own archiving (`ask_archiver`), or
    None when it can't be asked (not running)."""
    comp = state.components.get("postgres")
    if comp is None or not comp.port:
        return None
    import psycopg

    from opsctl.local import postgres as pg

    try:
        return ask_archiver(pg.url(comp.port))
    except psycopg.Error:
        return None


def ask_archiver(url: str) -> dict:
    """What the PostgreSQL at `url` says of its own archiving: {"failing": bool (a failure after
    the last success), "wal": the segment that failed last, "failures": failed_count,
    "failed_at" / "archived_at" (epoch s or None), "ready": segments waiting in pg_wal,
    "oldest_ready_age": seconds the oldest has waited (None when none waits), "unswitched_age":
    seconds since the newest commit when it came after the last file archived (its segment not
    yet handed to archive_command: a lower bound of how long commits wait unarchived; None
    otherwise, without commit timestamps, or with no archived time), "archive_mode"}.
    Times are the server's, so ages don't depend on this host's clock. pg_ls_archive_statusdir
    needs a superuser (or a role granted it); without it "ready" and "oldest_ready_age" are
    None. Raises psycopg.Error when the server can't be asked (3 s to connect)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        mode = conn.execute("show archive_mode").fetchone()[0]
        try:
            row = conn.execute(_ARCHIVER_SQL).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            row = conn.execute(_ARCHIVER_SQL_UNPRIVILEGED).fetchone()
    failures, wal, failed_at, archived_at, oldest_ready, ready, last_commit, now = row
    # with no archived time (nothing archived yet, or the statistics reset: breaker 17 F8) the
    # newest commit dates nothing: it may long be archived
    unswitched = (max(0.0, now - last_commit) if last_commit is not None and archived_at is not None
                  and last_commit > archived_at else None)
    return {"failing": failed_at is not None and (archived_at is None or failed_at > archived_at),
            "wal": wal, "failures": failures, "failed_at": failed_at, "archived_at": archived_at,
            "ready": ready, "oldest_ready_age": None if oldest_ready is None else max(0.0, now - oldest_ready),
            "unswitched_age": unswitched, "archive_mode": mode}


def _names(folder) -> list[str]:
    """The WAL file names in `folder` ([] when it is missing)."""
    from opsctl.pitr import layout

    try:
        return sorted(n for n in os.listdir(folder) if layout.WAL_FILE.fullmatch(n))
    except FileNotFoundError:
        return []


def _late(unswitched: float, archive_timeout: float) -> bool:
    """Whether a commit has waited for its segment's switch well past archive_timeout
    (seconds both): by SWITCH_GRACE_S, or by archive_timeout again when that is longer."""
    return unswitched > archive_timeout + max(SWITCH_GRACE_S, archive_timeout)


def _late_text(unswitched: float, archive_timeout: float) -> str:
    return (f"a commit has waited {unswitched:.0f} s for its WAL segment to be switched out, longer than "
            f"archive_timeout ({archive_timeout:g} s): the server does not switch segments on time; 'select "
            "pg_switch_wal()' ships them now, and PostgreSQL's log may say why")


def archive_lag(project, env, timeout: float = TIMEOUT_S) -> CheckResult:
    """The `wal archive` check of the embedded platform: commits at risk = archive_timeout + age of
    the oldest segment waiting in the queue or in pg_wal (seconds), judged against `dr.rpo`;
    CRITICAL for dropped segments not yet covered by a base backup, WAL files a restore from
    the newest base backup reads that are gone from the repository (`missing_archived`),
    quarantined segments, or segments waiting with no archiver running; WARNING/CRITICAL (by
    the lag vs the RPO) while the archive_command fails, naming the segment; UNKNOWN when
    archiving never started.
    Details: queued, dropped, archiver_running, rpo_seconds, archive_timeout_seconds, and
    archive_failing / missing / quarantined / conflicts when there are."""
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.pitr import archive
    from opsctl.pitr import local as pitr_local

    state = st.load(st.folder_for(project.root))
    queue = pitr_local.queue_dir(state)
    rpo = seconds(env.dr.rpo)
    if not queue.is_dir():
        return CheckResult("", "backup", Status.UNKNOWN, "WAL archiving was never started ('opsctl local up')")
    now = time.time()
    pending = pitr_local.queued_ages(queue)  # seconds each queued WAL file has waited
    dropped = sorted(set(_names(queue / archive.DROPPED)) | set(_names(queue / archive.GAPS)))
    quarantined = _names(queue / archive.QUARANTINE)
    server = _server_archiver(state)
    failing = server if server is not None and server["failing"] else None
    conflicts = sorted(os.listdir(queue / archive.CONFLICT)) if (queue / archive.CONFLICT).is_dir() else []
    comp = state.components.get(pitr_local.COMPONENT)
    running = comp is not None and procs.alive(comp.pid, pitr_local.HINT)
    stuck = pitr_local.stalled(state, comp.pid) if running else None
    waited = max(max(pending, default=0.0),
                 (server or {}).get("oldest_ready_age") or 0.0)  # in the queue, or still in pg_wal
    # a stopped server answers nothing: its pg_wal's .ready segments are read from the disk
    # (breaker 20 F3: "lag at most 1 s (0 queued)" with 6 s of commits never archived)
    stranded = list(pitr_local.ready_wal(state).values()) if server is None else []
    if stranded:
        waited = max(waited, now - min(stranded))
    # a commit whose segment was not switched out yet: archive_timeout bounds that wait only
    # while the server honours it (breaker 16: a checkpointer asleep for its 5 min left commits
    # unarchived for minutes while this said "at most 1 s")
    unswitched = (server or {}).get("unswitched_age") or 0.0
    lag = max(env.backup.archive_timeout + waited, unswitched)
    details = {"queued": len(pending), "dropped": dropped, "archiver_running": running, "archiver_stuck": stuck,
               "rpo_seconds": rpo, "archive_timeout_seconds": env.backup.archive_timeout}
    # archived WAL restores nothing without a base backup of its cluster: every commit since the
    # cluster was made is at risk until one is taken (breaker 18 F5: OK "lag at most 1 s" on a
    # cluster `local up` made anew after a lost disk, or on any fresh platform)
    # the repository is asked within the timeout less 2 s: a hung one must not take the check past its
    # own timeout, hiding what this check knows without it (breaker 22 F8: "no result within 5s"
    # while the archiver was stuck on the same hung repository)
    repo_wait = max(1.0, timeout - 2.0)
    answered, found = _bounded(lambda: _repository_view(project, env, state, server is not None), repo_wait)
    unbacked, missing, findings, unfit, live_tli = found if answered else (None, [], None, {}, None)
    if unbacked is not None:
        details["base_backup"] = False
        lag = max(lag, now - unbacked[1])
    if quarantined:
        details["quarantined"] = quarantined
    holes = [f for f in missing if f not in dropped]
    if holes:
        details["missing"] = holes
    if failing:
        details["archive_failing"] = {k: failing[k] for k in ("wal", "failures", "failed_at", "archived_at", "ready")}
    if conflicts:
        details["conflicts"] = conflicts
        reason = (queue / archive.CONFLICT / conflicts[0]).read_text(errors="replace").strip()
        status, text = Status.CRITICAL, f"archiving stopped: {reason}"
    elif quarantined:
        reason = (queue / archive.QUARANTINE / f"{quarantined[0]}.reason")
        why = reason.read_text(errors="replace").strip() if reason.exists() else "its header names no cluster"
        status, text = Status.CRITICAL, (f"{len(quarantined)} queued WAL file(s) quarantined, not archived "
                                         f"({quarantined[0]}: {why}); see {queue / archive.QUARANTINE}")
    elif holes:
        status, text = Status.CRITICAL, _holes_text(holes, state.data("postgres") / "pg_wal", queue, live_tli)
    elif dropped:
        status, text = Status.CRITICAL, (f"{len(dropped)} WAL segment(s) dropped by the full queue "
                                         f"({_few(dropped)}): no restore "
                                         "crosses the gap until a new base backup ('opsctl backup base')")
    elif failing:
        status = Status.CRITICAL if lag > rpo else Status.WARNING
        text = (f"archive_command fails on {failing['wal']} ({failing['failures']} failure(s); "
                f"{failing['ready']} segment(s) wait in pg_wal, archive lag {lag:.0f} s, RPO {env.dr.rpo}): "
                "read PostgreSQL's log (disk full? the queue not writable?)")
    elif stranded:
        status = Status.CRITICAL if lag > rpo else Status.WARNING
        text = (f"PostgreSQL is not running and {len(stranded)} segment(s) in its pg_wal were never archived "
                f"(the oldest finished {now - min(stranded):.0f} s ago): their commits are only on this disk; "
                "'opsctl local up' starts it and they are archived")
    elif pending and not running:
        status, text = Status.CRITICAL, (f"{len(pending)} WAL segment(s) wait and no archiver runs "
                                         "('opsctl local up' starts it; read its log)")
    elif lag > rpo and unbacked is not None:
        status, text = Status.CRITICAL, (f"no base backup of cluster {unbacked[0]}{unbacked[2]}: its commits of the last "
                                         f"{lag:.0f} s restore nothing, above the RPO of {env.dr.rpo} "
                                         "('opsctl backup base')")
    elif lag > rpo:
        status, text = Status.CRITICAL, f"archive lag {lag:.0f} s, above the RPO of {env.dr.rpo}"
    elif not running:
        status, text = Status.WARNING, "no archiver runs: new WAL will wait in the queue ('opsctl local up')"
    elif stuck:
        status, text = Status.WARNING, (f"the archiver runs but is stuck: {stuck}; {len(pending)} WAL file(s) "
                                        f"queued, archive lag {lag:.0f} s (RPO {env.dr.rpo})")
    elif _late(unswitched, env.backup.archive_timeout):
        status, text = Status.WARNING, _late_text(unswitched, env.backup.archive_timeout)
    else:
        status, text = Status.OK, f"archive lag at most {lag:.0f} s ({len(pending)} queued; RPO {env.dr.rpo})"
    if unbacked is not None and status != Status.CRITICAL:
        text += (f"; no base backup of cluster {unbacked[0]}{unbacked[2]} yet: its archived WAL restores nothing until "
                 f"'opsctl backup base' (commits at risk for {lag:.0f} s, within the RPO)")
    if failing and "archive_command fails" not in text:  # a worse fault came first: say both
        text += f"; archive_command also fails on {failing['wal']}"
    if findings:
        details["verify_chain_record"] = "not authentic"
        status = max(status, Status.WARNING)
        text += f"; {findings}"
    if unfit:  # damage a restore does not read is still damage in the repository's storage
        details["unfit_base_backups"] = sorted(unfit)
        status = max(status, Status.WARNING)
        first = min(unfit)
        text += (f"; {len(unfit)} base backup(s) with a damaged backup_manifest.zst ({first}: {unfit[first]}): "
                 "a restore does not read it, but no incremental is built on them; check the repository's storage "
                 "(repaired from another copy, 'opsctl backup verify-chain' clears this; else it lasts until "
                 "prune-chain removes them)")
    if not answered:
        details["repository_answered"] = False
        status = max(status, Status.WARNING)
        text += (f"; the repository did not answer within {repo_wait:g} s: whether it holds a base backup and "
                 "every archived segment was not checked")
    return CheckResult("", "backup", status, text, round(lag, 1), "s", details=details)


def _bounded(call, seconds: float) -> tuple[bool, object]:
    """(True, call()) when `call` returns within `seconds`, else (False, None); it runs in a
    daemon thread, so one that hangs (a repository that never answers) is left behind, not
    waited for at exit. `call` must not raise (the repository readers here return a default)."""
    import threading

    out: list = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True, name="wal-archive-repository")
    thread.start()
    thread.join(seconds)
    return (True, out[0]) if out else (False, None)


def _repository_view(project, env, state, server_up: bool) -> tuple[tuple[str, float, str] | None, list[str],
                                                                     str | None, dict[str, str], int | None]:
    """What the repository says of the live cluster: (unbacked, missing, findings, unfit, live
    timeline).

    unbacked: (system identifier, since when its commits are at risk: epoch seconds, where)
    when no base backup a restore can start from lies on the live server's history
    (chain.newest_usable_base; the timeline path from ops.live_path): the cluster has none
    (`where` ""), or only ones on a branch a restore left (breaker 22 F10: deleting the live
    history's only base backup kept the check OK) or whose objects are gone (`where` names the
    newest one's fault). The time is the identifier's upper 32 bits,
    initdb's clock (PostgreSQL's xlog.c, BootStrapXLOG): every commit since is unrestorable.
    missing: `missing_archived` from the newest base backup on that history, with `server_up`.
    findings: why verify-chain's record of damaged base backups is not heeded (chain.read_findings:
    edited, forged, another key's), else None: a record that fails its seal is evidence of
    tampering or damage, said rather than read as "nothing found" (breaker 27 F4).
    unfit: {id: why} of the base backups still listed whose standalone backup_manifest.zst the
    last verify-chain found failing (a restore works, no incremental takes it as parent; breaker
    28: since that damage no longer fails verify-chain, nothing else reports it nightly).
    live timeline: the last of the live server's path (None without one).
    (None, [], None, {}, None) when it can't be told (no data directory, the repository unreadable: the
    rest of the check still runs)."""
    from opsctl.pitr import archive, chain, layout
    from opsctl.pitr import base as bb
    from opsctl.pitr.ops import live_path, sealed_repository, server_archived

    try:
        sysid = archive.system_identifier(state.data("postgres"))
        repo, key = sealed_repository(project, env)
        path = live_path(project, env, sysid)
        head = layout.base_prefix(sysid)
        names = repo.names(head)
        _, recorded_unfit, findings = chain.read_findings(repo, key, sysid) if names else ({}, {}, None)
        listed = {n[len(head):].partition("/")[0] for n in names if n.startswith(head)}
        unfit = {bid: why for bid, why in recorded_unfit.items() if bid in listed}  # pruned since: gone
        base, passed = chain.newest_usable_base(repo, sysid, key, names, path)
        if base is None:
            where = f" on the live server's history (timeline {path[-1][0]})" if path and names else ""
            unusable = [f"{bid}: {why}" for bid, why in passed.items() if why not in (bb.UNFINISHED, bb.INTERRUPTED)]
            if unusable:  # the newest one's reason: what to repair first
                where += f" that a restore can use ({unusable[0]})"
            return (sysid, float(int(sysid) >> 32), where), [], findings, unfit, path[-1][0] if path else None
        archived = server_archived(project, env, sysid) if server_up and path else None
        missing = missing_archived(repo, sysid, base, path, archived) if archived else []
        return None, missing, findings, unfit, path[-1][0] if path else None
    except Exception:  # noqa: BLE001 - OpsError, OSError, a repository client's own: can't be told
        return None, [], None, {}, None


def _few(files: list[str]) -> str:
    """The first three names, then '…' when there are more (a message stays one line)."""
    return f"{', '.join(files[:3])}{'…' if len(files) > 3 else ''}"


def _holes_text(holes: list[str], pg_wal, queue, live_tli: int | None) -> str:
    """What the CRITICAL of WAL files missing from the repository (`missing_archived`) says, and
    what clears it: a base backup after a gap of segments; for a history file, one on a later
    timeline than the file's, but the live timeline's (`live_tli`) every restore reads, so a copy
    the live server's `pg_wal` still holds is named, and the WAL queue (`queue`) archives it
    again. Breaker 65 G9: the segments' advice, said of history files, cleared nothing."""
    segments = [f for f in holes if len(f) == 24]
    histories = [f for f in holes if len(f) != 24]
    said = []
    if segments:
        said.append(f"{len(segments)} WAL segment(s) the server archived are missing from the repository "
                    f"({_few(segments)}): no restore crosses the gap; 'opsctl backup verify-chain' names the window "
                    "it breaks, and a new base backup ('opsctl backup base') starts one after it")
    if histories:
        tlis = ", ".join(str(int(f[:8], 16)) for f in histories)
        kept = [f for f in histories if os.path.isfile(pg_wal / f)]  # False, not raised, when unreadable
        text = (f"{len(histories)} timeline history file(s) a restore from the newest base backup reads are missing "
                f"from the repository ({_few(histories)}): ")
        # while the live pg_wal holds a copy, a restore on this machine stages it (restore's
        # _stage_local_histories) and works: what is at risk is a restore after the disk is lost
        # (breaker 66 G4: "recovers to no point" was said while restores worked)
        text += (f"a restore to a point on timeline(s) {tlis} finds {'it' if len(kept) == 1 else 'them'} only in "
                 "this machine's pg_wal, lost with its disk" if len(kept) == len(histories) else
                 f"PostgreSQL recovers to no point on timeline(s) {tlis} without its file")
        if kept:  # what to do, not what was done (breaker 66 G7: read as a copy already made)
            text += (f"; copy {_few(kept)} from {pg_wal} into the WAL queue ({queue}) and the archiver stores "
                     f"{'it' if len(kept) == 1 else 'them'} again")
        if live_tli is not None and any(int(f[:8], 16) < live_tli for f in histories):
            text += f"; a base backup taken now ('opsctl backup base') needs none but timeline {live_tli}'s"
        said.append(text)
    return "; ".join(said)


def missing_archived(repo, sysid: str, base, path: list[tuple[int, int | None]], archived: str) -> list[str]:
    """WAL files a restore of the live server's history (`path`) from base backup `base` needs
    that repository `repo` lacks: the segments from its start to `archived` (pg_stat_archiver's
    last archived file, short of what the local queue still holds: ops.server_archived), each
    from the timeline the history reads it on (the older timeline's up to a fork), and the
    history file of `base`'s timeline and of each later one on `path` (timeline 1 has none): a
    restore to a point on timeline T needs T's, and T's names every older one, so those of the
    timelines before `base`'s are needed by no restore from it. Listed by name only (one listing per
    timeline and 256 segments; nothing read), so the check's time grows with the WAL since the
    newest base backup. Such a hole (an object deleted, a lifecycle rule, a prune gone wrong)
    ends every restore before it while the queue and the server both look healthy (breakers
    21, 22); `backup verify-chain` finds it too, and authenticates what is there."""
    from opsctl.pitr import layout

    wanted = [layout.segment(layout.timeline_of(n, path), n)
              for n in range(layout.segno(layout.lsn(base.start_lsn)), layout.parse_segment(archived[:24])[1] + 1)]
    # a restore from `base` sets recovery_target_timeline to the timeline holding its target, the
    # base backup's or a later one, and PostgreSQL refuses a timeline whose history file it can't
    # restore ("recovery target timeline N does not exist"); that file names every ancestor, so the
    # older timelines' files are never read (breaker 65 G9: a repository emptied and refilled kept
    # the check CRITICAL for them while verify-chain and every restore passed); the live
    # timeline's is wanted always, as verify-chain follows the path by it
    wanted += [layout.history_file(tli) for tli, _end in path if tli > 1 and tli >= base.timeline]
    listed: dict[str, int] = {}
    for prefix in sorted({f[:16] if len(f) == 24 else f for f in wanted}):  # timeline + log id, or a history
        listed |= repo.names(f"{layout.wal_prefix(sysid)}{prefix}")
    present, _strange = layout.parse_wal(sysid, listed)  # a name that is no WAL object is none
    return [f for f in wanted if f not in present]


def server_archive_lag(env, name: str) -> CheckResult:
    """The `wal archive <name>` check of a self-managed server (`backup.archive_servers`): commits
    at risk = archive_timeout + the longest wait of a segment, in the server's pg_wal (`.ready`,
    by the server's clock) or in its queue folder when that folder is on this host (by file
    time; `backup wal-push --server NAME` drains it), judged against `dr.rpo` like the embedded
    platform's check. CRITICAL above the RPO, when archive_mode is off, or when the server can't
    be asked; WARNING while its archive_command fails within the RPO. Details: rpo_seconds,
    archive_timeout_seconds, queued (None when the queue is not on this host), ready, and
    archive_failing when it fails."""
    import psycopg

    from opsctl.pitr import selfmanaged
    from opsctl.redact import credentials

    server = env.backup.archive_servers[name]
    rpo = seconds(env.dr.rpo)
    details: dict = {"rpo_seconds": rpo, "archive_timeout_seconds": env.backup.archive_timeout}
    try:
        url = selfmanaged.server_url(env, name)
    except UsageError as exc:
        return CheckResult("", "backup", Status.UNKNOWN, str(exc), details=details)
    try:
        said = ask_archiver(url)
    except psycopg.Error as exc:
        return CheckResult("", "backup", Status.CRITICAL, f"cannot ask server {name} about its archiving: "
                           f"{credentials(str(exc)).strip().splitlines()[0]}", details=details)
    from pathlib import Path

    from opsctl.pitr.local import queued_ages

    queue = Path(os.path.realpath(server.queue))
    ages = queued_ages(queue)
    queued = len(ages) if queue.is_dir() else None
    waited = max([*ages, said["oldest_ready_age"] or 0.0])
    unswitched = said["unswitched_age"] or 0.0  # as archive_lag: a commit whose segment was not switched out
    lag = max(env.backup.archive_timeout + waited, unswitched)
    details.update(queued=queued, ready=said["ready"])
    if said["failing"]:
        details["archive_failing"] = {k: said[k] for k in ("wal", "failures", "failed_at", "archived_at")}
    if said["archive_mode"] == "off":
        status, text = Status.CRITICAL, (f"server {name} does not archive (archive_mode off): "
                                         f"'opsctl backup archive-setup --server {name}', then restart it")
    elif said["failing"]:
        status = Status.CRITICAL if lag > rpo else Status.WARNING
        text = (f"archive_command of server {name} fails on {said['wal']} ({said['failures']} failure(s); "
                f"archive lag {lag:.0f} s, RPO {env.dr.rpo}): read its log (queue {server.queue} full or "
                "not writable?)")
    elif lag > rpo:
        where = f"{queued} in its queue, 'opsctl backup wal-push --server {name}' drains it" if ages else \
            "in pg_wal"
        status, text = Status.CRITICAL, (f"server {name}: archive lag {lag:.0f} s, above the RPO of {env.dr.rpo} "
                                         f"(segments wait {where})")
    elif _late(unswitched, env.backup.archive_timeout):
        status, text = Status.WARNING, f"server {name}: {_late_text(unswitched, env.backup.archive_timeout)}"
    else:
        status, text = Status.OK, (f"server {name}: archive lag at most {lag:.0f} s "
                                   f"({queued if queued is not None else '?'} queued; RPO {env.dr.rpo})")
    return CheckResult("", "backup", status, text, round(lag, 1), "s", details=details)


def standby_health(project, env) -> CheckResult:
    """The `standby` check of the embedded platform, while a `dr standby` was built: the server a
    failover promotes. CRITICAL when it is not running (a failover has nothing to promote, and
    its replication slot keeps WAL on the primary, up to max_slot_wal_keep_size), WARNING while it
    runs without streaming from the primary (it replays from the archive, behind by the archive's
    lag); OK streaming. Value: bytes of WAL its slot holds on the primary (None when the primary
    can't be asked). Breaker 20 F2: a dead standby was found out only by the failover that
    needed it. CRITICAL too when it runs out of recovery (promoted by hand: a second primary no
    failover can use) or follows another cluster than the primary's (other_cluster_note). CRITICAL first of all while a failover is pending (standby.pending_failover).
    WARNING when none is left after a failover promoted it or an in-place restore removed it
    (standby.unprotected_since) until
    'dr standby' builds another or 'dr standby --stop' says none is wanted.
    Details: pid, port, streaming, in_recovery, slot_retained_bytes (failover_pending when one is)."""
    import psycopg

    from opsctl.local import postgres as pg
    from opsctl.local import state as st
    from opsctl.pitr import standby

    pending = standby.pending_failover_note(project, env)
    if pending is not None:  # before anything the standby says: the primary takes no writes
        return CheckResult("", "backup", Status.CRITICAL, pending, details={"failover_pending": True})
    state = st.load(st.folder_for(project.root))
    comp = state.components.get(standby.COMPONENT)
    if comp is None:
        since = standby.unprotected_since(project, env)
        if since is not None:  # a failover promoted it, an in-place restore removed it (breaker F18, 65 G5)
            return CheckResult("", "backup", Status.WARNING,
                               f"no standby since {since}: a failover now has nothing to promote; "
                               f"run 'opsctl dr standby --env {env.name}' to protect the primary",
                               details={"unprotected_since": since})
        return CheckResult("", "backup", Status.OK, "no standby was built ('opsctl dr standby' builds one)")
    retained = None
    primary = state.components.get("postgres")
    if primary is not None and primary.port:
        try:
            with psycopg.connect(pg.url(primary.port), connect_timeout=3) as conn:
                row = conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                                   "from pg_replication_slots where slot_name = %s", (standby.SLOT,)).fetchone()
            retained = int(row[0]) if row and row[0] is not None else None
        except psycopg.Error:
            pass
    held = f"; its replication slot holds {retained / 2 ** 20:.0f} MiB of WAL on the primary" if retained else ""
    pid = standby.running_pid(state)
    streaming, recovering = False, True
    if pid is not None:
        try:
            recovering, streaming, _lsn = standby.wal_receiver(comp.port)
        except psycopg.Error:
            pid = None  # it does not answer: as good as down for a failover
    details = {"pid": pid, "port": comp.port, "streaming": streaming, "in_recovery": recovering,
               "slot_retained_bytes": retained}
    if pid is None:
        return CheckResult("", "backup", Status.CRITICAL,
                           f"the dr standby is not running: a failover has nothing to promote{held}; "
                           f"'opsctl dr standby' builds it again (its log: {state.log(standby.COMPONENT)})",
                           retained, "bytes", details=details)
    if not recovering:  # promoted by hand: it had been "not streaming, replays from the archive"
        return CheckResult("", "backup", Status.CRITICAL, standby.promoted_note(pid, comp.port) + held,
                           retained, "bytes", details=details)
    other = None if streaming else standby.other_cluster_note(pid, comp.port, primary.port if primary else None)
    if other:  # the primary's data made anew: it had been "replays from the archive", WARNING
        return CheckResult("", "backup", Status.CRITICAL, other + held, retained, "bytes", details=details)
    if not streaming:
        return CheckResult("", "backup", Status.WARNING,
                           f"the dr standby (pid {pid}) runs but does not stream from the primary: it replays from "
                           f"the archive, behind by the archive's lag{held}; read {state.log(standby.COMPONENT)}",
                           retained, "bytes", details=details)
    return CheckResult("", "backup", Status.OK, f"the dr standby (pid {pid}, port {comp.port}) streams from the "
                       "primary: a failover can promote it", retained, "bytes", details=details)
