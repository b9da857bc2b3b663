"""`opsctl runbook list | show | validate | publish | run | history`: parse, call, render."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, YesOpt, bold_id, environment, project

app = typer.Typer(help="Versioned runbooks: list, show, validate, publish, run, history.", no_args_is_help=True)


def _actions() -> dict:
    from opsctl.runbook.actions import ACTIONS

    return ACTIONS


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every runbook with its versions and which are published."""
    from opsctl.output import emit
    from opsctl.runbook import catalog

    rows = catalog.listing(project().root)

    def render(console):
        from opsctl.cli.tables import print_whole

        if not rows:
            console.print("no runbooks under runbooks/ yet; see the README's runbook format")
            return
        # the plain table every other listing prints (breaker 43 S16: a box table when piped)
        print_whole(console, ["runbook", "versions", "published"],
                    [[r["name"], ", ".join(map(str, r["versions"])), ", ".join(map(str, r["published"]))]
                     for r in rows], wrap="versions")

    emit(rows, as_json, render)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME (latest) or NAME@VERSION.")],
    diff: Annotated[str | None, typer.Option("--diff", help="Show the change between versions, e.g. 1..2.")] = None,
) -> None:
    """Print a runbook, or the diff between two of its versions."""
    from opsctl.output import stdout
    from opsctl.runbook import catalog

    stdout.print(catalog.show(project().root, ref, diff), markup=False, highlight=False)


@app.command()
def validate(
    refs: Annotated[list[str] | None, typer.Argument(help="Runbooks to check (default: all versions of all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check runbooks against the schema, their meaning and the lock; exit 2 on any problem.
    A published version refused by a rule added since, with a later version, is listed as
    retired (it cannot run) and does not fail the check."""
    from opsctl.output import emit
    from opsctl.runbook import catalog

    doc = catalog.validate_all(project().root, refs, _actions())
    problems = doc["problems"]
    lines = problems + [f"retired: {p}" for p in doc["retired"]] + (
        [] if problems else [f"{len(doc['checked'])} runbook files valid"])
    emit(doc, as_json, lambda c: c.print("\n".join(lines), markup=False))
    if problems:
        raise typer.Exit(2)


@app.command()
def publish(ref: Annotated[str, typer.Argument(help="NAME@VERSION to pin in runbooks/lock.json.")]) -> None:
    """Pin a version's content hash: from now on that version can never change."""
    from opsctl.output import stdout
    from opsctl.runbook import catalog

    name, digest = catalog.publish(project().root, ref, _actions())
    stdout.print(f"published {name} ({digest})", soft_wrap=True)


@app.command()
def run(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
    env_name: EnvOpt = "local",
    param: Annotated[list[str], typer.Option("--param", "-p", help="Parameter KEY=VALUE (repeatable).")] = [],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve every template, print the plan, change nothing.")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue an earlier run from where it stopped.")] = None,
    from_step: Annotated[str | None, typer.Option("--from-step", help="With --resume: start again at this step.")] = None,
    junit: Annotated[str | None, typer.Option("--junit", help="Write the steps as a JUnit XML report.")] = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a runbook step by step with a journal; exit 1 when a step fails. Secret
    parameters: set OPSCTL_PARAM_<NAME> rather than -p (a command line is readable by all)."""
    from opsctl.cli.live import status, steps_view
    from opsctl.output import emit
    from opsctl.runbook import engine

    proj, env = environment(env_name)
    row = lambda s: (s.id, status(s.status), f"{s.seconds:.1f}s" if s.seconds else "", s.detail)  # noqa: E731
    result = engine.run(proj, env, ref, param, yes=yes, dry_run=dry_run, resume_id=resume, from_step=from_step,
                        junit=junit, view=lambda title: steps_view(title, as_json, row))
    emit(result, as_json, lambda c: c.print(bold_id(f"{result.runbook}: ", str(result.status))
                                            + (f" (run {result.run_id})" if result.run_id else "")))
    if result.status == engine.RunStatus.FAILED:
        raise typer.Exit(1)


@app.command()
def history(
    name: Annotated[str | None, typer.Argument(help="Only runs of this runbook.")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Every journal record of one run.")] = None,
    env_name: Annotated[str | None, typer.Option("--env", "-e", help="Runs of this environment; a kubernetes "
                                                 "environment's are read from its backup bucket.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Past runs: from the journals under .opsctl/runs/, or a kubernetes environment's bucket."""
    from opsctl.output import emit
    from opsctl.runbook import history as past

    if run_id is not None:
        records = past.records(project(), run_id, env_name)

        def show(console):
            from opsctl.cli.tables import print_whole

            print_whole(console, ["time", "record", "step", "status", "detail"],
                        [[r.get("time", "-"), r["type"], r.get("id", "-"), r.get("status", "-"), _detail(r)]
                         for r in records], wrap="detail")

        emit(records, as_json, show)
        return
    rows = past.runs(project(), env_name, name)

    def render(console):
        from opsctl.cli.tables import print_whole

        if not rows:  # an empty table's header said nothing (breaker 43 S16)
            console.print("no runbook runs journaled" + (f" of {name}" if name else "")
                          + (f" on {env_name}" if env_name else "") + " yet; 'opsctl runbook run NAME' starts one")
            return
        # ids, times and statuses are copied and read whole: never cut (`name: value` blocks
        # when the columns do not fit)
        print_whole(console, ["run", "runbook", "env", "started", "status"],
                    [[r["run_id"], f"{r['runbook']}@{r['version']}", r["env"], r["started_at"], r["status"]]
                     for r in rows])

    emit(rows, as_json, render)


def _detail(record: dict) -> str:
    """What one journal record says beyond its kind, step and status, for people."""
    import json

    if record["type"] == "run":
        return (f"{record['runbook']}@{record['version']} on {record['env']}, parameters "
                f"{json.dumps(record['params'], sort_keys=True)}")
    if record["type"] == "resume":
        done = record.get("done") or []
        return f"resumed; done before: {', '.join(map(str, done)) or 'nothing'}"
    if record["type"] == "step":
        return str(record.get("detail") or "")
    if record["type"] == "end" and record.get("reason"):  # a run refused inside a step: why
        return f"step {record.get('step', '?')}: {record['reason']}"
    return ""


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="runbook")
