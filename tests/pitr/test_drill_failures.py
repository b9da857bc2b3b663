"""Issue 22 review (breaks 8, 9, 10 embedded): a drill whose restore fails still writes failing
reports; the RPO of a quiet database restarted cleanly is 0 (pg_last_committed_xact() is NULL
after a restart: the newest commit is read from the live server's commit timestamps); a drill
killed (kill -9) while serving leaves its restored copy to the next restore, which removes it."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest
from pitr_support import set_dr


def test_a_drill_whose_restore_fails_still_writes_failing_reports(pitr, runner, tmp_path):
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'x' from generate_series(1, 20)")
    pitr.wait_archived()
    junit, prom = tmp_path / "drill.xml", tmp_path / "drill.prom"
    from opsctl.pitr import drill

    passed = drill.DrillResult("local", "local", dt.datetime.now(dt.timezone.utc), 1.0, 0.0, 60.0, 60.0, True, None,
                               None, "scratch")
    drill.write_reports(passed, junit, prom)  # the previous run's reports: a success
    assert 'opsctl_dr_drill_success{env="local"} 1' in prom.read_text()
    from opsctl.pitr import layout

    base = pitr.root / "repo" / layout.base_prefix(pitr.sysid())
    aside = tmp_path / "base-aside"
    shutil.move(str(base), str(aside))  # the repository lost its base backups: the restore fails
    try:
        r = pitr.cli(runner, "dr", "drill", "--json", "--junit", str(junit), "--metrics-file", str(prom))
        assert r.exit_code != 0, r.output
        assert 'opsctl_dr_drill_success{env="local"} 0' in prom.read_text(), prom.read_text()
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite.get("failures") != "0"
        (ran,) = [c for c in suite.iter("testcase") if c.get("name") == "drill ran"]
        assert "base backup" in ran.find("failure").get("message"), ET.tostring(ran, encoding="unicode")
        doc = json.loads(r.stdout)
        assert not doc["passed"] and "base backup" in doc["error"], doc
        assert doc["scope"] == [] and "database" in doc["not_covered"], doc  # nothing was restored (breaker 25 F14)
        # a drill that failed achieved no RTO or RPO: the time it took to fail is not one
        assert doc["rto_seconds"] is None and doc["rpo_seconds"] is None, doc
        (rto,) = [c for c in suite.iter("testcase") if c.get("name").startswith("rto within")]
        assert "not achieved" in rto.find("failure").get("message"), ET.tostring(rto, encoding="unicode")
        assert 'opsctl_dr_drill_rto_seconds{env="local"} NaN' in prom.read_text(), prom.read_text()
        table = pitr.cli(runner, "dr", "drill")
        assert table.exit_code == 1
        row = next(line for line in table.output.splitlines() if line.strip("│┃ ").startswith("RTO"))
        assert "not achieved" in row and " met " not in row, table.output
    finally:
        shutil.move(str(aside), str(base))


def test_a_drill_on_a_platform_never_started_is_bad_input(runner, tmp_path, monkeypatch):
    """Bad input (a platform never started) exits 2 in one line, like every command; its reports
    still say the drill failed, with no RTO achieved."""
    from opsctl.cli import app
    from pitr_support import KEY

    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    root = tmp_path / "ops"
    root.mkdir()
    (root / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"local": {
        "platform": "local", "database": {"name": "pitrdb", "user": "pitr"},
        "backup": {"repository": f"file://{tmp_path / 'repo'}"}}}}))
    junit, prom = tmp_path / "drill.xml", tmp_path / "drill.prom"
    r = runner.invoke(app, ["--root", str(root), "dr", "drill", "--junit", str(junit), "--metrics-file", str(prom)])
    assert r.exit_code == 2, r.output
    assert "never started" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert "not achieved" in cases["rto within 14400 s"].find("failure").get("message")
    assert 'opsctl_dr_drill_rto_seconds{env="local"} NaN' in prom.read_text()


def test_the_drill_rpo_of_a_quiet_database_after_a_restart_is_zero(pitr, runner):
    from opsctl.local import postgres as pg

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'quiet' from generate_series(1, 20)")
    pitr.wait_archived()
    pg.stop(pitr.pid)
    pitr.start_postgres()
    # what the restart wrote is archived before the drill's own archive check (RPO 1 s): once in a
    # loaded suite the niced archiver had not uploaded the segment the restart finished 2 s before
    pitr.wait_archived()
    assert pitr.sql("select timestamp from pg_last_committed_xact()", db="postgres")[0][0] is None
    time.sleep(1.5)  # the drill starts well after the last commit: RPO 'drill start - commit' would miss 1 s
    set_dr(pitr, rpo="1s", rto="4h")
    try:
        r = pitr.cli(runner, "dr", "drill", "--json")
        doc = json.loads(r.stdout)
        assert doc["rpo_seconds"] == 0, doc
        assert doc["live_newest_commit"] == doc["restored_to"], doc
        assert r.exit_code == 0, r.output
    finally:
        set_dr(pitr, rpo="1h", rto="4h")


SCRIPT = r"""
import sys, time
from opsctl.pitr import drill
def slow(*a, **k):  # stands for the serve phase (worker start, transcription, 10 s load test)
    print("SERVING", flush=True)
    time.sleep(120)
