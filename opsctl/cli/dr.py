"""`opsctl dr drill` and `opsctl failover`: parse, call opsctl.pitr, render."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, YesOpt, environment

app = typer.Typer(help="Disaster-recovery drills: restore into scratch, serve, measure RTO and RPO.",
                  no_args_is_help=True)


@app.command()
def drill(
    env: EnvOpt = "local",
    junit: Annotated[str | None, typer.Option("--junit", metavar="FILE", help="Also write the result as JUnit XML.")] = None,
    metrics_file: Annotated[str | None, typer.Option("--metrics-file", metavar="FILE", help="Also write Prometheus text (textfile collector).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore the database to the newest restorable time into scratch, measure RTO/RPO, tear down.

    Exit 1 when a target of dr.rto/dr.rpo in opsctl.yaml is missed."""
    from opsctl.errors import Interrupted, OperationFailed
    from opsctl.output import emit
    from opsctl.pitr import drill as core

    from opsctl.signals import sigterm_as_interrupt

    with sigterm_as_interrupt():  # CI cancels with SIGTERM: the drill tears down and ends its window
        try:
            r = core.drill(*environment(env), junit_path=junit, metrics_path=metrics_file)
        except core.Cancelled as cancelled:  # its reports are written: printed too, then exit 130
            r = cancelled.result

    def render(c):
        from rich.table import Table
        from rich.text import Text

        from opsctl.cli.tables import print_words

        t = Table("measure", "achieved", "target", "verdict", title=f"dr drill {r.environment} ({r.platform})")
        rows = [("RTO", r.rto_seconds, r.rto_target_seconds), ("RPO database", r.rpo_seconds, r.rpo_target_seconds)]
        rows += [(f"RPO {part}", value, r.rpo_target_seconds) for part, value in r.part_rpo_seconds.items()]
        for name, value, target in rows:
            ok = value is not None and value <= target
            t.add_row(name, "-" if value is None else f"{value:.1f} s", f"{target:.0f} s",
                      Text("met", style="green") if ok else Text("not achieved" if value is None else "missed", style="red"))
        c.print(t)
        if r.rpo_basis:
            print_words(c, f"RPO of the database measured {r.rpo_basis}")
        print_words(c, f"restored to {r.restored_to.isoformat() if r.restored_to else '-'} into {r.scratch or '-'}"
                       + (f" ({r.checked})" if r.checked else "") + f", torn down: {'yes' if r.torn_down else 'no'}"
                       + (f"; not covered: {', '.join(r.not_covered)}" if r.not_covered else "")
                       + (f" ({r.problems_note})" if r.not_covered and r.problems_note else ""))
        if r.backups:
            print_words(c, f"{r.redis_keys} Redis keys from backup {r.backups.get('redis')}, {r.audio_objects} "
                           f"audio objects from backup {r.backups.get('audio objects')}; sample transcription: "
                           f"{r.transcription}; load test: {r.load_test}")
        if r.part_rpo_seconds:
            print_words(c, "RPO of redis and audio objects measured from the start of the backup each came from "
                           "to the drill's start")
        for problem in r.problems:
            print_words(c, problem, "red")

    emit(r, as_json, render)
    if r.error == core.CANCELLED:
        raise Interrupted(f"dr drill of {r.environment}: {r.error}")
    if not r.passed:
        raise OperationFailed(f"dr drill of {r.environment}: {'; '.join(r.problems)}")


def failover(
    env: EnvOpt = "local",
    replica: Annotated[str | None, typer.Option("--replica", metavar="NAME", help="The read replica to promote (default: database.replica_instance).")] = None,
    yes: YesOpt = False,
    confirm_env: Annotated[str | None, typer.Option("--confirm-env", metavar="NAME",
                                                    help="The environment's name: a protected one needs it in CI.")] = None,
    abandon: Annotated[bool, typer.Option("--abandon", help="Undo an interrupted local failover whose standby was not promoted or is gone: unfence the old primary and start it writable.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Promote the standby (embedded platform) or the RDS read replica, repoint, and record it."""
    from opsctl.approval import at_terminal
    from opsctl.cli.tables import print_words
    from opsctl.output import emit
    from opsctl.pitr import failover as core

    project, environment_ = environment(env)

    def approve(text: str) -> None:
        at_terminal(text, environment_, yes, confirm_env, verb=("fail over", "failing over", "failed over"))

    if abandon:
        done = core.abandon(project, environment_, replica, approve)
        emit(done, as_json, lambda c: print_words(c, f"failover abandoned (was at '{done['abandoned_stage']}'): the old "
                                                     f"primary on port {done['primary_port']} takes writes again"))
        return

    from opsctl.signals import sigterm_as_interrupt

    with sigterm_as_interrupt():  # CI cancels with SIGTERM: the failover ends its window as on Ctrl-C
        r = core.failover(project, environment_, replica, approve)
    if environment_.platform == "local":
        emit(r, as_json, lambda c: print_words(
            c, f"standby {r.new_primary} promoted in place of {r.old_primary} "
            f"({'stopped' if r.old_primary_was_running else 'was down'}) in {r.promote_seconds:.1f} s, timeline "
            f"{r.timeline}; database URL now {r.database_url}; workers restarted: "
            f"{', '.join(r.workers_restarted) or 'none'} ({r.seconds:.1f} s in all); recorded in {r.journal}"
            + "".join(f"; {n}" for n in r.notes)))
        return
    emit(r, as_json, lambda c: print_words(
        c, f"{r.new_primary} {'was already promoted' if r.resumed else 'promoted'} (was a replica of {r.old_primary}); "
        f"endpoint {r.endpoint}; worker Secret {'already named it' if r.secret == 'already' else 'repointed'} "
        f"(was {r.old_host}); workers restarted: {', '.join(r.restarted) or 'none needed'}; {r.seconds:.0f} s; "
        f"recorded in {r.journal}" + "".join(f"; {n}" for n in r.notes)))


@app.command()
def standby(
    env: EnvOpt = "local",
    stop: Annotated[bool, typer.Option("--stop", help="Stop the standby and remove its data and replication slot.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start the embedded platform's standby from the backup repository (streaming after the archive)."""
    from opsctl.cli.common import progress
    from opsctl.cli.tables import print_words
    from opsctl.output import emit
    from opsctl.pitr import standby as core

    project, environment_ = environment(env)
    if stop:
        stopped = core.remove_standby(project, environment_)  # the lease; refused while a failover is pending
        emit({"stopped": stopped}, as_json, lambda c: c.print("standby stopped and removed" if stopped
                                                             else "no standby was running"))
        return
    with progress() as bars:
        r = core.start_standby(project, environment_, bars.report)
    emit(r, as_json, lambda c: print_words(
        c, (f"standby already running on port {r.port}" if r.kept else
         f"standby built from base backup {' + '.join(r.chain)} in {r.seconds:.1f} s, running on port {r.port}")
        + f" (pid {r.pid}), {'streaming from the primary' if r.streaming else 'not streaming'}, replayed to "
        f"{r.replay_lsn}; 'opsctl failover --env {r.environment}' promotes it"))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dr")
    root.command("failover")(failover)
