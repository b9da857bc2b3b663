"""Issue 22 review: --to-time at the edges of datetime's range is an 'unexpected OverflowError' (exit 1),
not the one-line usage error (exit 2) every other bad --to-time gets (restore.parse_time:
astimezone(utc) overflows for year-9999 times west of UTC and year-1 times east of it)."""
import pytest

from opsctl.errors import UsageError


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_an_out_of_range_time_is_a_usage_error(text):
    from opsctl.pitr.restore import parse_time

    with pytest.raises(UsageError):
        parse_time(text)


def test_the_cli_says_it_in_one_line_exit_2(tmp_path):
    import json

    from typer.testing import CliRunner

    from opsctl.cli import app

    (tmp_path / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {
        "k": {"platform": "kubernetes", "database": {"name": "x", "user": "x", "rds_instance": "db1"},
              "backup": {"repository": f"file://{tmp_path / 'repo'}"}}}}))
    r = CliRunner().invoke(app, ["--root", str(tmp_path), "restore", "--env", "k", "--to-time",
                                 "9999-12-31T23:59:59-01:00", "--target-instance", "new1", "--yes"])
    print(r.output)
    assert r.exit_code == 2 and "unexpected" not in r.output, r.output


def test_restore_help_says_jobs_is_for_backup_restores_only():
    """Issue 22 (session 9): --jobs is pg_restore's; a restore to a time unpacks two base backups at
    a time whatever it says, and --help says so instead of letting it look like it applies."""
    from typer.testing import CliRunner

    from opsctl.cli import app

    r = CliRunner().invoke(app, ["restore", "--help"], terminal_width=400)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert "Parallel pg_restore jobs: backup restores only (--to-time/--to-lsn unpack two base backups at a time)" \
        in text, text
