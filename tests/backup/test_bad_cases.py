"""Every way a backup can be bad: one clear line, exit 1 or 2, and nothing live changed.

Each case runs against file:// and s3:// repositories. "Nothing changed" is checked on the
live data itself: row counts and checksums, every Redis key, and the list of databases.
"""

from __future__ import annotations

import json

import pytest

from backup_support import OTHER_KEY, snapshot_state
from opsctl.cli import app

pytestmark = pytest.mark.slow


def _backup(runner, benv, kind: str = "full") -> str:
    result = runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", kind, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


def _one_line_error(result, code: int | tuple, *words: str) -> str:
    codes = code if isinstance(code, tuple) else (code,)
    assert result.exit_code in codes, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opsctl: error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _rewrite(benv, name: str, change) -> bytes:
    """Replace a stored object's bytes with change(bytes); return the original."""
    repo = benv.repo()
    original = repo.get_bytes(name)
    repo.put_bytes(name, change(original))
    return original


def _flip(data: bytes, where: float = 0.5) -> bytes:
    i = min(int(len(data) * where), len(data) - 1)
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def test_flipped_byte_in_any_object(benv, seeded, runner):
    backup_id = _backup(runner, benv)
    names = sorted(benv.repo().names(f"{backup_id}/"))
    picked = [n for n in names if not n.endswith(("verified.json",))]
    kinds = {"manifest.json", "db.dump.zst", "redis.rdb.zst"}
    chosen = [n for n in picked if n.split("/", 1)[1] in kinds] + [next(n for n in picked if "/files/" in n)]
    assert len(chosen) == 4
    before = snapshot_state(seeded)
    for name in chosen:
        original = benv.repo().get_bytes(name)
        try:
            for where in (0.0, 0.37, 1.0):  # first, some middle and last byte
                benv.repo().put_bytes(name, _flip(original, where))
                verify = runner.invoke(app, ["backup", "verify", backup_id, "--env", benv.name])
                line = _one_line_error(verify, 1)
                assert any(w in line for w in ("damaged", "authentication", "modified")), line
            # marked damaged by the verify: refused, and even when allowed the objects' own checks refuse it
            _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--yes"]), 2,
                            "--allow-damaged")
            restore = runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--allow-damaged",
                                          "--yes"])
            _one_line_error(restore, 1)
            assert snapshot_state(seeded) == before, f"restore from a backup with {name} damaged changed live data"
        finally:
            benv.repo().put_bytes(name, original)
    ok = runner.invoke(app, ["backup", "verify", backup_id, "--env", benv.name])
    assert ok.exit_code == 0, ok.output  # the originals put back verify again: the checks were real


@pytest.mark.parametrize("which", ["db.dump.zst", "files"])
def test_truncated_object(benv, seeded, runner, which):
    backup_id = _backup(runner, benv)
    names = benv.repo().names(f"{backup_id}/")
    name = next(n for n in names if (n.endswith(which) if which != "files" else "/files/" in n))
    _rewrite(benv, name, lambda data: data[: len(data) // 2])
    before = snapshot_state(seeded)
    _one_line_error(runner.invoke(app, ["backup", "verify", backup_id, "--env", benv.name]), 1, "truncated")
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--allow-damaged",
                                        "--yes"]), 1)
    assert snapshot_state(seeded) == before


def test_wrong_key(benv, seeded, runner, monkeypatch):
    backup_id = _backup(runner, benv, "db")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", OTHER_KEY)
    before = snapshot_state(seeded)
    _one_line_error(runner.invoke(app, ["backup", "verify", backup_id, "--env", benv.name]), 2, "wrong backup key")
    line = _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--yes"]), 2,
                           "wrong backup key")
    assert OTHER_KEY not in line
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", "not base64!")
    _one_line_error(runner.invoke(app, ["backup", "create", "--env", benv.name]), 2, "not base64")
    assert snapshot_state(seeded) == before


def test_missing_manifest_is_incomplete_and_never_restored(benv, seeded, runner):
    backup_id = _backup(runner, benv, "db")
    benv.repo().delete_prefix(f"{backup_id}/manifest.json")
    listed = json.loads(runner.invoke(app, ["backup", "list", "--env", benv.name, "--json"]).stdout)
    row = next(b for b in listed["backups"] if b["id"] == backup_id)
    assert row["status"] == "incomplete"
    before = snapshot_state(seeded)
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--yes"]), 1,
                    "no manifest")
    _one_line_error(runner.invoke(app, ["backup", "verify", backup_id, "--env", benv.name]), 1, "no manifest")
    assert snapshot_state(seeded) == before
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", "19990101T000000Z-0000", "--yes"]),
                    2, "no backup")


