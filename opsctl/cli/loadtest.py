"""`opsctl loadtest run | list | compare`: parses, calls opsctl.loadtest, renders."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, environment, project

app = typer.Typer(help="Locust load tests with SLO gates: run, list, compare.", no_args_is_help=True)


@app.command()
def run(
    env: EnvOpt = "local",
    profile: Annotated[str, typer.Option("--profile", "-p", help="light, medium, heavy, stress, uploads (loadtests/profiles.yaml).")] = "light",
    users: Annotated[int | None, typer.Option("--users", "-u", help="Peak users, 1-10000 (default: the profile's).")] = None,
    spawn_rate: Annotated[float | None, typer.Option("--spawn-rate", "-r", help="Users started per second, up to 1000 (default: the profile's).")] = None,
    duration: Annotated[str | None, typer.Option("--duration", "-t", help="Run time, 1s to 7d: 30s, 5m, 1h30m (each unit once, largest first).")] = None,
    slo: Annotated[str | None, typer.Option("--slo", help='Gates, e.g. "p95<2000ms,error_rate<5%,rps>=10".')] = None,
    html: Annotated[str | None, typer.Option("--html", help="Write Locust's HTML report here.")] = None,
    csv: Annotated[str | None, typer.Option("--csv", help="Write Locust's CSV files with this prefix.")] = None,
    junit: Annotated[str | None, typer.Option("--junit", help="Write a JUnit XML file (one test per gate).")] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Locust worker processes (0: in-process).")] = 0,
    host: Annotated[str | None, typer.Option("--host", help="Target base URL (default: the environment's router); no user:password@ or ?token: the API key goes in $LOADTEST_API_KEY.")] = None,
    abort_on_fail: Annotated[bool, typer.Option("--abort-on-fail", help="Stop as soon as a gate is lost.")] = False,
    classes: Annotated[str | None, typer.Option("--classes", help="User classes and weights instead of the profile's: TranscriptionUser=3,AdminUser=1.")] = None,
    locustfile: Annotated[str | None, typer.Option("--locustfile", help="Another locustfile (default: loadtests/locustfile.py).")] = None,
    stop_timeout: Annotated[str | None, typer.Option("--stop-timeout", help="At the end, time requests in flight get to finish (default 30s); then they count as failed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a load profile against an environment; exit 1 when an SLO gate is breached.

    Latency and rps gates judge successful transcription requests (sync /v1/audio/... and
    whole jobs), exact to the millisecond, never health or admin polls; with none they fail.
    error_rate counts all requests, a request still in flight at the end as failed."""
    from opsctl.loadtest import live
    from opsctl.loadtest.operation import load_test
    from opsctl.output import emit, stderr

    proj, envcfg = environment(env)

    def view(the_plan):
        title = f"loadtest {the_plan.profile} → {the_plan.host} ({the_plan.users} users" + (
            f", {the_plan.workers} workers)" if the_plan.workers else ")")
        return live.live_view(stderr, title)

    outcome = load_test(proj, envcfg, profile, users=users, spawn_rate=spawn_rate, duration=duration, slo=slo,
                        host=host, workers=workers, abort_on_fail=abort_on_fail, classes=classes,
                        locustfile=locustfile, html=html, csv=csv, junit=junit, stop_timeout=stop_timeout,
                        live=view)
    emit(outcome.summary, as_json, lambda c: live.render_run(outcome.summary, c))
    if not outcome.passed:  # an interrupted run is not passed either
        raise outcome.error()


@app.command("list")
def list_(
    env: Annotated[str | None, typer.Option("--env", "-e", help="Only runs against this environment.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Only runs of this profile.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="The newest N runs.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Past runs, oldest first: id, profile, requests, p95, SLO verdict."""
    from opsctl.loadtest import history, live
    from opsctl.output import emit

    rows = history.runs(project(), env, profile)[-limit:]
    emit(rows, as_json, lambda c: live.render_list(rows, c))


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="Base run: id, unique id prefix, 'previous' or 'latest'.")],
    run_b: Annotated[str, typer.Argument(help="Run to judge against the base.")],
    max_latency_increase: Annotated[float, typer.Option("--max-latency-increase", help="Percent p50/p95/p99 may grow.")] = 20.0,
    max_error_rate_increase: Annotated[float, typer.Option("--max-error-rate-increase", help="Percentage points the error rate may grow.")] = 1.0,
    max_rps_decrease: Annotated[float, typer.Option("--max-rps-decrease", help="Percent the throughput may drop.")] = 20.0,
    min_requests: Annotated[int, typer.Option("--min-requests", help="Noise floor: an endpoint with fewer requests in the base run is never flagged; fewer in the head (or none) is a regression.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Regressions per endpoint from RUN_A to RUN_B; exit 1 when there are any."""
    from opsctl.errors import OperationFailed
    from opsctl.loadtest import compare as cmpmod
    from opsctl.loadtest import live
    from opsctl.output import emit

    result = cmpmod.compare_saved(project(), run_a, run_b, cmpmod.Thresholds(
        max_latency_increase, max_error_rate_increase, max_rps_decrease, min_requests))
    emit(result, as_json, lambda c: live.render_comparison(result, c))
    if result.regressions:
        raise OperationFailed(f"{len(result.regressions)} regression(s): {result.regressions[0]}"
                              + (" …" if len(result.regressions) > 1 else ""))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="loadtest")
