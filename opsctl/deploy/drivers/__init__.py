"""Pick the platform driver an environment needs."""

from __future__ import annotations

from opsctl.config import Environment, Project


def driver_for(project: Project, env: Environment):
    """The Driver of `env`'s platform: LocalDriver for `local` (UsageError when the embedded
    platform is not up), KubernetesDriver otherwise (its client is loaded lazily)."""
    if env.platform == "local":
        from opsctl.deploy.drivers.local import LocalDriver

        return LocalDriver(project, env)
    from opsctl.deploy.drivers.kubernetes import KubernetesDriver

    return KubernetesDriver(project, env)