def test_date_without_backup_and_restore_without_approval(benv, seeded, runner):
    backup_id = _backup(runner, benv, "db")
    before = snapshot_state(seeded)
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--date", "2001-02-03", "--yes"]), 2,
                    "no complete backup on 2001-02-03")
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--date", "yesterday"]), 2, "YYYY-MM-DD")
    # CI=true: no terminal to ask on, so overwriting needs --yes
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id]), 2, "--yes")
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--date", "2001-02-03"]),
                    2, "exactly one")
    assert snapshot_state(seeded) == before


@pytest.mark.parametrize("given, words", [
    ("", ["--components: empty", "leave the option out for all"]),  # "--components $UNSET" in CI
    (",", ["--components: empty"]), ("db,", ["--components: an empty name"]),
    ("db,nope", ["'nope' is not one of"])])
def test_an_empty_or_unknown_component_is_refused_not_taken_for_all(benv, seeded, runner, given, words):
    """Breaker 37 G2: '--components ""' restored the database, Redis and the audio over the live ones."""
    backup_id = _backup(runner, benv)
    before = snapshot_state(seeded)
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--components", given,
                                        "--yes"]), 2, *words)
    _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--to-time", "latest", "--components",
                                        given, "--yes"]), 2, "don't combine")
    assert snapshot_state(seeded) == before


def test_out_of_range_numbers_are_refused_before_anything_runs(benv, seeded, runner):
    """Breaker 37 G15: --compress-level 0 was taken for the default; --jobs 99999999999 was
    said by pg_restore only once the restore had begun."""
    backup_id = _backup(runner, benv, "db")
    before = snapshot_state(seeded)
    listed = runner.invoke(app, ["backup", "list", "--env", benv.name, "--json"]).stdout
    _one_line_error(runner.invoke(app, ["backup", "create", "--env", benv.name, "--compress-level", "0"]), 2,
                    "--compress-level 0 is outside zstd's 1..22")
    for jobs, said in (("0", "--jobs"), ("99999999999", "--jobs must be 1 to 256 (pg_restore's parallel jobs)")):
        _one_line_error(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--jobs", jobs, "--yes"]),
                        2, said)
    assert snapshot_state(seeded) == before
    assert runner.invoke(app, ["backup", "list", "--env", benv.name, "--json"]).stdout == listed


def test_restore_over_a_protected_environment_needs_its_name(runner, benv, seeded):
    if benv.kind != "file":
        pytest.skip("one repository is enough: the approval comes before any object is read")
    backup_id = _backup(runner, benv, "db")
    before = snapshot_state(seeded)
    base = ["restore", "--env", "bk-protected", "--id", backup_id, "--yes"]
    _one_line_error(runner.invoke(app, base), 2, "'bk-protected' is protected", "--confirm-env bk-protected")
    _one_line_error(runner.invoke(app, [*base, "--confirm-env", "bk-file"]), 2, "is not 'bk-protected'")
    assert snapshot_state(seeded) == before
    done = runner.invoke(app, [*base, "--confirm-env", "bk-protected", "--components", "db", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["backup_id"] == backup_id


def test_unreachable_database_fails_in_one_line_and_leaves_nothing(runner, tmp_path, monkeypatch):
    from opsctl.local.procs import free_port

    (tmp_path / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"far": {
        "platform": "kubernetes", "database": {"url_env": "FAR_DATABASE_URL"},
        "backup": {"repository": f"file://{tmp_path / 'repo'}"}}}}))
    monkeypatch.setenv("OPSCTL_ROOT", str(tmp_path))
    monkeypatch.setenv("FAR_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/transcribe")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", OTHER_KEY)
    monkeypatch.setenv("CI", "true")
    result = runner.invoke(app, ["backup", "create", "--env", "far", "--type", "db"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]  # after the progress log: what failed, why
    assert last.startswith("opsctl: error: connecting to the database for the dump failed: "), last
    assert "Connection refused" in last, last
    assert [p for p in (tmp_path / "repo").rglob("*") if p.is_file()] == []