drill._services_ready = slow
from opsctl.cli import main
sys.argv = ["opsctl", "--root", sys.argv[1], "dr", "drill"]
main()
"""


def _scratch_servers(root: Path):
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if "postgres" in (p.info["name"] or "") and "postgres.restored-" in cmd and str(root) in cmd:
            out.append(p.pid)
    return out


def test_a_drill_killed_while_serving_leaves_its_copy_to_the_next_restore(pitr, runner):
    from opsctl.local import postgres as pg

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(pitr.root)], stdout=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline and "SERVING" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
    assert "SERVING" in line
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _scratch_servers(pitr.root), "the drill's copy runs right after the kill"
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    mine = json.loads(r.stdout)
    pg.stop(mine["pid"])
    left = _scratch_servers(pitr.root)
    data = pitr.state().folder / "data"
    dirs = [p.name for p in data.iterdir() if p.name.startswith("postgres.restored-") and str(p) != mine["data_dir"]]
    for pid in left:
        pg.stop(pid)
    shutil.rmtree(mine["data_dir"], ignore_errors=True)
    assert not left and not dirs, (left, dirs)


def _listener(hint: str):
    """A process listening on a free port whose command line names `hint` (a preview worker's
    or a scratch Redis's stand-in)."""
    from opsctl.local import procs

    port = procs.free_port()
    code = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(port), hint])
    deadline = time.monotonic() + 20
    while not procs.listens(proc.pid, [port]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, port


def _killed_drill_record(pitr, tmp_path, stamp: str):
    """A record as a drill killed outright (kill -9) during its serve phase leaves it."""
    worker, wport = _listener("transcription-worker")
    redis, rport = _listener("redis-server")
    folder = tmp_path / f"opsctl-drill-{stamp}"
    folder.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    record = pitr.project().state_dir / "drill" / f"local-{stamp}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"opsctl_pid": gone.pid, "opsctl_started": 0, "environment": "local", "resources": [
        {"kind": "folder", "path": str(folder)}, {"kind": "redis", "port": rport},
        {"kind": "worker", "port": wport, "pid": worker.pid}]}))
    return record, folder, [worker, redis]


def test_what_a_killed_drill_left_is_removed_by_the_next_drill_and_by_local_down_s_hook(pitr, runner, tmp_path):
    from opsctl.pitr import drill

    def removed_by(clean, stamp: str) -> None:
        record, folder, procs_ = _killed_drill_record(pitr, tmp_path, stamp)
        try:
            clean()
            for p in procs_:
                assert p.wait(timeout=20) is not None
            assert not folder.exists() and not record.exists()
        finally:
            for p in procs_:
                p.kill()

    def next_drill() -> None:  # the next drill removes them first
        r = pitr.cli(runner, "dr", "drill")
        assert r.exit_code == 0, r.output

    def local_down_hook() -> None:  # what `opsctl local down` calls
        assert len(drill.clean_for_down(pitr.project())) == 3

    removed_by(next_drill, "20200101000000000000")
    removed_by(local_down_hook, "20200101000000000001")


def test_two_drills_started_in_the_same_second_get_buckets_of_their_own(s3):
    """The drill's scratch audio bucket was `<audio>-drill-<second>`: two drills in one second
    shared it (S3 answers CreateBucket of a bucket one owns with 200) and the first teardown
    dropped the bucket the other still read. Names now carry random bytes that truncation of a
    long audio bucket name never cuts, and S3 takes them."""
    import re

    from opsctl.pitr.drill import scratch_bucket

    started = dt.datetime(2026, 11, 30, 17, 0, 0, tzinfo=dt.timezone.utc)
    for audio in ("audio", "a" * 63, "x" * 40 + "-" * 5 + "y" * 18):
        names = {scratch_bucket(audio, started) for _ in range(20)}
        assert len(names) == 20
        for name in names:
            assert len(name) <= 63 and re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", name), name
            assert re.search(r"-drill-20261130170000-[0-9a-f]{6}$", name), name
    client = s3.client()
    first, second = scratch_bucket("a" * 63, started), scratch_bucket("a" * 63, started)
    for name in (first, second):
        client.create_bucket(Bucket=name)
    try:
        assert {first, second} <= {b["Name"] for b in client.list_buckets()["Buckets"]}
    finally:
        for name in (first, second):
            client.delete_bucket(Bucket=name)


