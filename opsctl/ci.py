"""`opsctl render ci`: a GitHub Actions workflow whose deploy steps are the shipped runbooks.

test → build the worker image (CPU and CUDA targets) and the opsctl image scheduled runbooks
run in (templates/ci/opsctl.Dockerfile) → deploy to staging blue-green →
load-test gate on staging → deploy to production. Production's job runs in a GitHub
environment of the same name, so its required reviewers are the approval. Builds push tags
of the commit only (`<sha>-cpu`, `<sha>-cuda`); a workflow_dispatch with `image_tag` (a
release's tag, to redeploy or roll back) builds nothing and deploys that tag.

Runbooks that declare `schedule:` get a `schedule` trigger each; on such an event only the
`scheduled-<env>` jobs run, each step guarded by `github.event.schedule`, in the GitHub
environment `<env>-scheduled` (no required reviewers, which would hold a 02:00 backup until
someone approves it; give it a role limited to what the scheduled runbooks do). The deploy
chain's jobs share the environment's concurrency group (`opsctl-<env>`); scheduled runs have
a group per schedule (`opsctl-<env>-schedule-<cron>`), because GitHub cancels a group's older
pending job when a newer one arrives (a scheduled run may then overlap a deploy: the shipped
scheduled runbooks change nothing a deploy changes, and opsctl's deploy lease keeps deploys
apart). `--no-schedules` leaves the triggers out, for schedules run as
CronJobs (`opsctl render schedules`). Every job gets its credentials the documented
way: OIDC role assumption (aws-actions/configure-aws-credentials, `id-token: write`) and
`aws eks update-kubeconfig` under the context name opsctl.yaml gives.

Action majors run on Node 24: GitHub removed the Node 20 runtime, and actionlint reports
older majors. The tests check the result with actionlint and with check-jsonschema's
GitHub-workflow schema.
"""

from __future__ import annotations

from pathlib import Path

from opsctl.config import Project
from opsctl.errors import UsageError
from opsctl.templating import parse_yaml, render

# Majors whose runtime is Node 24 (https://github.blog/changelog/2025-09-19-deprecation-of-node-20-on-github-actions-runners/)
ACTIONS = {
    "checkout": "actions/checkout@v5",
    "setup_python": "actions/setup-python@v6",
    "upload_artifact": "actions/upload-artifact@v6",
    "setup_buildx": "docker/setup-buildx-action@v4",
    "login": "docker/login-action@v4",
    "build_push": "docker/build-push-action@v7",
    "aws_credentials": "aws-actions/configure-aws-credentials@v6",
}
IMAGE_PARAM = "image=${IMAGE}:${DEPLOY_TAG}-cuda"  # expanded by the step's shell from the workflow env
NOT_SCHEDULED = "github.event_name != 'schedule'"
# a workflow_dispatch naming an existing tag builds nothing (breaker 53 F4: the build pushed this
# commit over that tag, a release's, then deployed it everywhere under the release's name)
BUILD = f"{NOT_SCHEDULED} && !inputs.image_tag"
# GitHub's success() covers every job upstream, so a skipped build (a tag was given) skipped the
# deploys too: each deploy job asks for its own predecessor's success instead
AFTER_BUILD = f"!cancelled() && !failure() && {NOT_SCHEDULED}"


def _after(job: str) -> str:
    return f"!cancelled() && {NOT_SCHEDULED} && needs.{job}.result == 'success'"


def _stage(project: Project, job: str, env_name: str, needs: list[str], runbooks: list[dict], condition: str) -> dict:
    env = project.env(env_name)
    if env.platform != "kubernetes":
        raise UsageError(f"environment '{env_name}' is platform {env.platform}; CI deploys kubernetes environments")
    return {"job": job, "env": env_name, "github_env": env_name, "needs": needs, "timeout": 90, "condition": condition,
            "region": env.aws.region, "context": env.kubernetes.context or env_name,
            "db_env": env.database.url_env, "redis_env": env.redis.url_env, "key_env": env.backup.key_env,
            "api_key_env": env.deploy.api_key_env, "runbooks": runbooks, "group": f"opsctl-{env_name}"}


def stages(project: Project, staging: str, production: str, schedules: list | None = None) -> list[dict]:
    """The jobs that run runbooks: the deploy chain, then one scheduled job per environment."""
    deploy = [{"name": "deploy-worker", "file": "deploy-worker", "params": [IMAGE_PARAM]}]
    out = [
        _stage(project, "deploy-staging", staging, ["build-worker"], deploy, AFTER_BUILD),
        _stage(project, "load-test-gate", staging, ["deploy-staging"],
               [{"name": "load-test-gate", "file": "load-test-gate", "params": []}], _after("deploy-staging")),
        _stage(project, "deploy-production", production, ["load-test-gate"], deploy, _after("load-test-gate")),
    ]
    if schedules:
        for env_name in dict.fromkeys([staging, production]):
            # `!cancelled()`: an `if:` without a status function is ANDed with success(), so a
            # failed runbook would skip every later one on the same schedule (a nightly backup
            # silently not run); the setup steps' outcome still gates them all
            steps = [{"name": s.ref, "file": s.name, "params": [],
                      "when": f"!cancelled() && steps.kubeconfig.outcome == 'success' && "
                              f"github.event.schedule == '{s.cron}'"}
                     for s in schedules]
            stage = _stage(project, f"scheduled-{env_name}", env_name, [], steps, "github.event_name == 'schedule'")
            stage["github_env"] = f"{env_name}-scheduled"  # no required reviewers: nobody approves at 02:00
            # a group per schedule: GitHub cancels an older PENDING job when a newer one joins its
            # group, so sharing the deploy chain's group would cancel a pending load-test gate (or a
            # 02:00 backup when the hourly and 15-minute schedules fire with it)
            stage["group"] = f"opsctl-{env_name}-schedule-${{{{ github.event.schedule }}}}"
            out.append(stage)
    return out


