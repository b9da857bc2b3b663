"""Every action whose arguments can be checked before the run has a `check` (breaker 38 H6):
a step argument the real run refuses is refused before any step, in a dry run too, one line,
exit 2. The dry run said "planned" for `type=bogus`, `skip=nosuch`, `fail_on=nope`; with
`fail_on=nope` the real run retried after its backoff, sent a critical alert and exited 1."""

from __future__ import annotations

import pytest

from tests.runbook.runbook_support import run_refused, write_runbook

STEP = """\
    name: one
    version: 1
    parameters:
      v: {type: %s, required: true}
    steps:
      - id: first
        action: %s
        with: {%s: "{{ params.v }}"%s}
        retries: {count: 1, backoff: 10}
        on_failure: [alert]
      - id: alert
        action: notify
        with: {level: critical, message: "failed"}
    """

CASES = [
    ("health", "fail_on", "nope", "", "step first: fail_on: 'nope'; use one of critical, warning, unknown, never"),
    ("backup", "type", "bogus", "", "step first: --type 'bogus' is not one of full, db"),
    ("backup", "compress_level", "0", "", "--compress-level 0 is outside zstd's 1..22"),
    ("wait", "seconds", "-1", "", "step first: seconds: -1; wait takes a finite number of seconds, 0 or more"),
    ("notify", "level", "loud", ", message: hi", "step first: level: 'loud'; use info, warning or critical"),
    ("base-backup", "kind", "weekly", "", "base backup kind 'weekly' is not one of full, incremental, auto"),
    ("verify", "id", "nope", "", "'nope' is not a backup id"),
    ("prune-chain", "keep_full", "0", "", "--keep-full must be at least 1, not 0"),
    ("restore", "jobs", "0", "", "--jobs must be 1 to"),
    ("loadtest", "users", "0", "", "step first: --users"),
    ("loadtest", "duration", "soon", "", "step first: "),
]


def _book(action: str, arg: str, value: str, more: str = "") -> str:
    number = value.lstrip("-").isdigit()
    return STEP % ("integer" if number else "string", action, arg, more)


@pytest.mark.parametrize("action, arg, value, more, said", CASES)
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_step_argument_the_run_refuses_is_refused_before_any_step(runner, ops_root, action, arg, value, more,
                                                                     said, dry_run):
    write_runbook(ops_root, "one", 1, _book(action, arg, value, more))
    line = run_refused(runner, "one", "-p", f"v={value}", "--yes", *(["--dry-run"] * dry_run))
    assert said in line, line
    assert not (ops_root / ".opsctl" / "runs").exists()  # nothing ran, nothing was journaled


def test_the_live_database_is_refused_before_any_step(runner, ops_root):
    from opsctl.config import load_project

    live = load_project(ops_root).env("local").database.name
    write_runbook(ops_root, "one", 1, _book("drop-database", "name", "x"))
    line = run_refused(runner, "one", "-p", f"v={live}", "--dry-run")
    assert f"step first: name {live} is the environment's live database" in line, line


