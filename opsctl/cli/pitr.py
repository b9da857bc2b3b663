"""Point-in-time recovery at the front door: `opsctl backup base`, `opsctl backup verify-chain`,
and the `--to-time/--to-lsn` path of `opsctl restore`. Parse, call opsctl.pitr, render."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, bold_id, environment


def _size(n: int) -> str:
    from rich.filesize import decimal

    return decimal(n)


def _t(when, exact: bool = False) -> str:
    """A time to the millisecond (in tables), or `exact` to the microsecond PostgreSQL stamps
    commits with: the newest restorable time is a target to restore to, and shown to the
    millisecond it fell before its own last commit (a restore to it lost that commit)."""
    if not when:
        return "-"
    text = when.strftime("%Y-%m-%d %H:%M:%S.%f")
    return (text if exact else text[:-3]) + "Z"


def base(
    env: EnvOpt = "local",
    incremental: Annotated[bool, typer.Option("--incremental", help="Only the blocks changed since the newest base backup (pg_basebackup --incremental).")] = False,
    auto: Annotated[bool, typer.Option("--auto", help="Incremental on the newest usable base backup, full when the full one under it is a week old or none is usable (a schedule's choice).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Take a physical base backup (pg_basebackup) for point-in-time recovery."""
    from opsctl.cli.common import progress
    from opsctl.errors import UsageError
    from opsctl.output import emit
    from opsctl.pitr.ops import create_base

    if incremental and auto:
        raise UsageError("--incremental and --auto both given; pass one (--auto chooses incremental when it can)")
    project, environment_ = environment(env)
    with progress() as bars:
        r = create_base(project, environment_, "auto" if auto else "incremental" if incremental else "full", bars.report)
    emit(r, as_json, lambda c: c.print(
        bold_id("base backup ", r.id) + f" ({r.kind}{', on ' + r.parent if r.parent else ''}) complete: "
        f"{_size(r.raw_bytes)} → {_size(r.stored_bytes)} in {r.seconds:.1f} s; WAL from {r.start_lsn} "
        f"(timeline {r.timeline}), consistent at {r.stop_lsn}"))


def _windows_table(rep, title: str):
    from rich.table import Table

    t = Table(title=title)
    # a base backup id is what a person copies: never cut ("20261130T151227Z…") nor wrapped
    t.add_column("from base", no_wrap=True, min_width=max((len(w["base"]) for w in rep.windows), default=9))
    for name in ("restorable from (UTC)", "to (UTC)", "ends at"):
        t.add_column(name, overflow="fold")  # a WAL file name longer than the column folds, never cut
    for w in rep.windows:
        t.add_row(w["base"], _t(w["from"]), _t(w["to"]), w["ends_at"])
    return t


def verify_chain(env: EnvOpt = "local", as_json: JsonOpt = False,
                 timeline: Annotated[int | None, typer.Option("--timeline", metavar="N", min=1, help="The windows along this timeline's history (default: the one restores follow).")] = None) -> None:
    """Check every archived WAL segment and base backup of the live cluster; exit 1 on a gap."""
    from opsctl.errors import OperationFailed
    from opsctl.output import emit
    from opsctl.pitr.ops import verify_chain as run

    r = run(*environment(env), timeline=timeline)

    def render(c):
        from opsctl.cli.tables import print_words

        # wrapped between words: an object path was split inside its name at 80 columns, and
        # could not be copied (breaker 36 F9)
        print_words(c, f"cluster {r.sysid} in {r.repository}: {len(r.base_backups)} base backup(s), "
                       f"{r.segments} WAL segment(s) on the path, {r.checked} object(s) read and checked")
        c.print(_windows_table(r, "recoverable windows"))
        for p in r.problems:  # a file still in the local queue is late, not lost
            print_words(c, f"{p['file']}: {p['kind']} ({p['detail']})", "yellow" if p["kind"] == "queued" else "red")
        for bid, why in r.unusable_base_backups.items():
            print_words(c, f"base backup {bid}: {why}")
        for bid, why in r.unfit_parents.items():  # restores; takes no incremental
            print_words(c, f"base backup {bid}: {why}: no incremental is built on it (a restore does not read it)")
        c.print(f"newest restorable time: {_t(r.newest_restorable, exact=True)}")

    emit(r, as_json, render)
    if not r.ok:  # named once more in the error line, without the reasons the report (or --json) gave
        raise OperationFailed(f"backup verify-chain: the chain is broken: {r.faults()}")


def render_windows(c, doc: dict | None) -> None:
    from opsctl.cli.tables import print_words

    if not doc:
        return
    if doc.get("note"):
        print_words(c, f"point-in-time recovery: not shown: {doc['note']}")
    for w in doc["windows"]:
        print_words(c, f"point-in-time recovery: {w['from'][:23]} → {w['to'][:23] if w['to'] else '-'} UTC "
                       f"(base backup {w['base']}; ends at {w['ends_at']})")


def render_restore_to(r, environment_, as_json: bool) -> None:
    """Render the result of `opsctl restore --to-time/--to-lsn` (opsctl.backup.restore.restore_any)."""
    from opsctl.cli.tables import print_words
    from opsctl.output import emit

    if environment_.platform == "kubernetes":
        emit(r, as_json, lambda c: print_words(
            c, f"new RDS instance {r.target_instance} restored from {r.source} to "
            f"{_t(r.restore_time) if r.restore_time else 'its latest restorable time'}, available at {r.endpoint} "
            f"({r.seconds:.0f} s); point the environment at it to use it"))
        return
    emit(r, as_json, lambda c: print_words(
        c, f"restored to {r.target} ({r.mode}): last commit replayed {_t(r.recovered_to)}, timeline {r.timeline}, "
        f"base {' + '.join(r.chain)}, {r.segments} WAL files; {len(r.tables)} tables, {r.rows} rows in "
        f"{r.seconds:.1f} s" + (f"; running at {r.url} (pid {r.pid}, data {r.data_dir}; scratch, fsync off)"
                                if r.url else "")
        + (f"; previous data kept in {r.previous_data_dir}" if r.previous_data_dir else "")
        + "".join(f"\n{n}" for n in r.notes)))