@pytest.mark.parametrize("option", ["--metrics-file", "--junit"])
def test_a_report_path_that_cannot_be_written_is_refused_before_the_drill(pitr, runner, tmp_path, option):
    """`--metrics-file <a folder>` ran the whole drill, then failed on IsADirectoryError (exit
    1, a 0644 temporary file left beside it). Now: exit 2 at once, one line, nothing written."""
    folder = tmp_path / "reports"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for bad, says in ((folder, "is a folder"), (blocker / "x.prom", "can't be made")):
        r = pitr.cli(runner, "dr", "drill", option, str(bad))
        assert r.exit_code == 2, r.output
        assert says in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "reports"] and not list(folder.iterdir())
    assert not list((pitr.root / ".opsctl").glob("drill/*.json"))  # no drill started


def test_a_cancel_while_the_drill_tears_down_waits_for_the_teardown(pitr, runner, monkeypatch):
    """Breaker 65 G4: a Ctrl-C or SIGTERM that came while the drill removed its restored copy cut
    the removal short: about 100 MB stayed half-removed, the restore's record already dropped
    (so no later drill or `local down` removed it), and the report said torn down. The
    teardown now runs whole and the cancel comes after it."""
    from opsctl.pitr import drill

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    real, removed, sent = shutil.rmtree, [], []

    def cancelled_while_removing(path, *args, **kwargs):
        if "restored" in str(path) and not sent:  # the drill's copy: Ctrl-C as its removal starts
            sent.append(str(path))
            os.kill(os.getpid(), signal.SIGINT)
        real(path, *args, **kwargs)
        removed.append(str(path))

    monkeypatch.setattr(shutil, "rmtree", cancelled_while_removing)
    # Python's own Ctrl-C handler, whatever this process inherited (a suite started in the
    # background has SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            drill.drill(pitr.project(), pitr.env())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and sent[0] in removed and not Path(sent[0]).exists(), (sent, removed)
    data = pitr.state().data("postgres").parent
    assert not [p.name for p in data.iterdir() if "restored" in p.name]


def test_a_ctrl_c_during_the_runbook_drill_step_cancels_the_drill_and_journals_the_step(pitr, runner, monkeypatch):
    """Breaker 64 F19: Ctrl-C of `runbook run dr-drill` never reached the drill (the step ran in
    a worker thread): the run stopped with no record of the step, the process waited at exit for
    the drill, and the drill's metrics then said success. The drill now takes the Ctrl-C as
    `opsctl dr drill` does (torn down, its reports failing), and the step is journaled
    interrupted with what the drill reported."""
    import functools

    from opsctl.pitr import drill, restore

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    book = pitr.root / "runbooks" / "drill-cancel" / "v1.yaml"
    book.parent.mkdir(parents=True)
    book.write_text(json.dumps({"name": "drill-cancel", "version": 1, "steps": [
        {"id": "drill", "action": "dr-drill", "with": {"junit": "reports/drill.xml", "metrics_file": "reports/drill.prom"}},
        {"id": "after", "action": "notify", "with": {"message": "drill done"}}]}))
    real = restore.run

    @functools.wraps(real)  # its signature stays: the operation window reads its timeout
    def cancelled(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the drill's restore starts
        return real(*a, **k)

    monkeypatch.setattr(restore, "run", cancelled)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever this process inherited
    try:
        r = pitr.cli(runner, "runbook", "run", "drill-cancel", "--json")
    finally:
        signal.signal(signal.SIGINT, previous)
        shutil.rmtree(book.parent)
    assert r.exit_code == 130, r.output
    runs = [h for h in json.loads(pitr.cli(runner, "runbook", "history", "--json").stdout)
            if h["runbook"] == "drill-cancel"]
    assert len(runs) == 1 and runs[0]["status"] == "interrupted" and runs[0]["steps"] == {"drill": "interrupted"}, runs
    step = json.loads(pitr.cli(runner, "runbook", "history", "--run", runs[0]["run_id"], "--json").stdout)[-1]
    assert step["id"] == "drill" and step["status"] == "interrupted" and drill.CANCELLED in step["detail"], step
    outputs = step["outputs"]
    assert outputs["error"] == drill.CANCELLED and outputs["torn_down"] and outputs["passed"] is False, outputs
    assert 'opsctl_dr_drill_success{env="local"} 0' in (pitr.root / "reports" / "drill.prom").read_text()
    data = pitr.state().data("postgres").parent
    assert not [p.name for p in data.iterdir() if "restored" in p.name]  # torn down
    assert not list((pitr.root / ".opsctl").glob("drill/*.json"))  # no drill record left to the next one