@pytest.fixture
def platform_root(local_platform, monkeypatch):
    """The session's embedded platform, up, as the current ops root: the health checks are
    planned from its real endpoints."""
    import shutil

    folder = local_platform.root / "runbooks"
    existed = folder.exists()
    monkeypatch.chdir(local_platform.root)
    local_platform.up()
    yield local_platform.root
    # the shared root's runbooks are the shipped ones (test_shipped_runbooks lists them exactly)
    if existed:
        for name in ("health-pattern", "health-good"):
            shutil.rmtree(folder / name, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("arg", ["skip", "check"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_health_pattern_that_matches_no_check_is_refused_before_any_step(runner, platform_root, arg, dry_run):
    write_runbook(platform_root, "health-pattern", 1, _book("health", arg, "x").replace("name: one", "name: health-pattern"))
    line = run_refused(runner, "health-pattern", "-p", "v=nosuch", "--yes", *(["--dry-run"] * dry_run))
    assert f"step first: --{arg} 'nosuch' matches no check of 'local'" in line, line


def test_good_arguments_are_still_planned(runner, platform_root):
    from tests.runbook.runbook_support import run_runbook

    write_runbook(platform_root, "health-good", 1,
                  _book("health", "fail_on", "x", ", skip: postgres").replace("name: one", "name: health-good"))
    doc = run_runbook(runner, "health-good", "-p", "v=warning", "--dry-run")
    assert [s["status"] for s in doc["steps"]] == ["planned"]


LITERAL = """\
    name: one
    version: 1
    steps:
      - id: first
        action: %s
        with: {%s}
    """


@pytest.mark.parametrize("action, given, said", [
    ("health", 'check: ""', "step first: check: '' is empty"),
    ("health", "check: []", "step first: check: [] is empty"),  # skip: [] leaves nothing out (breaker 43 S3)
    ("health", 'check: "postgres,,redis"', "names nothing between its commas"),
    ("notify", 'message: hi, sinks: ""', "step first: sinks: '' is empty"),
    ("notify", "message: hi, sinks: pagerdty", "'pagerdty' is not a sink of environment local"),
    ("health", 'junit: ""', "junit is empty"),
    ("loadtest", 'html: ""', "html is empty"),
    # breaker 40 P1, P3: a drill's scratch database given empty restored over the live one; given
    # template1, its drop step dropped the template every new database copies
    ("restore", 'latest: true, components: [db], target_db: ""', "step first: target_db is empty"),
    ("restore", "latest: true, target_db: template1", "target_db template1 is a system database"),
    ("restore", "latest: true, target_db: transcribe", "target_db transcribe is the environment's live database"),
    ("restore", 'latest: true, target_instance: ""', "target_instance is empty"),
    ("restore", 'latest: true, confirm_env: ""', "confirm_env is empty"),
    ("drop-database", "name: template1", "name template1 is a system database"),
    ("drop-database", "name: postgres", "name postgres is a system database"),
    ("drop-database", 'name: ""', "name is empty"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_an_argument_given_empty_is_refused_before_any_step(runner, ops_root, action, given, said, dry_run):
    """Reviewer 39 R9, R10: `check: ""` (a parameter left empty) swept every check, a notify to a
    mistyped or empty sink went to no one and succeeded, an empty report path wrote no report."""
    write_runbook(ops_root, "one", 1, LITERAL % (action, given))
    line = run_refused(runner, "one", "--yes", *(["--dry-run"] * dry_run))
    assert said in line, line
    assert not (ops_root / ".opsctl" / "runs").exists()


def test_the_restore_drill_with_its_scratch_database_left_empty_is_refused(runner, ops_root):
    """Breaker 40 P1: `runbook run restore-drill -p scratch_db=` restored the backup over the
    live database and said "succeeded"."""
    import shutil
    from pathlib import Path

    shutil.copytree(Path(__file__).resolve().parents[2] / "runbooks" / "restore-drill", ops_root / "runbooks" /
                    "restore-drill")
    for given in ("scratch_db=", "scratch_db=template1"):
        line = run_refused(runner, "restore-drill", "-p", given, "--yes")
        assert "target_db" in line and ("is empty" in line or "system database" in line), line
        assert not (ops_root / ".opsctl" / "runs").exists()


def test_the_restore_drill_refuses_an_existing_database_as_its_scratch_before_any_step(runner, platform_root):
    """Breaker 41 Q1: `-p scratch_db=otherapp` (a database of another application) was replaced
    by the restore, then dropped for good by the drill's clean-up step; both 'succeeded'.
    Refused before any step, so no clean-up handler runs either."""
    import shutil
    from pathlib import Path

    import psycopg

    from opsctl.backup.postgres import drop_database
    from opsctl.config import load_project
    from opsctl.endpoints import resolve

    project = load_project(platform_root)
    url = resolve(project, project.env("local")).database_url
    drill = platform_root / "runbooks" / "restore-drill"
    copied = not drill.exists()  # the shared root's runbooks are listed exactly elsewhere: put back as found
    if copied:
        shutil.copytree(Path(__file__).resolve().parents[2] / "runbooks" / "restore-drill", drill)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create database q1_otherapp")
    try:
        runs = platform_root / ".opsctl" / "runs"
        before = sorted(runs.iterdir()) if runs.exists() else []
        line = run_refused(runner, "restore-drill", "-p", "scratch_db=q1_otherapp", "--yes")
        assert "target_db q1_otherapp: that database exists" in line, line
        assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # nothing ran, nothing journaled
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1 from pg_database where datname = 'q1_otherapp'").fetchone()
    finally:
        drop_database(url, "q1_otherapp")
        if copied:
            shutil.rmtree(drill)
            if not any(drill.parent.iterdir()):
                drill.parent.rmdir()
