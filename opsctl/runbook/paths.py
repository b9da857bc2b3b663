"""Paths a runbook step names: files it executes and files it writes, kept inside the ops root.

A parameter is data, so it must not choose code or where a step writes (issue 19 §1b):

- An argument that names **code** (the `loadtest` action's `locustfile`) takes no template
  at all, and its file must be inside the ops root: the procedure's author chooses the
  code, never whoever passes `-p`.
- An argument that names a file **written** (`health`'s `junit`/`history`, `loadtest`'s
  `html`/`csv`/`junit`, `dr-drill`'s `junit`/`metrics_file`) is a path relative to the ops
  root that stays inside it once symbolic links are followed, and out of the places
  holding code, procedures and state others trust (`PROTECTED`). Under `.opsctl/` (opsctl's
  own state: journals, silences, heartbeats, drill and failover records, ...) an output
  goes only into a report folder (`REPORT_FOLDERS`: `.opsctl/dr/`, where the shipped
  `dr-drill` writes, and `.opsctl/reports/`) or is a file directly in `.opsctl/`; every
  other folder there is state, including ones a later version adds.

Actions list such arguments in their `code_paths`/`out_paths` attributes; `validate`
checks constant values, and the run checks rendered ones before the step starts (one
UsageError line, exit 2).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from opsctl.errors import UsageError

# relative to the ops root: written outputs never land here (code, procedures, config,
# journals, version control)
PROTECTED = ("runbooks", "loadtests", "stacks", "templates", "opsctl.yaml", ".git", ".venv", ".opsctl/runs",
             ".opsctl/local", ".opsctl/backups", ".opsctl/failover", ".opsctl/loadtests", ".opsctl/health",
             ".opsctl/drill", ".opsctl/restores")

STATE = ".opsctl"
# the only folders under .opsctl/ that take written reports (dr-drill's shipped runbook
# writes .opsctl/dr/drill.xml and .opsctl/dr/drill.prom)
REPORT_FOLDERS = ("dr", "reports")
REPORT_HINT = "write under reports/, .opsctl/reports/ or .opsctl/dr/"


def state_problem(norm: str) -> str | None:
    """The `.opsctl/` place a normalised relative path `norm` would write into when that
    place is opsctl's own state (any folder of `.opsctl/` but `REPORT_FOLDERS`, the folder
    itself, or a file named like one of its folders), or None."""
    if norm == STATE:
        return STATE
    if not norm.startswith(STATE + "/"):
        return None
    first, _, rest = norm[len(STATE) + 1:].partition("/")
    if rest and first in REPORT_FOLDERS:
        return None
    if rest or first in REPORT_FOLDERS or any(p == f"{STATE}/{first}" for p in PROTECTED):
        return f"{STATE}/{first}"
    return None


def protected_for(env) -> tuple[str, ...]:
    """What an environment adds to `PROTECTED`: its backup repository when it is a folder
    (`file://…`) inside the ops root."""
    repo = getattr(getattr(env, "backup", None), "repository", "") or ""
    if repo.startswith("file://"):
        path = repo[len("file://"):]
        if path and not PurePosixPath(path).is_absolute():
            return (_normal(PurePosixPath(path)),)
    return ()


def lexical_problem(value: str, arg: str, kind: str, protected: tuple[str, ...] = ()) -> str | None:
    """Why a constant path `value` cannot be argument `arg` (`kind` "code" or "output"),
    judged on its text alone (validate), or None. `protected`: places besides `PROTECTED`."""
    if not value.strip():  # PurePosixPath("") is ".": an output "" named the root itself
        return f"{arg} is empty; give a path inside the ops root, or leave {arg} out"
    pure = PurePosixPath(value)
    if pure.is_absolute() or value.startswith("~"):
        return f"{arg}: {value} is not inside the ops root; write a path relative to it"
    depth = 0
    for part in pure.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return f"{arg}: {value} leaves the ops root; write a path inside it"
    if kind == "output":
        norm = _normal(pure)
        place = protected_place(norm, protected)
        if place and place.startswith(STATE):
            return (f"{arg}: {value} would write into {place}, which holds opsctl's own state "
                    f"(only .opsctl/dr/ and .opsctl/reports/ take reports there); {REPORT_HINT}")
        if place:
            return f"{arg}: {value} would write into {place}, which holds code or records; {REPORT_HINT}"
    return None


def protected_place(norm: str, protected: tuple[str, ...] = ()) -> str | None:
    """The place of the ops root a normalised relative path `norm` (no `..`, `/`-separated)
    would write into when nothing may be written there (`PROTECTED`, `protected`, opsctl's
    state under `.opsctl/`: `state_problem`), or None. Also used by `render ci --out`."""
    for place in (*PROTECTED, *protected):
        if norm == place or norm.startswith(place + "/"):
            return place
    return state_problem(norm)


def _normal(pure: PurePosixPath) -> str:
    parts: list[str] = []
    for part in pure.parts:
        if part == "..":
            parts = parts[:-1]
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def confine(root: Path, value: str | Path, arg: str, kind: str, protected: tuple[str, ...] = ()) -> Path:
    """`value` as an absolute path inside the ops root `root`, symbolic links followed.

    `kind` "code": the file must exist (and is inside the root); "output": the file may be
    created, never in `PROTECTED` places (nor `protected` ones). Raises UsageError (one
    line) otherwise."""
    text = str(value)
    why = lexical_problem(text, arg, kind, protected)
    if why:
        raise UsageError(why)
    base = root.resolve()
    target = (base / text).resolve()
    try:
        inside = target.relative_to(base)
    except ValueError:
        raise UsageError(f"{arg}: {text} leads out of the ops root (to {target}); write a path inside it") from None
    if kind == "output":
        why = lexical_problem(inside.as_posix(), arg, kind, protected)
        if why:
            raise UsageError(why)
    elif not target.is_file():
        raise UsageError(f"{arg}: {text} is not a file in the ops root")
    return target
