"""Every run's summary, kept as JSON under the ops root's .opsctl/loadtests/.

Runs are the memory `compare` needs: this release against the last one, on the same
profile. Machine-local state (DESIGN.md): git-ignored, one file per run, written to a
temporary name and renamed, so an interrupted write never leaves half a summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from opsctl.config import Project
from opsctl.errors import UsageError
from opsctl.files import write_json
from opsctl.loadtest.summary import RunSummary
from opsctl.output import to_jsonable
from opsctl.redact import credentials


def folder(project: Project) -> Path:
    """Where runs are kept: .opsctl/loadtests/ under the ops root."""
    return project.state_dir / "loadtests"


def save(project: Project, summary: RunSummary) -> Path:
    """Write `summary` as <id>.json (whole, renamed into place; 0600 in a 0700 folder); returns its path."""
    return write_json(folder(project) / f"{summary.id}.json", to_jsonable(summary), private=True)


def runs(project: Project, env: str | None = None, profile: str | None = None) -> list[RunSummary]:
    """All saved runs, oldest first (of environment `env` and profile `profile` when given);
    unreadable files are skipped, not fatal. A password in an old run's host is masked
    (opsctl.redact.credentials). UsageError for an `env` or `profile` given empty (an unset CI
    variable matched no run: "no load test runs saved yet", exit 0)."""
    from opsctl.errors import not_empty

    not_empty(env, "--env", "give an environment's name, or leave --env out for every one")
    not_empty(profile, "--profile", "give a profile's name, or leave --profile out for every one")
    out = []
    for path in sorted(folder(project).glob("*.json")):
        try:
            summary = RunSummary.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        # runs saved before hosts with credentials were refused (plan.target_url) may hold a password
        summary.host = credentials(summary.host)
        if (env is None or summary.env == env) and (profile is None or summary.profile == profile):
            out.append(summary)
    return sorted(out, key=lambda s: (s.started_at, s.id))


def find(project: Project, ref: str) -> RunSummary:
    """A run by id, unique id prefix, `latest` or `previous`. Raises UsageError for an empty
    reference, one matching no run or several, or when no run is saved."""
    ref = ref.strip()
    if not ref:
        raise UsageError("a run reference is empty; give a run id, an id prefix, 'latest' or 'previous' "
                         "(see 'opsctl loadtest list')")
    every = runs(project)
    if not every:
        raise UsageError(f"no load test runs saved under {folder(project)}; run 'opsctl loadtest run' first")
    if ref in ("latest", "previous"):
        index = -1 if ref == "latest" else -2
        if len(every) < -index:
            raise UsageError(f"there is no '{ref}' run: only {len(every)} saved; see 'opsctl loadtest list'")
        return every[index]
    matches = [s for s in every if s.id == ref] or [s for s in every if s.id.startswith(ref)]
    if not matches:
        raise UsageError(f"no run matches '{ref}'; see 'opsctl loadtest list' for the ids")
    if len(matches) > 1:
        raise UsageError(f"{len(matches)} runs match '{ref}'; give more of the id (see 'opsctl loadtest list')")
    return matches[0]
