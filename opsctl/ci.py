"""`opsctl render ci`: a GitHub Actions workflow whose deploy steps are the shipped runbooks.

test → build the worker image (CPU and CUDA targets) → deploy to staging blue-green →
load-test gate on staging → deploy to production. Production's job runs in a GitHub
environment of the same name, so its required reviewers are the approval.
"""

from __future__ import annotations

import yaml

from opsctl.config import Project
from opsctl.errors import UsageError
from opsctl.templating import render

IMAGE_REF = "${{ env.IMAGE }}:${{ env.TAG }}-cuda"


def stages(project: Project, staging: str, production: str) -> list[dict]:
    out = []
    for job, env_name, needs, runbooks in (
        ("deploy-staging", staging, ["build-worker"], [("deploy-worker", {"image": IMAGE_REF})]),
        ("load-test-gate", staging, ["deploy-staging"], [("load-test-gate", {})]),
        ("deploy-production", production, ["load-test-gate"], [("deploy-worker", {"image": IMAGE_REF})]),
    ):
        env = project.env(env_name)
        if env.platform != "kubernetes":
            raise UsageError(f"environment '{env_name}' is platform {env.platform}; CI deploys kubernetes environments")
        out.append({"job": job, "env": env_name, "needs": needs, "timeout": 90,
                    "db_env": env.database.url_env, "redis_env": env.redis.url_env,
                    "runbooks": [{"name": n, "params": p} for n, p in runbooks]})
    return out


def workflow(project: Project, staging: str = "staging", production: str = "production",
             registry: str = "ghcr.io", image: str | None = None, python_version: str = "3.11") -> str:
    repo = image or project.env(production).worker.image.rsplit(":", 1)[0]
    text = render("ci/github-actions.yml.j2", project.root, stages=stages(project, staging, production),
                  registry=registry, image_repository=repo, python_version=python_version)
    yaml.safe_load(text)  # a template edit that breaks YAML fails here, not in CI
    return text
