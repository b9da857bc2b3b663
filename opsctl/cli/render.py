"""`opsctl render`: print what opsctl would apply or install, for GitOps users and reviewers.

`opsctl render --env E` alone prints the worker manifests (the `manifests` subcommand).
Each kind of output is one small function below: parse the options, call the core's
render function, hand its text to `_print`. To add one (ci, monitoring, locust):

    @group.command("ci")
    def ci(env: EnvOpt = "local") -> None:
        \"\"\"The CI pipeline that runs opsctl.\"\"\"
        from opsctl.ci import render_pipeline        # heavy imports stay inside
        _print(render_pipeline(*environment(env)))

Output is the text itself on stdout, byte for byte (no rich markup, no wrapping), so
`opsctl render --env production > k8s/worker.yaml` is what gets committed.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, environment

group = typer.Typer(help="Print manifests, CI pipelines and monitoring config (default: manifests).",
                    no_args_is_help=False, invoke_without_command=True)

ImageOpt = Annotated[str | None, typer.Option("--image", help="Release NAME:TAG (default: worker.image of the env).")]
ColorOpt = Annotated[str | None, typer.Option("--color", help="blue or green (default blue; blue-green only).")]
StrategyOpt = Annotated[str | None, typer.Option("--strategy", help="blue-green or rolling (default: the env's).")]


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


@group.callback()
def _default(ctx: typer.Context, env: EnvOpt = "local", image: ImageOpt = None, color: ColorOpt = None,
             strategy: StrategyOpt = None, as_json: JsonOpt = False) -> None:
    """Without a subcommand: the worker manifests."""
    if ctx.invoked_subcommand is None:
        manifests(env, image, color, strategy, as_json)


@group.command("manifests")
def manifests(env: EnvOpt = "local", image: ImageOpt = None, color: ColorOpt = None,
              strategy: StrategyOpt = None, as_json: JsonOpt = False) -> None:
    """The worker's manifests as a deploy would apply them (Deployment, Services)."""
    from opsctl.deploy.manifests import parse, render_env
    from opsctl.output import emit

    project, envcfg = environment(env)
    text = render_env(project, envcfg, image, color, strategy)
    if as_json:
        emit(parse(text) if envcfg.platform == "kubernetes" else {"local": text}, True)
    else:
        _print(text)


@group.command("monitoring")
def monitoring(
    env: EnvOpt = "local",
    out: Annotated[str | None, typer.Option("--out", help="Write the files into this folder (default: print).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prometheus scrape config, alert rules and Grafana dashboards (and, for kubernetes
    environments, PrometheusRule/PodMonitor/dashboard ConfigMap manifests)."""
    from opsctl import monitoring as mon
    from opsctl.output import emit, stderr

    if out is not None:
        written = mon.render_to(*environment(env), out)
        emit({"written": [str(p) for p in written]}, as_json,
             lambda c: stderr.print("\n".join(f"wrote {p}" for p in written)))
        return
    files = mon.render_all(*environment(env))
    if as_json:
        emit(files, True)
    else:
        _print("\n".join(f"# ---- {name}\n{text}" for name, text in files.items()))


@group.command("ci")
def ci(
    staging: Annotated[str, typer.Option("--staging", help="Environment deployed first.")] = "staging",
    production: Annotated[str, typer.Option("--production", help="Environment deployed after the gate.")] = "production",
    out: Annotated[str | None, typer.Option("--out", help="Write to this file, e.g. .github/workflows/deploy.yml.")] = None,
    with_schedules: Annotated[bool, typer.Option(
        "--schedules/--no-schedules",
        help="Run the runbooks' schedules from this workflow (default), or leave them to the CronJobs "
             "of 'opsctl render schedules'; never both, or each runs twice.")] = True,
) -> None:
    """A GitHub Actions workflow: test, build the worker image, deploy to staging blue-green,
    load-test gate, deploy to production behind the environment's approval."""
    from opsctl import ci as pipeline
    from opsctl.cli.common import project

    text = pipeline.workflow(project(), staging, production, with_schedules=with_schedules, out=out)
    if out is None:
        _print(text)
    else:  # as `render monitoring --out` does: say what was written (on stderr; stdout stays the result)
        from pathlib import Path

        from opsctl.output import stderr

        stderr.print(f"wrote {Path(out).expanduser().absolute()}")


@group.command("schedules")
def schedules(
    env: EnvOpt = "staging",
    image: Annotated[str | None, typer.Option("--image", help="opsctl image (default: REGISTRY/opsctl:VERSION).")] = None,
    role_arn: Annotated[str | None, typer.Option("--role-arn", help="IAM role of the pods (IRSA annotation).")] = None,
) -> None:
    """Kubernetes CronJobs running the runbooks that declare a schedule (opsctl.runbook.schedules)."""
    from opsctl.runbook.actions import ACTIONS
    from opsctl.runbook.schedules import render

    _print(render(*environment(env), ACTIONS, image, role_arn))


@group.command("locust")
def locust(
    env: EnvOpt = "staging",
    profile: Annotated[str, typer.Option("--profile", help="Load profile from loadtests/profiles.yaml.")] = "light",
    workers: Annotated[int, typer.Option("--workers", min=1, help="Locust worker pods.")] = 2,
    host: Annotated[str | None, typer.Option("--host", help="Target URL (default: the worker Service).")] = None,
) -> None:
    """Locust master and worker manifests, so big tests run in the cluster on Locust's own engine."""
    from opsctl.loadtest.manifests import render_locust

    project, envcfg = environment(env)
    _print(render_locust(project, envcfg, profile=profile, workers=workers, host=host))


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="render")
