"""Every published runbook version plans (`--dry-run`, its step checks run) on every
environment of the shipped opsctl.yaml and of the starter `opsctl init` writes, with its
parameters' defaults: what `render schedules` and `render ci` run unattended. Breaker 43: the
shipped health-sweep (the 15-minute CronJob) was refused on every environment (`skip: ''`),
and deploy-worker on every Kubernetes one (its default skip `host`, a check Kubernetes has
not), so the rendered jobs failed each time, before any alert step could run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]
# values for parameters that have no default (a new one fails the test, naming itself)
REQUIRED = {"image": "registry.example.com/transcription-worker:1.4.0"}


def _roots(tmp: Path) -> list[Path]:
    from opsctl.starter import starter_text

    shipped, starter = tmp / "shipped", tmp / "starter"
    for root in (shipped, starter):
        shutil.copytree(REPO / "runbooks", root / "runbooks")
    shutil.copy(REPO / "opsctl.yaml", shipped / "opsctl.yaml")
    (starter / "opsctl.yaml").write_text(starter_text())
    return [shipped, starter]


def test_every_published_runbook_plans_on_every_shipped_environment(tmp_path, runner, monkeypatch):
    from opsctl.config import load_project
    from opsctl.runbook.catalog import locate
    from opsctl.runbook.model import parse

    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    refs = sorted(json.loads((REPO / "runbooks" / "lock.json").read_text()))
    refused = []
    planned = 0
    for root in _roots(tmp_path):
        for env in load_project(root).config.environments:
            for ref in refs:
                params = parse(locate(root, ref)).parameters
                given = [a for name, p in params.items() if p.get("required") and p.get("default") is None
                         for a in ("-p", f"{name}={REQUIRED[name]}")]
                r = runner.invoke(app, ["--root", str(root), "runbook", "run", ref, "--env", env, "--dry-run",
                                        "--yes", *given])
                if r.exit_code == 2 and " is retired: " in r.stderr:
                    continue  # kept unchanged, never run: a later version replaced it (catalog.problems)
                planned += 1
                if r.exit_code != 0:
                    refused.append(f"{root.name} {env} {ref}: {r.stderr.strip()}")
    assert not refused, "\n".join(refused)
    assert planned >= 4 * 10, planned  # shipped: local, staging, production; the starter: local


@pytest.mark.parametrize("skip, env", [("hots", "staging"), ("nope*", "production")])
def test_a_skip_that_names_no_check_of_any_platform_is_still_a_typo(tmp_path, runner, skip, env):
    """A skip naming a check of another platform (`host` on Kubernetes) skips nothing; one naming
    no check of any platform is a typo, refused as before."""
    root = _roots(tmp_path)[0]
    r = runner.invoke(app, ["--root", str(root), "health", "--env", env, "--skip", skip])
    assert r.exit_code == 2, r.output
    assert f"--skip {skip!r} matches no check of '{env}'" in r.stderr, r.stderr
