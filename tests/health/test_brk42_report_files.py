"""breaker 42 R10: `opsctl health --history FILE` chmod'ed whatever it named to 0600 (a file the
user shares, device nodes), a device that fails a write gave "unexpected OSError" (exit 1) for
--history and only a warning (exit 0) for --junit, and a FIFO with no reader silently took the
history line while --junit waited and refused. Now: an existing file keeps its mode (a new one
is made 0600); a report that can't be written is one `opsctl: error:` line and a non-zero exit,
the verdict still printed, the same for --junit and --history; a FIFO is waited on for both.
Device nodes are made here with mknod (never the real /dev/full)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from opsctl.cli import app
from tests.health.servers import ScriptedServer


@pytest.fixture
def ops(tmp_path, monkeypatch):
    target = ScriptedServer([200])
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": {"http": [{"name": "target", "url": f"{target.url}/readyz"}]}}}}))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    target.close()


def health(runner, *args):
    return runner.invoke(app, ["health", "--env", "ci", "--check", "target", *args])


def full_device(path):
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # a node of /dev/full's kind, in a temp folder
    os.chmod(path, 0o666)
    return path


def test_an_existing_file_keeps_its_mode_and_a_new_one_is_private(ops, runner):
    shared = ops / "shared.jsonl"
    shared.write_text("x\n")
    shared.chmod(0o644)
    r = health(runner, "--history", str(shared))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    assert json.loads(shared.read_text().splitlines()[1])["checks"][0]["name"] == "target"
    os.umask(0o022)
    new = ops / "reports" / "new.jsonl"
    assert health(runner, "--history", str(new)).exit_code == 0
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


@pytest.mark.parametrize("option", ["--history", "--junit"])
def test_a_full_device_is_one_line_and_a_non_zero_exit_for_both_reports(ops, runner, option):
    dev = full_device(ops / "fulldev")
    r = health(runner, option, str(dev), "--json")
    assert stat.S_IMODE(dev.stat().st_mode) == 0o666 and stat.S_ISCHR(dev.stat().st_mode)
    assert r.exit_code == 3, r.output  # the sweep was OK; its report is missing: never exit 0
    doc = json.loads(r.stdout)  # the verdict is printed all the same
    assert doc["checks"][0]["status"] == "OK" and doc["code"] == 3 and len(doc["not_written"]) == 1, doc
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("opsctl: error: ") and "No space left" in errors[0], r.stderr
    assert "unexpected" not in r.stderr


@pytest.mark.parametrize("option", ["--history", "--junit"])
def test_a_fifo_no_process_reads_is_refused_alike(ops, runner, option, monkeypatch):
    from opsctl import files

    monkeypatch.setattr(files, "FIFO_WAIT", 0.3)
    fifo = ops / "fifo"
    os.mkfifo(fifo, 0o644)
    r = health(runner, option, str(fifo))
    assert stat.S_IMODE(fifo.stat().st_mode) == 0o644
    assert r.exit_code == 3, r.output
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "FIFO that no process reads" in errors[0], r.stderr


def test_junit_keeps_an_existing_files_mode_and_makes_a_new_one_private(ops, runner):
    """Breaker 64 F15: --junit (health's, the drill's: files.write_text) replaced a 0640 file
    with a 0644 one and made new reports 0644, where the README promises the mode kept and a
    new one 0600, as --history does."""
    os.umask(0o022)
    shared = ops / "shared.xml"
    shared.write_text("<old/>")
    shared.chmod(0o640)
    assert health(runner, "--junit", str(shared)).exit_code == 0
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640 and "testsuite" in shared.read_text()
    new = ops / "reports" / "new.xml"
    assert health(runner, "--junit", str(new)).exit_code == 0
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


@pytest.mark.parametrize("place", ["opsctl.yaml", "runbooks/lock.json", "stacks/__main__.py", "templates/x.xml",
                                   "loadtests/locustfile.py", ".git/config", "link/opsctl.yaml"])
def test_a_report_never_replaces_the_ops_roots_own_files(ops, runner, place):
    """Breaker 64 F1: `dr drill --metrics-file opsctl.yaml` (any report option: files.report_path)
    wrote the report over the ops root's config, its runbook pins or its Pulumi program, exit 0,
    and every command after failed; only .opsctl/ state was refused. Now the places a runbook's
    outputs and `render ci --out` may not write (runbook.paths.PROTECTED) are refused for every
    report, one line, exit 2, nothing written, a symlinked folder resolved."""
    from opsctl.errors import UsageError
    from opsctl.files import report_path

    (ops / "link").symlink_to(ops)
    target = ops / place
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_text("kept\n")
    before = target.read_bytes()
    r = health(runner, "--junit", place)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "holds the ops root's config, procedures or code" in errors[0], r.stderr
    assert target.read_bytes() == before
    with pytest.raises(UsageError, match="would write into"):
        report_path(str(target), "--metrics-file", example="drill.prom")
    assert report_path(str(ops / "reports" / "drill.prom"), "--metrics-file") == ops / "reports" / "drill.prom"


def test_a_report_never_replaces_the_ops_roots_files_reached_through_links(ops, runner, tmp_path):
    """Breaker 65 G1/G2: the ops root's own opsctl.yaml (or runbooks/) a link to a file (folder)
    elsewhere, or a link under /dev/shm to it, passed the F1 check (the link's target's folder
    holds no opsctl.yaml; a path under /dev was written in place, unchecked) and the report
    replaced the real config or pins."""
    import uuid

    if os.path.isdir("/dev/shm"):
        link = Path("/dev/shm") / f"opsctl-test-{uuid.uuid4().hex}.xml"
        link.symlink_to(ops / "opsctl.yaml")
        before = (ops / "opsctl.yaml").read_bytes()
        try:
            r = health(runner, "--junit", str(link))
            assert r.exit_code == 2 and "holds the ops root's config" in r.stderr, r.output
        finally:
            link.unlink()
        assert (ops / "opsctl.yaml").read_bytes() == before
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    (elsewhere / "runbooks").mkdir(parents=True)
    real = elsewhere / "config.yaml"
    real.write_bytes((ops / "opsctl.yaml").read_bytes())
    (ops / "opsctl.yaml").unlink()
    (ops / "opsctl.yaml").symlink_to(real)
    (elsewhere / "runbooks" / "lock.json").write_text("{}\n")
    (ops / "runbooks").symlink_to(elsewhere / "runbooks")
    config, pins = real.read_bytes(), (elsewhere / "runbooks" / "lock.json").read_bytes()
    for place in ("opsctl.yaml", "runbooks/lock.json"):
        r = health(runner, "--junit", place)
        assert r.exit_code == 2 and "holds the ops root's config, procedures or code" in r.stderr, (place, r.output)
    assert real.read_bytes() == config and (elsewhere / "runbooks" / "lock.json").read_bytes() == pins
    assert health(runner, "--junit", "reports/ok.xml").exit_code == 0