def workflow(project: Project, staging: str = "staging", production: str = "production",
             registry: str = "ghcr.io", image: str | None = None, python_version: str = "3.11",
             with_schedules: bool = True, out: str | None = None) -> str:
    """The workflow's YAML text, also written whole at `out` when given (`write_to`: checked
    before anything is rendered). UsageError when a named environment is not on kubernetes
    or a scheduled runbook is not valid. `with_schedules` false leaves the schedule triggers
    and scheduled jobs out (the schedules then run as CronJobs: `opsctl render schedules`)."""
    from opsctl.runbook.actions import ACTIONS as RUNBOOK_ACTIONS

    if out is not None:
        _out_path(project, out)
    from opsctl.runbook.schedules import default_image, scheduled

    repo = image or project.env(production).worker.image.rsplit(":", 1)[0]
    opsctl_repository = default_image(project.env(production)).rsplit(":", 1)[0]
    schedules = scheduled(project, RUNBOOK_ACTIONS) if with_schedules else []
    triggers: dict[str, list[str]] = {}  # each cron once in on.schedule, naming every runbook on it
    for s in schedules:
        triggers.setdefault(s.cron, []).append(s.ref)
    text = render("ci/github-actions.yml.j2", project.root, stages=stages(project, staging, production, schedules),
                  schedules=triggers, registry=registry, image_repository=repo, opsctl_repository=opsctl_repository,
                  python_version=python_version, build_condition=BUILD,
                  actions=ACTIONS)
    parse_yaml("ci/github-actions.yml.j2", text)  # a template edit that breaks YAML fails here, not in CI
    _say_what_the_workflow_needs(project)  # once it rendered: a refusal stays one line
    if out is not None:
        write_to(text, out, project)
    return text


# what the workflow's jobs use from the repository it runs in: `make test`, the worker's and
# the opsctl image's build contexts, `pip install -e .`, and the deploy chain's runbooks
NEEDS = ("Makefile", "pyproject.toml", "worker/Dockerfile", "templates/ci/opsctl.Dockerfile",
         "runbooks/deploy-worker", "runbooks/load-test-gate")


def _say_what_the_workflow_needs(project: Project) -> list[str]:
    """Warn (and return them) when the ops root lacks files the workflow's jobs use (NEEDS):
    the workflow is the platform repository's, which holds opsctl, the worker and the
    runbooks; rendered from an `opsctl init` project alone, no job of it could run, and it
    said nothing (breaker 54 F4)."""
    import logging

    missing = [name for name in NEEDS if not (project.root / name).exists()]
    if missing:
        logging.getLogger("opsctl.ci").warning(
            "the workflow runs in the platform's repository (opsctl, the worker, the runbooks), and %s lacks what "
            "its jobs use: %s; commit it where those are, or add them", project.root, ", ".join(missing))
    return missing


HEADER = b"# CI/CD for the transcription platform, rendered by"  # the template's first line


def _out_path(project: Project | None, out: str) -> Path:
    """`--out` checked as any file opsctl writes (files.report_path: not empty, not a folder,
    its folder made), then, symbolic links followed: never one of the ops root's own files or
    folders (opsctl.yaml, runbooks/ with its lock, templates/, stacks/, loadtests/, opsctl's
    state under .opsctl/, a `file://` backup folder: runbook.paths.protected_place), and never
    an existing file that is not a workflow an earlier `render ci` wrote. UsageError (exit 2)
    otherwise."""
    from opsctl.errors import UsageError
    from opsctl.files import report_path
    from opsctl.runbook.paths import protected_for, protected_place

    path = report_path(out, "--out", make=False, example="deploy.yml")  # nothing made before the checks
    target = path.resolve()
    if project is not None:
        root = project.root.resolve()
        try:
            norm = target.relative_to(root).as_posix()
        except ValueError:
            norm = None
        if norm is not None:
            extra = tuple(p for env in project.environments.values() for p in protected_for(env)) \
                if isinstance(getattr(project, "environments", None), dict) else ()
            place = protected_place(norm, extra)
            if place:
                raise UsageError(f"--out {out} would write into {place} of the ops root {root}, which holds "
                                 "its config, procedures or state; write the workflow elsewhere, e.g. "
                                 ".github/workflows/deploy.yml")
    if target.is_file():
        try:
            with target.open("rb") as fh:
                head = fh.read(len(HEADER))
        except OSError:
            head = b""
        if head != HEADER:
            raise UsageError(f"--out {out} exists and is not a workflow 'opsctl render ci' wrote; "
                             "move it aside or choose another --out")
    return report_path(out, "--out", example="deploy.yml")


def write_to(text: str, out: str, project: Project | None = None) -> Path:
    """`opsctl render ci --out FILE`: the workflow written whole at `out` (files.write_text: a
    temporary file, then renamed), checked first (`_out_path`). Returns the path."""
    from opsctl.files import write_text

    path = _out_path(project, out)
    write_text(path, text)
    return path