def prune_chain(
    env: EnvOpt = "local",
    keep_full: Annotated[int, typer.Option("--keep-full", help="Full base backups to keep, each with its incrementals.")] = 2,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    drop_damaged: Annotated[bool, typer.Option("--drop-damaged", help="Also remove damaged base backups (and those built on them): they restore nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Approve without a prompt (needed in CI).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove older base backups and the WAL no kept base backup needs."""
    from opsctl.approval import confirm
    from opsctl.cli.tables import print_words
    from opsctl.output import emit
    from opsctl.pitr.ops import prune_chain as run

    project, environment_ = environment(env)
    r = run(project, environment_, keep_full, dry_run=dry_run, approve=lambda question: confirm(question, yes),
            drop_damaged=drop_damaged)
    verb = "would remove" if dry_run else "removed"
    emit(r, as_json, lambda c: print_words(
        c, f"{verb} {len(r.removed)} base backup(s){': ' + ', '.join(r.removed) if r.removed else ''} and "
        f"{r.wal_removed} WAL object(s); kept {len(r.kept) + len(r.left)} base backup(s)"
        + (f" ({len(r.left)} of them not counted, below)" if r.left else "") + f", WAL from {r.wal_kept_from or '-'}"
        + (f"; {'would remove' if dry_run else 'removed'} {len(r.interrupted)} interrupted (dead, unfinished): "
           f"{', '.join(r.interrupted)}" if r.interrupted else "")
        + (f"; {verb} {len(r.dropped)} that restore nothing: "  # damaged, or built on what is missing
           f"{'; '.join(f'{bid} ({why})' for bid, why in r.dropped.items())}" if r.dropped else "")
        + ("; left, not counted (damaged, see above; " + ("their own objects read whole, so --drop-damaged keeps "
           "them" if drop_damaged else "--drop-damaged removes those whose own objects fail") + f"): "
           f"{', '.join(bid for bid in r.damaged if bid not in r.dropped)}"
           if set(r.damaged) - set(r.dropped) else "")
        + (f"; left, not counted yet (their WAL is not archived yet: it waits in the local WAL queue; they "
           f"count once the archiver uploads it): {', '.join(r.waiting)}" if r.waiting else "")
        + (f"; left, record not authentic (check, then remove by hand): "
           f"{'; '.join(f'{bid}: {why}' for bid, why in r.unauthentic.items())}" if r.unauthentic else "")))


ServerOpt = Annotated[str, typer.Option("--server", metavar="NAME", help="A server of backup.archive_servers in opsctl.yaml.")]


def archive_setup(env: EnvOpt = "local", server: ServerOpt = ..., as_json: JsonOpt = False) -> None:
    """Turn on WAL archiving on a self-managed server (ALTER SYSTEM), or print what to set."""
    from opsctl.output import emit
    from opsctl.pitr import selfmanaged

    project, environment_ = environment(env)
    r = selfmanaged.configure(project, environment_, server)

    def render(c):
        from opsctl.cli.tables import print_words

        if r.applied:
            print_words(c, f"archive server {r.server} (system {r.system_identifier}): WAL archiving set with ALTER "
                           "SYSTEM" + (f"; restart the server for {', '.join(r.restart_needed)}"
                                       if r.restart_needed else ""))
        else:
            print_words(c, f"archive server {r.server}: nothing changed: {r.reason}")
            for line in r.conf_lines:  # configuration to copy: one line each, never re-wrapped
                c.print(line, markup=False, soft_wrap=True, highlight=False)
        for note in r.notes:
            print_words(c, note)

    emit(r, as_json, render)


def wal_push(
    env: EnvOpt = "local",
    server: ServerOpt = ...,
    follow: Annotated[bool, typer.Option("--follow", help="Keep draining until stopped (run it as a service).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Archive what a self-managed server queued (compressed, sealed, tagged) into the repository."""
    from opsctl.cli.tables import print_words
    from opsctl.output import emit
    from opsctl.pitr import selfmanaged
    from opsctl.signals import sigterm_as_interrupt

    project, environment_ = environment(env)
    with sigterm_as_interrupt():
        r = selfmanaged.push_until_stopped(project, environment_, server, follow)
    emit(r, as_json, lambda c: print_words(
        c, f"archived {len(r.archived)} WAL file(s) of {server} ({_size(r.raw_bytes)} → {_size(r.stored_bytes)})"
        + (f", {len(r.skipped)} already archived" if r.skipped else "")
        + (f"; dropped by a full queue: {', '.join(r.dropped)}" if r.dropped else "")
        + (f"; QUARANTINED (header names no cluster, see the queue's .quarantine/): {', '.join(r.quarantined)}"
           if r.quarantined else "")))


def register(app: typer.Typer) -> None:
    app.command("base")(base)
    app.command("verify-chain")(verify_chain)
    app.command("prune-chain")(prune_chain)
    app.command("archive-setup")(archive_setup)
    app.command("wal-push")(wal_push)
