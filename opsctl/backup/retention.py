"""Retention: which complete backups to keep (last N, and the newest per day/week/month).

The rules are those of restic's `forget` and pgBackRest's expire, applied to the manifests'
times: a backup is kept if any rule keeps it. Two are never removed whatever the rules say:
the newest complete backup and the newest one that passed `backup verify`. Interrupted
backups (no manifest, process gone) are removed with their open uploads; damaged ones
(authenticated, then failed `backup verify`) never count for a rule, and are removed by
`backup prune` only (`drop_damaged`, that person's decision): the retention run after
`backup create` leaves them and says so, since the part of one that did not fail (its
database dump, say) may be the only copy of that day.
Folders that are not opsctl's (record.layout) and untrusted backups (a manifest that does
not parse, is not sealed by the key or names another id) never count and are reported,
never touched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable

from opsctl.backup import catalog, record
from opsctl.backup.repository import Repository
from opsctl.errors import OperationFailed, UsageError, fault_text


@dataclass
class PruneResult:
    """Ids kept (with `reasons`: the rule that keeps each), removed, and the incomplete,
    damaged (removed with them), untrusted and foreign ones met; `damaged_kept`: the damaged
    ones left for a person (a run without `drop_damaged`); `dry_run` when nothing was deleted."""
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    untrusted: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    damaged_kept: list[str] = field(default_factory=list)


class PruneIncomplete(OperationFailed):
    """Retention that removed some backups and could not remove others: `removed` holds the
    ids it did remove (the message names the first it could not, and why), `damaged_kept`
    the damaged ones it left on purpose (PruneResult.damaged_kept)."""

    def __init__(self, message: str, removed: list[str], damaged_kept: list[str] | None = None):
        super().__init__(message)
        self.removed = removed
        self.damaged_kept = damaged_kept or []


def _periods(when: dt.datetime) -> dict[str, tuple]:
    iso = when.isocalendar()
    return {"daily": (when.date(),), "weekly": (iso.year, iso.week), "monthly": (when.year, when.month)}


def select(backups: list[tuple[str, dt.datetime, bool]], keep_last: int | None, keep_daily: int | None,
           keep_weekly: int | None, keep_monthly: int | None) -> dict[str, str]:
    """{id: why kept} for (id, time, verified) triples; ids not in the answer may go."""
    newest_first = sorted(backups, key=lambda b: b[1], reverse=True)
    keep: dict[str, str] = {}
    for i, (bid, _, _) in enumerate(newest_first[:keep_last or 0]):
        keep.setdefault(bid, f"last {i + 1}")
    for rule, n in (("daily", keep_daily), ("weekly", keep_weekly), ("monthly", keep_monthly)):
        seen: list[tuple] = []
        for bid, when, _ in newest_first:
            period = _periods(when.astimezone(dt.timezone.utc))[rule]
            if len(seen) >= (n or 0):
                break
            if period not in seen:
                seen.append(period)
                keep.setdefault(bid, f"{rule} {len(seen)}")
    if newest_first:
        keep.setdefault(newest_first[0][0], "newest")
        verified = [b for b in newest_first if b[2]]
        if verified:
            keep.setdefault(verified[0][0], "newest verified")
    return keep


def select_by_kind(entries: list, keep_last: int | None, keep_daily: int | None, keep_weekly: int | None,
                   keep_monthly: int | None) -> dict[str, str]:
    """`select` applied to each kind of backup on its own: the complete catalog entries
    grouped by what they hold (their components: db+files+redis, redis, ...), as restic's
    `forget` applies its policy per group (`--group-by host,paths`). Counted together,
    three hourly Redis snapshots with keep_last 3 deleted the one backup holding the
    database (breaker 35 F3). {id: why kept}; with more than one kind the reason names it."""
    kinds: dict[tuple[str, ...], list[tuple[str, dt.datetime, bool]]] = {}
    for e in entries:
        kinds.setdefault(tuple(sorted(e.components)), []).append((e.id, e.created_at, e.verified))
    keep: dict[str, str] = {}
    for kind, members in kinds.items():
        for bid, why in select(members, keep_last, keep_daily, keep_weekly, keep_monthly).items():
            keep[bid] = f"{why} of {'+'.join(kind) or 'nothing'}" if len(kinds) > 1 else why
    return keep


def prune(repo: Repository, keep_last: int | None = None, keep_daily: int | None = None,
          keep_weekly: int | None = None, keep_monthly: int | None = None, dry_run: bool = False,
          approve: Callable[[str], None] | None = None, drop_damaged: bool = False,
          protect: frozenset[str] = frozenset()) -> PruneResult:
    """Apply the rules to `repo`, to each kind of backup on its own (select_by_kind): one
    scan of the catalog (catalog.scan), then the deletions and one rewrite of the index. `dry_run`: only the answer. `approve(question)` is called
    before any complete backup is deleted (raise UsageError to refuse: nothing is deleted);
    None deletes without asking (retention after `backup create`). `drop_damaged`: the
    damaged backups go too (`backup prune`, the runbook step: prune_environment); without
    it they are left and named in `damaged_kept`. The retention run after `backup create`
    asks no one, and a backup whose Redis snapshot failed verify may hold that day's only
    database dump: it removed them unasked and unsaid, so only a person's prune does.
    `protect`: ids kept whatever the rules say (the backup a create just made: by its
    writer's clock it may sort below the newest ones, breaker 54 F3). A backup dated after
    this host's clock (catalog.ahead_of_clock) refuses the run, dry runs aside: kept as the
    newest, it had made keep_last 1 remove the real newest backup.
    Raises UsageError without a rule, or in an encrypted repository read without its key."""
    if all(v is None for v in (keep_last, keep_daily, keep_weekly, keep_monthly)):
        raise UsageError("no retention rule: pass --keep-last/--keep-daily/--keep-weekly/--keep-monthly "
                         "or set backup.retention in opsctl.yaml")
    scan = catalog.scan(repo)
    if not scan.authenticated:
        raise UsageError(f"repository {repo.url} is encrypted and no backup key is set: without it no manifest "
                         "can be authenticated, so nothing is pruned; set the backup key")
    entries = scan.entries
    ahead = [e.id for e in entries if e.complete and catalog.ahead_of_clock(e.created_at or catalog.id_time(e.id))]
    if ahead and not dry_run:  # the rules order by the writers' clocks: one of them is wrong
        raise UsageError(f"backup {ahead[-1]} is dated after this host's clock (more than "
                         f"{catalog.CLOCK_SKEW.seconds // 60} min): the rules, which go by the backups' times, could "
                         "keep it and remove newer data; nothing was removed: fix the clock, and remove that backup's "
                         "folder from the repository (--dry-run shows what the rules would do)")
    complete = [(e.id, e.created_at, e.verified) for e in entries if e.complete]
    keep = select_by_kind([e for e in entries if e.complete], keep_last, keep_daily, keep_weekly, keep_monthly)
    keep |= {bid: "just made" for bid in protect if bid not in keep}
    result = PruneResult(dry_run=dry_run, reasons=keep)
    result.kept = [bid for bid, _, _ in complete if bid in keep]
    result.removed = [bid for bid, _, _ in complete if bid not in keep]
    result.incomplete = [e.id for e in entries if e.status == "incomplete"]
    damaged = [e.id for e in entries if e.status == "damaged"]
    result.damaged, result.damaged_kept = (damaged, []) if drop_damaged else ([], damaged)
    result.untrusted = [e.id for e in entries if e.status == "untrusted"]
    result.foreign = scan.foreign
    if dry_run:
        return result
    if result.removed and approve is not None:
        approve(f"delete {len(result.removed)} backup(s) from {repo.url}")
    # one that can't be removed (a read-only folder, a refused delete) stops none of the others,
    # and what was removed is said: a failure once reported "pruned: []" over two deletions
    failed: dict[str, str] = {}
    for bid in result.incomplete:
        try:
            repo.abort_uploads(f"{bid}/")
            remove(repo, bid, scan.files.get(bid))
        except OperationFailed as exc:
            failed[bid] = fault_text(exc)
    gone = []
    for bid in result.removed + result.damaged:
        try:
            remove(repo, bid, scan.files.get(bid))
            gone.append(bid)
        except OperationFailed as exc:
            failed[bid] = fault_text(exc)
    if gone and scan.record is not None:
        from opsctl.backup import index

        # one rewrite for the whole prune, whatever it removed
        index.update(repo, getattr(repo, "key", None), scan.record.encrypted, {bid: None for bid in gone})
    if failed:
        first = next(iter(failed))
        removed = [bid for bid in result.removed if bid in gone]
        named = f" ({', '.join(gone)})" if gone else ""
        raise PruneIncomplete(f"retention removed {len(gone)} backup(s){named} but could not remove {len(failed)} "
                              f"({first}: {failed[first]}); 'opsctl backup prune' tries again", removed,
                              result.damaged_kept)
    return result


def check_rules(keep_last: int | None = None, keep_daily: int | None = None, keep_weekly: int | None = None,
                keep_monthly: int | None = None) -> None:
    """UsageError unless keep_last >= 1 and the others >= 0 (None: the environment's own), the
    bounds opsctl.yaml and `backup prune` set: a runbook step's `keep_last: 0` kept only the
    newest backup of each kind and deleted the rest (reviewer 39 R4)."""
    for name, value, low in (("keep_last", keep_last, 1), ("keep_daily", keep_daily, 0),
                             ("keep_weekly", keep_weekly, 0), ("keep_monthly", keep_monthly, 0)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be at least {low}, not {value}; nothing was removed")


def prune_environment(project, env, keep_last: int | None = None, keep_daily: int | None = None,
                      keep_weekly: int | None = None, keep_monthly: int | None = None, dry_run: bool = False,
                      approve: Callable[[str], None] | None = None) -> PruneResult:
    """`backup prune` of an environment, the operation behind the command and the runbook
    step: its repository, the rules given (else its backup.retention), then `prune`, damaged
    backups removed too (a person asked for this run). UsageError before anything is read
    for a rule out of range (check_rules)."""
    check_rules(keep_last, keep_daily, keep_weekly, keep_monthly)
    repo, rules = repository_and_rules(project, env, keep_last, keep_daily, keep_weekly, keep_monthly)
    return prune(repo, *rules, dry_run=dry_run, approve=approve, drop_damaged=True)


def after_backup(repo: Repository, env, made: str) -> PruneResult | None:
    """The retention run after `backup create` in `repo`: the environment's backup.retention
    (None when it sets no rule), unasked, so damaged backups are left for a person and named
    (`damaged_kept`; `backup prune` removes them), and the backup just `made` is never removed.
    Raises as `prune` does."""
    r = env.backup.retention
    if all(v is None for v in (r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly)):
        return None
    return prune(repo, r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly, drop_damaged=False,
                 protect=frozenset({made}))


def remove(repo: Repository, backup_id: str, files: set[str] | None = None) -> None:
    """Delete one backup's objects, and only those: its start record goes back first and
    its manifest goes next, so a deletion cut short leaves an incomplete opsctl folder
    (cleaned by the next create or prune), never a half-restorable backup nor a folder
    that would look foreign. `files`: the names in its folder from a listing just made
    (prune's scan), deleted by those exact names and no others, the start record last: no
    listing at all, so removing k backups costs k deletions whatever the repository holds
    (on some S3 servers, moto among them, a prefix listing costs what the whole bucket
    holds). `files` None (no scan at hand): one listing of the folder supplies them. An
    object written into the folder after that listing is left, never guessed at."""
    from opsctl.backup import manifest as mf

    record.check_id(backup_id)
    marker = f"{backup_id}/{mf.IN_PROGRESS}"
    if files is None:
        files = {n.split("/", 1)[1] for n in repo.names(f"{backup_id}/")}
    try:
        repo.put_bytes(marker, b'{"deleting": true}')
    except OperationFailed:  # a full volume (breaker 33 B1): prune is how its space comes back
        if mf.IN_PROGRESS not in files:
            raise  # no start record to keep the folder opsctl's once the manifest is gone
        # the start record create left (marked done) keeps the folder opsctl's: go on deleting
    repo.delete_names([f"{backup_id}/{mf.NAME}"])
    repo.delete_names([f"{backup_id}/{f}" for f in sorted(files) if f not in (mf.IN_PROGRESS, mf.NAME)])
    repo.delete_names([marker])


def repository_and_rules(project, env, keep_last: int | None = None, keep_daily: int | None = None,
                         keep_weekly: int | None = None, keep_monthly: int | None = None) -> tuple:
    """The environment's repository and the rules to apply: the given ones, else backup.retention."""
    from opsctl.backup.repository import for_environment

    repo = for_environment(project, env)
    if all(v is None for v in (keep_last, keep_daily, keep_weekly, keep_monthly)):
        r = env.backup.retention
        keep_last, keep_daily, keep_weekly, keep_monthly = r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly
    return repo, (keep_last, keep_daily, keep_weekly, keep_monthly)


@dataclass
class DeleteResult:
    """`backup delete`: the backup `id` (`status` as the catalog saw it: complete, damaged or
    incomplete; `components`, `created_at` UTC ISO 8601 or None), deleted unless `dry_run`;
    `newest_of`: what it is the newest of in its environment, components by name and
    "verified" (the two keepers prune never removes), which takes --force."""
    id: str
    status: str
    components: list[str] = field(default_factory=list)
    created_at: str | None = None
    newest_of: list[str] = field(default_factory=list)
    dry_run: bool = False


def _made(at: dt.datetime | None) -> str:
    """"; made <UTC time>, <hours> hours ago" for the question before a deletion: at a protected
    environment's prompt a person weighs how old what they delete is ("" when unknown)."""
    if at is None:
        return ""
    at = at.astimezone(dt.timezone.utc)
    hours = (dt.datetime.now(dt.timezone.utc) - at).total_seconds() / 3600
    if hours < 0:  # breaker 58 G8: "-5.0 hours ago"; one of the two clocks is wrong
        return f"; made {at:%Y-%m-%d %H:%M:%S} UTC, {-hours:.1f} hours ahead of this machine's clock"
    return f"; made {at:%Y-%m-%d %H:%M:%S} UTC, {hours:.1f} hours ago"


def delete(project, env, backup_id: str, approve: Callable[[str], None], force: bool = False,
           dry_run: bool = False) -> DeleteResult:
    """Delete one backup of `env` by id (restic's `forget ID`, pgBackRest's `expire --set`),
    crash-safe as prune's deletions are (`remove`), the index updated; an interrupt while it
    deletes is Interrupted (exit 130) saying what is left.

    Refused (UsageError, nothing deleted): everything `_deletable` refuses; without `force`
    (a dry run reports it instead), the newest complete backup of `env` holding any of its
    components, or its newest verified one. `approve(question)` is asked before deleting
    (raise UsageError to refuse), and the answer is checked again after it: another deletion
    while the question waited may have made this backup the newest (breaker 56 F4)."""
    from opsctl.backup.repository import for_environment
    from opsctl.errors import Interrupted
    from opsctl.signals import sigterm_as_interrupt

    record.check_id(backup_id)
    repo = for_environment(project, env)
    entry, newest_of, scan = _deletable(repo, env, backup_id)
    result = DeleteResult(backup_id, entry.status, entry.components,
                          entry.created_at.isoformat() if entry.created_at else None, newest_of, dry_run)
    if dry_run:
        return result
    _needs_force(backup_id, newest_of, force)
    approve(f"delete backup {backup_id} ({entry.status}"
            f"{': ' + ', '.join(entry.components) if entry.components else ''}{_made(entry.created_at)}) "
            f"from {repo.url}")
    entry, newest_of, scan = _deletable(repo, env, backup_id)
    _needs_force(backup_id, newest_of, force, " now (the repository changed while you were asked)")
    result.newest_of = newest_of
    with sigterm_as_interrupt():  # a CI cancel (SIGTERM) ends as Ctrl-C does: said, exit 130
        try:
            if entry.status == "incomplete":
                repo.abort_uploads(f"{backup_id}/")
            remove(repo, backup_id, scan.files.get(backup_id))
        except KeyboardInterrupt:
            raise Interrupted(_interrupted(repo, backup_id)) from None
        if scan.record is not None:
            from opsctl.backup import index

            index.update(repo, getattr(repo, "key", None), scan.record.encrypted, {backup_id: None})
    return result


def _interrupted(repo: Repository, backup_id: str) -> str:
    """What an interrupted deletion of `backup_id` says it left: the backup whole (its manifest
    not yet deleted) or an incomplete one."""
    from opsctl.backup import manifest as mf

    try:
        whole = f"{backup_id}/{mf.NAME}" in repo.names(f"{backup_id}/")
    except Exception:  # noqa: BLE001 - the interrupt is what is reported
        whole = None
    if whole:
        return f"interrupted before backup {backup_id} was deleted: it is whole, nothing of it was removed"
    return (f"interrupted while deleting backup {backup_id}: what is left of it is an incomplete backup, never "
            "restored; 'opsctl backup prune' or the next 'backup create' removes it")


def _needs_force(backup_id: str, newest_of: list[str], force: bool, when: str = "") -> None:
    if newest_of and not force:
        said = [f"the newest complete backup holding {c}" for c in newest_of if c != "verified"]
        said += ["the newest verified backup"] if "verified" in newest_of else []
        raise UsageError(f"backup {backup_id} is {' and '.join(said)} of its environment{when}: deleting it moves "
                         "the environment's recovery point back; nothing was deleted (pass --force to delete it "
                         "anyway)")


def _deletable(repo: Repository, env, backup_id: str) -> tuple:
    """(entry, newest_of, scan) for deleting `backup_id` of `env` from `repo`; UsageError
    (nothing deleted) for: an encrypted repository read without its key; an id not there; a
    backup being written, or untrusted (not provably opsctl's, left alone as prune does); one
    another environment made (a repository shared by two: breaker 56 F2); while a backup is
    dated after this host's clock, any but that one (the order of "newest" is then the wrong
    host's, F1). Within CLOCK_SKEW two hosts' backups may be ordered wrongly: what that can
    cost is bounded by it (the recovery point moves back at most that much)."""
    scan = catalog.scan(repo)
    if not scan.authenticated:
        raise UsageError(f"repository {repo.url} is encrypted and no backup key is set: no manifest can be "
                         "authenticated, so nothing is deleted; set the backup key")
    entry = next((e for e in scan.entries if e.id == backup_id), None)
    if entry is None:
        raise UsageError(f"no backup {backup_id} in {repo.url}; 'opsctl backup list --env {env.name}' shows its ids")
    if entry.status == "running":
        raise UsageError(f"backup {backup_id} is being written (its start record names a live process); nothing "
                         "was deleted")
    if entry.status == "untrusted":
        raise UsageError(f"backup {backup_id} is untrusted ({entry.note or 'its manifest is not authenticated'}): "
                         "not provably opsctl's, so nothing was deleted; look at the folder, and remove it from the "
                         "repository by hand if it is not wanted")
    key = getattr(repo, "key", None)
    environment = (lambda bid: catalog.load(repo, bid, key).environment)
    if entry.status != "incomplete" and environment(backup_id) != env.name:
        raise UsageError(f"backup {backup_id} was made by environment '{environment(backup_id)}', not "
                         f"'{env.name}' (they share repository {repo.url}); nothing was deleted: delete it with "
                         f"--env {environment(backup_id)}")
    complete = [e for e in scan.entries if e.complete]
    when = {e.id: e.created_at or catalog.id_time(e.id) for e in complete}
    ahead = [e.id for e in complete if catalog.ahead_of_clock(when[e.id])]
    if ahead and backup_id not in ahead:
        raise UsageError(f"backup {ahead[-1]} is dated after this host's clock (more than "
                         f"{catalog.CLOCK_SKEW.seconds // 60} min): which backup is the newest can't be told, so "
                         f"nothing was deleted; fix the clock, or delete {ahead[-1]} first")
    newest_of: list[str] = []
    if entry.complete and backup_id not in ahead:
        ours = {backup_id: True}

        def of_env(e) -> bool:  # read lazily, newest first: a shared repository is rare
            if e.id not in ours:
                ours[e.id] = environment(e.id) == env.name
            return ours[e.id]

        def newest(among: list) -> bool:  # `among` newest first, this backup in it
            return next(e for e in among if of_env(e)).id == backup_id
        newer = complete[::-1]  # the catalog's order: creation time, then id
        newest_of = [part for part in entry.components if newest([e for e in newer if part in e.components])]
        if entry.verified and newest([e for e in newer if e.verified]):
            newest_of.append("verified")
    return entry, newest_of, scan
