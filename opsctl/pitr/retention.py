"""Retention of base backups and WAL: keep the newest N full base backups with their
incremental chains, and WAL only from the oldest kept base backup's start on. Only base
backups a restore can use count (whole, on the newest timeline's history: chain.inventory);
one on a branch a restore abandoned is removed, a damaged one is left for a person.

pgBackRest's `repo-retention-full` rule: a WAL segment is removed only when no kept base
backup needs it (its number is below every kept base backup's first segment, on every
timeline). Timeline history files are always kept (a few bytes each; recovery follows
them). Base backups go first, their record first (an interrupted prune leaves a folder
without base.json, never a restorable-looking half), then the WAL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opsctl.errors import UsageError
from opsctl.pitr import base as bb
from opsctl.pitr import layout


@dataclass
class ChainPruneResult:
    """What prune-chain removed or (dry run) would remove: base backup ids kept and removed, WAL
    objects removed, and the first WAL segment kept."""
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    wal_removed: int = 0
    wal_kept_from: str | None = None  # the first segment kept
    dry_run: bool = False


def prune(repo, key, sysid: str, keep_full: int, dry_run: bool = False,
          path: list[tuple[int, int | None]] | None = None) -> ChainPruneResult:
    """Keep the newest `keep_full` full base backups with their incrementals and the WAL from the
    oldest kept one's start; remove older base backups and WAL below it (nothing with `dry_run`).
    UsageError for `keep_full` < 1. `path`: the live server's timeline path (base.server_path),
    used when it is newer than the repository's (its history file may not be uploaded yet)."""
    if keep_full < 1:
        raise UsageError(f"--keep-full must be at least 1, not {keep_full}: a WAL archive without a base "
                         "backup restores nothing")
    from opsctl.pitr import chain

    # the chains a restore would use: whole (tar present, parent usable) and on the newest
    # timeline's history, newest by stop LSN along it. A base backup on a branch a restore
    # abandoned has a newer id and may have a higher LSN, yet no restore starts from it;
    # kept by id, it pushed out the only usable one and the WAL after it.
    listed = chain.inventory(repo, key, sysid, end_times=False)
    bases = listed.bases
    if path is not None and path[-1][0] > listed.path[-1][0]:
        listed.path = path
    usable = [b for b in bases if chain.on_path(b, listed.path)]
    fulls = sorted((b for b in usable if b.kind == "full"), key=lambda b: layout.lsn(b.stop_lsn))
    kept_roots = {b.id for b in fulls[-keep_full:]}
    kept = [b for b in usable if bb.chain_of(bases, b)[0].id in kept_roots] if fulls else []
    out = ChainPruneResult(kept=[b.id for b in kept], dry_run=dry_run,
                           removed=[b.id for b in bases if b.id not in {k.id for k in kept}])
    if not kept:
        return out
    first = min(layout.segno(layout.lsn(b.start_lsn)) for b in kept)
    out.wal_kept_from = layout.segment(min(b.timeline for b in kept), first)
    names = repo.names(layout.root(sysid) + "/")
    files, _ = layout.parse_wal(sysid, names)
    doomed = [o.name for f, objs in files.items() if not f.endswith(".history")
              and layout.parse_segment(f[:24])[1] < first for o in objs]
    head = layout.dropped_prefix(sysid)
    doomed += [n for n in names if n.startswith(head) and layout.WAL_FILE.fullmatch(n[len(head):])
               and not n.endswith(".history") and layout.parse_segment(n[len(head):][:24])[1] < first]
    out.wal_removed = len(doomed)
    if dry_run:
        return out
    for bid in out.removed:
        folder = f"{layout.base_prefix(sysid)}{bid}/"
        repo.delete_prefix(folder + bb.RECORD)
        repo.delete_prefix(folder)
    delete = getattr(repo, "delete_names", None)
    if delete is not None:
        delete(doomed)
    else:
        for name in doomed:
            repo.delete_prefix(name)
    return out
