"""The hooks a deploy runs through other capabilities: the pre-deploy backup and the load gate.

Built by opsctl.deploy.operation from what the caller asked (`backup`, `load_gate`) and
handed to the blue-green algorithm (bluegreen.Options), which knows nothing of backups or
Locust.
"""

from __future__ import annotations

from typing import Callable

from opsctl.config import Environment, Project


def backup_hook(project: Project, env: Environment) -> Callable[[], str]:
    """The pre-deploy backup: a database backup (label "pre-deploy") through the backup
    capability's core; the returned callable takes it and returns its id, raising what
    opsctl.backup.create raises."""

    def take() -> str:
        from opsctl.backup.create import create

        return create(project, env, "db", label="pre-deploy").id

    return take


def load_gate(project: Project, env: Environment, slo: str, duration: str = "10s", users: int = 2) -> Callable:
    """A short Locust run against the preview color, judged by `slo` (pre-promotion), through
    the load-test capability's one operation (opsctl.loadtest.operation.load_test).

    `slo` as `--slo` ("p95<5000ms,error_rate<1%"), `duration` as text ("10s"). Checks the
    input now (UsageError, nothing sent); the returned callable takes the preview's base
    URL and returns an analysis.Verdict."""
    from opsctl.errors import UsageError
    from opsctl.loadtest.operation import prepare

    try:
        prepare(project, env, "light", users=users, duration=duration, slo=slo, check=False)  # bad input now
    except UsageError as exc:  # in the deploy's words: --slo there is --load-gate here
        text = str(exc)
        for theirs, ours in (("--slo", "--load-gate"), ("--duration", "--load-gate-duration")):
            if text.startswith(theirs):
                text = ours + text[len(theirs):]
        raise UsageError(text) from None

    def gate(url: str):
        from opsctl.deploy.analysis import Verdict
        from opsctl.loadtest.operation import load_test

        outcome = load_test(project, env, "light", users=users, duration=duration, slo=slo, host=url)
        outcome.raise_if_interrupted()  # a cancelled deploy, not a failed gate
        return Verdict(outcome.passed, outcome.verdict() if not outcome.passed
                       else f"{outcome.summary.total.requests} requests, SLO met: {slo}")

    return gate
